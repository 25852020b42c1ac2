"""``tenfold drill``: rehearse a tenfold surge on this machine through the real stack
(Envoy, the gateway following the mesh, the autoscaler, pods under CPU quotas).

1. Calibrate: one pod's capacity under its CPU limit (the highest open-loop rate whose
   p99 stays within the scenario's budget), unless ``--pod-capacity`` gives it.
2. Base load at ``base_fraction`` of one pod, then ``surge`` x that, held, then base
   again while the pool scales back down.
3. Every second: offered rate, OK, shed (429/503), other errors, p50/p99 of OK answers,
   desired and ready pods, capacity (ready x the pod capacity). Written as JSON and as
   an HTML page (load, capacity and pods on one time axis; latency below); printed:
   time to capacity, shed share during the surge, 5xx count.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families

from autoscale.policy import PolicySettings
from loadtest.bench_peers import ladder
from loadtest.recorder import Interval
from loadtest.runner import Runner, RunPlan, highest_rate_met, run
from loadtest.scenarios import ScenarioSpec
from loadtest.targets import Target
from tenfold.live import pods_table
from tenfold.scaling import DEFAULT_TARGETS, AutoscaleOptions
from tenfold.stack import Stack, StackOptions

BUDGET_MS = {"effects": 500.0, "feed": 100.0}
SHED = ("429", "503")


@dataclass(frozen=True)
class DrillPlan:
    repository: Path
    scenario: str = "effects"
    cpu_per_pod: float | None = 0.15
    pod_capacity: float | None = None
    base_fraction: float = 0.6
    surge: float = 10.0
    base_s: float = 30.0
    hold_s: float = 120.0
    after_s: float = 120.0
    max_pods: int = 20
    spares: int = 0
    #: cores of quota while a pod starts (None: ``cpu_per_pod`` from the start)
    startup_cpu: float | None = 1.0
    #: pods forked from a fork server that has imported them (else new interpreters)
    fork_server: bool = True
    scale_down_delay_s: float = 60.0
    calibrate_s: float = 8.0


@dataclass
class Second:
    t: int
    phase: str
    offered: float
    ok: int
    shed: int
    errors: int
    server_errors: int
    p50_ms: float
    p99_ms: float
    desired: int
    ready: int
    capacity: float
    decision: str = ""
    #: every status seen this second (HTTP code, or the client's error name) -> count
    statuses: dict[str, int] = field(default_factory=dict)


@dataclass
class Recorder:
    """Per-second rows, filled by the load runner's progress callback."""

    pod_capacity: float
    stack: Stack
    pool: str
    rows: list[Second] = field(default_factory=list)
    phases: list[tuple[str, int]] = field(default_factory=list)  # (name, first second)
    #: shows each second (a live table on a terminal, else a line on stderr)
    show: Callable[[Second], None] | None = None

    def phase(self, name: str) -> None:
        self.phases.append((name, len(self.rows)))

    def second(self, rate: float, interval: Interval) -> None:
        status = self.stack.scaled.providers[self.pool].status()
        autoscaler = self.stack.scaled.autoscalers[self.pool]
        desired = autoscaler.state.desired or status.ready
        shed = sum(interval.statuses.get(s, 0) for s in SHED)
        server = sum(n for s, n in interval.statuses.items() if s.startswith("5"))
        row = Second(
            t=len(self.rows),
            phase=self.phases[-1][0] if self.phases else "",
            offered=rate,
            ok=interval.ok,
            shed=shed,
            errors=sum(interval.errors.values()) - shed,
            server_errors=server - interval.statuses.get("503", 0),
            p50_ms=round(interval.percentile_ms(50), 2),
            p99_ms=round(interval.percentile_ms(99), 2),
            desired=desired,
            ready=status.ready,
            capacity=round(status.ready * self.pod_capacity, 1),
            decision=last.reason if (last := autoscaler.state.last) else "",
            statuses=dict(interval.statuses),
        )
        self.rows.append(row)
        (self.show or print_line)(row)


def print_line(row: Second) -> None:
    print(
        f"  t={row.t:4d}s {row.phase:6s} offered {row.offered:6.1f}/s ok {row.ok:4d} "
        f"shed {row.shed:3d} err {row.errors:3d} p99 {row.p99_ms:7.1f} ms "
        f"pods {row.ready}/{row.desired} capacity {row.capacity:g}/s",
        file=sys.stderr,
        flush=True,
    )


