"""Overload: the stack ``make run`` starts, with its adaptive concurrency limit and
without it, at multiples of the feed's capacity, one run, one machine, the same load.

    make bench-overload   # = tenfold loadtest bench overload \\
                          #       --repository var/model-repository \\
                          #       --out docs/results/bench_overload.json

1. **Capacity**: the stack without the limit (``TENFOLD_GATEWAY_CONCURRENCY=
   {"enabled": false}``: only the fixed ``max_inflight``) climbs a ladder of open-loop
   rates on ``POST /v1/feed``; the highest rate whose p99 stays within the budget
   (100 ms) with under 1 % errors is the capacity.
2. **Overload**: each stack (the default, with the limit; and without it) is offered
   each multiple of that capacity (1x, 1.5x, 3x) for ``duration`` seconds after 1 s of
   warm-up. Per step: goodput (answers 200 per second, and as a share of capacity), the
   shed share (429/503, refused with Retry-After) and its latency, the admitted
   answers' p50/p99, the 5xx other than shedding, and the cores each process used (the
   generator runs on the same cores: its share is in the table).

Each stack is fresh (its limit starts from its own measurement). The load is the
feed scenario of ``tenfold loadtest`` (loadtest/scenarios.py), one open-loop process.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from loadtest.bench_feed import feed_items, load, make_run_stack, measure_rate
from loadtest.bench_peers import ladder, publish, setup
from loadtest.scenarios import ScenarioSpec
from loadtest.targets import LoadTestError

#: the stacks compared: label -> the gateway's concurrency setting (environment)
STACKS = {
    "adaptive limit (default)": {},
    "fixed max_inflight only": {"TENFOLD_GATEWAY_CONCURRENCY": '{"enabled": false}'},
}
SHED = ("429", "503")


@dataclass(frozen=True)
class OverloadBenchPlan:
    repository: Path
    duration_s: float = 10.0
    history: int = 5
    p99_budget_ms: float = 100.0
    multiples: tuple[float, ...] = (1.0, 1.5, 3.0)
    start_rate: float = 100.0
    factor: float = 1.2
    top_rate: float = 3000.0

    def ladder(self) -> tuple[float, ...]:
        return ladder(self.start_rate, self.factor, self.top_rate)


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _step(row: dict, capacity: float, multiple: float) -> dict:
    """One overload step's figures from ``measure_rate``'s row."""
    done = max(1, row["completed"])
    errors = row["errors"]
    shed = sum(n for status, n in errors.items() if status in SHED)
    other = {s: n for s, n in errors.items() if s not in SHED}
    outcomes = row["by_outcome"]
    ok, shed_lat = outcomes.get("ok", {}), outcomes.get("shed", {})
    return {
        "multiple": multiple,
        "offered": row["rate"],
        "goodput": row["achieved"],
        "goodput_share": round(row["achieved"] / capacity, 3),
        "shed_share": round(shed / done, 4),
        "shed_p50_ms": shed_lat.get("p50_ms"),
        "shed_p99_ms": shed_lat.get("p99_ms"),
        "ok_p50_ms": ok.get("p50_ms"),
        "ok_p99_ms": ok.get("p99_ms"),
        "other_errors": other,
        "cores": row["cores"],
    }


def measure(plan: OverloadBenchPlan) -> dict:
    repo = plan.repository.resolve()
    spec = ScenarioSpec("feed", feed_history=plan.history, items=feed_items(repo))
    results: dict = {"stacks": {}}
    fixed = "fixed max_inflight only"
    with make_run_stack(repo, 1, STACKS[fixed]) as (address, pids):
        _say("capacity: the stack without the limit climbs the ladder")
        climb = load(address, pids, plan, spec, "capacity")
    best, climbed = climb["best"], climb["ladder"]
    if best is None:
        raise LoadTestError(f"no rate from {plan.start_rate:g}/s met the budget")
    capacity = best["achieved"]
    results["capacity"] = {"rate": capacity, "p99_ms": best["p99_ms"], "ladder": climbed}
    for label, env in STACKS.items():
        steps = []
        with make_run_stack(repo, 1, env) as (address, pids):
            for multiple in plan.multiples:
                rate = round(capacity * multiple, 1)
                row = measure_rate(address, pids, spec, rate, plan.duration_s)
                steps.append(_step(row, capacity, multiple))
                _say(f"  {label} {multiple:g}x = {rate:g}/s -> {steps[-1]}")
        results["stacks"][label] = steps
    return results


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def table(results: dict, plan: OverloadBenchPlan) -> str:
    cap = results["capacity"]
    lines = [
        f"Capacity (the stack without the limit, p99 <= {plan.p99_budget_ms:g} ms, "
        f"< 1 % errors): **{cap['rate']:g} feeds/s** (p99 {cap['p99_ms']:g} ms).",
        "",
        "| stack | offered | goodput/s | of capacity | shed | shed p50 / p99 ms "
        "| admitted p50 / p99 ms | other errors | cores (pod, gateway, edge, generator) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, steps in results["stacks"].items():
        for s in steps:
            c = s["cores"]
            cores = ", ".join(f"{c.get(k, 0):g}" for k in ("pod", "gateway", "edge", "generator"))
            lines.append(
                f"| {label} | {s['multiple']:g}x = {s['offered']:g}/s | {s['goodput']:g} "
                f"| {s['goodput_share']:.0%} | {s['shed_share']:.1%} "
                f"| {_ms(s['shed_p50_ms'])} / {_ms(s['shed_p99_ms'])} "
                f"| {_ms(s['ok_p50_ms'])} / {_ms(s['ok_p99_ms'])} "
                f"| {s['other_errors'] or '-'} | {cores} |"
            )
    return "\n".join(lines)


def benchmark(plan: OverloadBenchPlan, out: Path | None = None) -> dict:
    feed_items(plan.repository)  # refuses a repository without feed models, up front
    started = time.time()
    results = measure(plan)
    results["setup"] = setup(
        started,
        history_items=plan.history,
        p99_budget_ms=plan.p99_budget_ms,
        duration_s_per_rate=plan.duration_s,
        multiples=list(plan.multiples),
    )
    publish(results, table(results, plan), out)
    return results