class LiveView:
    """A live terminal table (rich): this second's load and latency, and each pool's
    pods (desired, ready, starting, stopping)."""

    def __init__(self, stack: Stack) -> None:
        from rich.console import Console
        from rich.live import Live

        self.stack = stack
        self.live = Live(console=Console(stderr=True), refresh_per_second=4)

    def __enter__(self) -> LiveView:
        self.live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.live.__exit__(*exc)

    def __call__(self, row: Second) -> None:
        from rich.table import Table

        load = Table(title=f"tenfold drill: t={row.t}s, {row.phase}")
        for column in ("offered/s", "OK/s", "shed/s", "errors/s", "p50 ms", "p99 ms"):
            load.add_column(column, justify="right")
        load.add_row(
            f"{row.offered:g}",
            str(row.ok),
            str(row.shed),
            str(row.errors),
            f"{row.p50_ms:.1f}",
            f"{row.p99_ms:.1f}",
        )
        pods = pods_table(self.stack.scaled)
        from rich.console import Group

        self.live.update(Group(load, pods))


def calibrate(address: str, spec: ScenarioSpec, budget_ms: float, seconds: float) -> float:
    """One pod's capacity: the highest rate of a x1.15 ladder that is kept (95% served)
    within the p99 budget for ``seconds`` (short steps overrate a pod whose queue has
    not filled yet)."""
    plan = RunPlan(
        Target.parse(f"http://{address}"),
        spec,
        ladder(1.0, 1.15, 2000.0),
        seconds,
        warmup_s=1.0,
        p99_budget_ms=budget_ms,
        timeout_s=10,
    )
    capacity = highest_rate_met(run(plan), plan)
    if not capacity:
        raise RuntimeError("one pod met the p99 budget at no rate: nothing to calibrate")
    return capacity


def _ticker(stack: Stack, stop: threading.Event) -> None:
    while not stop.wait(stack.scaled.options.tick_s):
        stack.scaled.tick()


def summary(rows: list[Second], phases: list[tuple[str, int]], pod_capacity: float) -> dict:
    start = {name: t for name, t in phases}
    surge_at = start.get("surge", 0.0)
    down_at = start.get("after", math.inf)
    surge_rows = [r for r in rows if surge_at <= r.t < down_at]
    demand = max((r.offered for r in surge_rows), default=0.0)
    covered = next((r.t for r in surge_rows if r.capacity >= demand), None)
    sent = sum(r.ok + r.shed + r.errors for r in surge_rows)
    shed = sum(r.shed for r in surge_rows)
    return {
        "pod_capacity_rps": pod_capacity,
        "surge_rps": demand,
        "time_to_capacity_s": None if covered is None else round(covered - surge_at, 1),
        "surge_shed_share": round(shed / sent, 4) if sent else None,
        "server_errors_5xx": sum(r.server_errors for r in rows),
        "other_errors": sum(r.errors for r in rows),
        "max_ready": max((r.ready for r in rows), default=0),
        "final_ready": rows[-1].ready if rows else 0,
    }


def drill(plan: DrillPlan, report: Path | None = None) -> dict:
    spec = ScenarioSpec(plan.scenario)
    budget = BUDGET_MS[plan.scenario]
    pool = plan.scenario  # the pool serving the scenario's product
    targets = {**DEFAULT_TARGETS, pool: plan.pod_capacity or DEFAULT_TARGETS[pool]}
    scaling = AutoscaleOptions(
        targets,
        plan.max_pods,
        plan.cpu_per_pod,
        spares=plan.spares,
        startup_cpu=plan.startup_cpu,
        fork_server=plan.fork_server,
    )
    stack = Stack(StackOptions(plan.repository, port=0, grpc_port=0, autoscale=scaling))
    stack.start(say=lambda text, end="\n": print(text, end=end, file=sys.stderr, flush=True))
    try:
        edge = f"127.0.0.1:{stack.ports['http']}"
        capacity = plan.pod_capacity
        if capacity is None:
            print("calibrating one pod's capacity ...", file=sys.stderr, flush=True)
            capacity = calibrate(edge, spec, budget, plan.calibrate_s)
        print(f"one pod: {capacity:g} req/s within p99 {budget:g} ms", file=sys.stderr)
        stack.scaled.autoscalers[pool].settings = PolicySettings(
            target_rps_per_pod=capacity,
            min_replicas=1,
            max_replicas=plan.max_pods,
            scale_down_delay_s=plan.scale_down_delay_s,
        )
        base = round(plan.base_fraction * capacity, 2)
        recorder = Recorder(capacity, stack, pool)
        view = LiveView(stack) if sys.stderr.isatty() else contextlib.nullcontext()
        if isinstance(view, LiveView):
            recorder.show = view
        load = RunPlan(Target.parse(f"http://{edge}"), spec, (base,), plan.base_s, timeout_s=10)
        stop = threading.Event()
        ticker = threading.Thread(target=_ticker, args=(stack, stop), daemon=True)
        progress = lambda n, rate, s, interval: recorder.second(rate, interval)  # noqa: E731
        with view, Runner(load, progress) as runner:
            ticker.start()
            for number, (name, rate, seconds) in enumerate(
                [
                    ("base", base, plan.base_s),
                    ("surge", base * plan.surge, plan.hold_s),
                    ("after", base, plan.after_s),
                ],
                start=1,
            ):
                recorder.phase(name)
                runner.step(number, rate, seconds)
        stop.set()
        ticker.join(10)
        results = {
            "plan": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(plan).items()},
            "summary": summary(recorder.rows, recorder.phases, capacity),
            "phases": recorder.phases,
            "gateway": gateway_counts(f"http://{stack.gateway.http}/metrics"),
            "seconds": [asdict(r) for r in recorder.rows],
        }
    finally:
        stack.stop(say=lambda *a, **k: None)
    if report is not None:
        report.mkdir(parents=True, exist_ok=True)
        (report / "drill.json").write_text(json.dumps(results, indent=1))
        write_html(results, report / "drill.html")
    return results


def gateway_counts(url: str) -> dict[str, float]:
    """The gateway's own account of the drill (its counters by label: answers by code,
    refusals by reason, upstream retries and ejections); {} when it cannot be read."""
    try:
        text = requests.get(url, timeout=5).text
    except requests.RequestException:
        return {}
    return counts_in(text)


def counts_in(text: str) -> dict[str, float]:
    """``gateway_counts`` of a /metrics page: ``"shed reason=concurrency route=effects"``."""
    wanted = ("requests", "shed", "upstream_retries", "upstream_ejections")
    return {
        f"{family.name.removeprefix('tenfold_gateway_')} "
        + " ".join(f"{k}={v}" for k, v in sorted(sample.labels.items()) if v): sample.value
        for family in text_string_to_metric_families(text)
        if family.name.removeprefix("tenfold_gateway_") in wanted
        for sample in family.samples
        if sample.name.endswith("_total")
    }


def write_html(results: dict, path: Path) -> None:
    """Load, capacity and pods on one time axis; latency below (matplotlib, inlined)."""
    import base64
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["seconds"]
    t = [r["t"] for r in rows]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    top.plot(t, [r["offered"] for r in rows], label="offered req/s")
    top.plot(t, [r["ok"] for r in rows], label="OK req/s")
    top.plot(t, [r["shed"] for r in rows], label="shed req/s")
    top.plot(t, [r["capacity"] for r in rows], label="capacity req/s", linestyle="--")
    pods = top.twinx()
    pods.step(t, [r["ready"] for r in rows], where="post", color="black", label="ready pods")
    pods.step(t, [r["desired"] for r in rows], where="post", color="grey", label="desired")
    pods.set_ylabel("pods")
    top.set_ylabel("requests/s")
    top.legend(loc="upper left")
    pods.legend(loc="upper right")
    bottom.plot(t, [r["p50_ms"] for r in rows], label="p50 ms")
    bottom.plot(t, [r["p99_ms"] for r in rows], label="p99 ms")
    bottom.set_yscale("log")
    bottom.set_xlabel("seconds")
    bottom.legend()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    image = base64.b64encode(buffer.getvalue()).decode()
    s = results["summary"]
    items = "".join(f"<li>{k}: {v}</li>" for k, v in s.items())
    path.write_text(
        "<!doctype html><meta charset=utf-8><title>tenfold drill</title>"
        f"<h1>tenfold drill</h1><ul>{items}</ul><img src='data:image/png;base64,{image}'>"
    )
