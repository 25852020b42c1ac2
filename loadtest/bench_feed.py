"""The feed end to end: the stack ``make run`` starts against the day-one PyTorch feed
server and against tenfold's own in-process limit, one run, one machine, the same load.

    make bench-feed   # = tenfold loadtest bench feed --repository var/model-repository \\
                      #       --out docs/results/bench_feed.json

- ``tenfold``: ``tenfold up`` as ``make run`` starts it (its defaults: one pod, one
  gateway worker), loaded on ``POST /v1/feed``;
- ``naive PyTorch, N thread(s)``: loadtest/peers/naive_feed.py, the whole pipeline in
  PyTorch eager in an aiohttp handler, one request at a time, the row ranker on every
  candidate: the day-one code. Tried with 1 and 2 torch threads; its better figure
  counts;
- ``limit``: tenfold's feed pipeline in process (``python -m tenfold.models.feed_limit``),
  one process per core, no network: the most feeds a second its models and steps allow.

The load is ``tenfold loadtest``'s feed scenario (users log-uniform over the catalogue's
users, 20 items per page, the next page of a session sending what it was shown as
``seen``) with ``--history`` items of history per session: one open-loop generator
process on the same cores. A ladder of rates finds, per server, the highest rate whose
p99 stays within the budget (100 ms) with under 1 % errors. All servers run at once
(idle while another is measured) and their ladders go in turns, rung by rung
(``loadtest.climb.climb_together``): this machine's speed drifts within a run, and
interleaving shifts every server alike. The limit is measured before and after the
ladders, and the table gives both. During every step the CPU
seconds of the server's processes and of the generator are read from /proc (psutil), so
the table says how the cores were split. The per-stage table is the in-process pipeline
on one thread, as served and in its day-one form (before issue 13).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil
import requests

from loadtest.bench_peers import ladder, publish, setup
from loadtest.climb import climb, climb_together
from loadtest.runner import RunPlan, run
from loadtest.scenarios import ScenarioSpec
from loadtest.targets import LoadTestError, Target
from servicekit.launcher import free_ports, launch


@dataclass(frozen=True)
class FeedBenchPlan:
    repository: Path
    duration_s: float = 5.0
    history: int = 5
    p99_budget_ms: float = 100.0
    start_rate: float = 40.0
    factor: float = 1.25
    top_rate: float = 5000.0
    torch_threads: tuple[int, ...] = (1, 2)
    gateway_workers: int = 1  # what `tenfold up` (make run) starts
    #: niceness of the load generator's worker (RunPlan.nice), the same for every server
    generator_nice: int = 0
    #: rates tried between the last rung kept and the one missed (climb)
    refine: int = 3

    def ladder(self) -> tuple[float, ...]:
        return ladder(self.start_rate, self.factor, self.top_rate)


def feed_items(repo: Path) -> int:
    """Items in the default build's feed catalogue (its ``feed_assets.json``); a
    LoadTestError when ``repo`` has no feed models."""
    manifest = repo / "feed_user_tower" / "feed_assets.json"
    if not manifest.is_file():
        raise LoadTestError(f"{repo} has no feed models: run tenfold models build")
    return int(json.loads(manifest.read_text())["items"])


def _wait_ready(url: str, proc: subprocess.Popen, timeout_s: float = 300.0) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise LoadTestError(f"the stack exited ({proc.returncode}) before it was ready")
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise LoadTestError(f"{url} not ready after {timeout_s:g} s")


@contextmanager
def make_run_stack(
    repo: Path, workers: int, env: dict[str, str] | None = None
) -> Iterator[tuple[str, list[int]]]:
    """``tenfold up`` (what ``make run`` runs), on free loopback ports; ``env`` adds to
    its environment (e.g. a gateway setting)."""
    http, grpc = free_ports(2)
    args = [sys.executable, "-m", "tenfold", "up", "--repository", str(repo)]
    args += ["--port", str(http), "--grpc-port", str(grpc), "--workers", str(workers)]
    proc = subprocess.Popen(
        args,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )
    try:
        _wait_ready(f"http://127.0.0.1:{http}/readyz", proc)
        yield f"127.0.0.1:{http}", [proc.pid]
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def naive_feed(repo: Path, threads: int) -> Iterator[tuple[str, list[int]]]:
    args = [sys.executable, "-m", "loadtest.peers.naive_feed", "--repository", str(repo)]
    server = launch([*args, "--threads", str(threads)], "naive feed", timeout=300)
    try:
        yield server.http, [server.proc.pid]
    finally:
        server.stop()


def process_tree(pids: list[int]) -> list[psutil.Process]:
    out = []
    for pid in pids:
        try:
            root = psutil.Process(pid)
            out += [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    return out


def role_of(proc: psutil.Process) -> str:
    try:
        line = " ".join(proc.cmdline())
    except psutil.Error:
        return "other"
    for needle, role in (
        ("envoy", "edge"),
        ("redis-server", "redis"),
        ("events process", "processor"),
        ("tenfold mesh", "mesh"),
        ("inference", "pod"),
        ("gateway", "gateway"),
        ("naive_", "server"),
        ("tenfold up", "supervisor"),
        (" up --repository", "supervisor"),
    ):
        if needle in line:
            return role
    return "other"


def _cpu(procs: list[psutil.Process]) -> dict[int, tuple[str, float]]:
    out = {}
    for proc in procs:
        try:
            times = proc.cpu_times()
            out[proc.pid] = (role_of(proc), times.user + times.system)
        except psutil.Error:
            pass
    return out


def _own_cpu() -> float:
    """CPU seconds of this process and of its children reaped so far."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _split(before: dict, after: dict, wall: float) -> dict[str, float]:
    """Cores used per role over ``wall`` seconds (1.0 = one core busy)."""
    used: dict[str, float] = {}
    for pid, (role, seconds) in after.items():
        start = before.get(pid, (role, 0.0))[1]
        used[role] = used.get(role, 0.0) + (seconds - start) / wall
    return {k: round(v, 2) for k, v in sorted(used.items())}


def measure_rate(
    address: str,
    server_pids: list[int],
    spec: ScenarioSpec,
    rate: float,
    duration_s: float,
    p99_budget_ms: float | None = None,
    nice: int = 0,
) -> dict:
    """One open-loop rate against ``address`` (after 1 s of warm-up): its figures,
    whether it met the budget, and the cores the server's processes and the generator
    used meanwhile."""
    run_plan = RunPlan(
        Target.parse(f"http://{address}"),
        spec,
        (rate,),
        duration_s,
        warmup_s=1.0,
        timeout_s=10,
        p99_budget_ms=p99_budget_ms,
        nice=nice,
    )
    before, mine0 = _cpu(process_tree(server_pids)), _own_cpu()
    started = time.perf_counter()
    (step,) = run(run_plan, check=False)
    wall = time.perf_counter() - started
    split = _split(before, _cpu(process_tree(server_pids)), wall)
    # the generator: this process and its worker, spawned and reaped within run()
    split["generator"] = round((_own_cpu() - mine0) / wall, 2)
    return {
        "rate": rate,
        "achieved": round(step.achieved_rate, 1),
        "p50_ms": round(step.total.percentile_ms(50), 2),
        "p99_ms": round(step.total.percentile_ms(99), 2),
        "errors": step.total.errors,
        "completed": step.total.completed,
        "by_outcome": step.total.outcome_summaries(),
        "meets": step.meets(run_plan),
        "cores": split,
    }


def rung(address: str, server_pids: list[int], plan, spec: ScenarioSpec, label: str):
    """``measure(rate)`` for ``climb``: one step of ``plan``'s (``duration_s``,
    ``p99_budget_ms``, ``generator_nice``) against ``address``, printed as it ends."""

    def measure(rate: float) -> dict:
        row = measure_rate(
            address,
            server_pids,
            spec,
            rate,
            plan.duration_s,
            plan.p99_budget_ms,
            nice=getattr(plan, "generator_nice", 0),
        )
        print(
            f"  {label}: {rate:g}/s -> {row['achieved']:g}/s p99 {row['p99_ms']:g} ms "
            f"errors {row['errors']} cores {row['cores']}",
            file=sys.stderr,
            flush=True,
        )
        return row

    return measure


def start_all(
    running: contextlib.ExitStack, servers: dict[str, Callable]
) -> dict[str, tuple[str, list[int]]]:
    """Start every server (label -> a context manager yielding ``(address, pids)``)
    inside ``running``: all are up at once, so their ladders can take turns (an idle one
    costs ~nothing), and all stop when it closes. Their ``(address, pids)`` by label."""
    up = {}
    for label, server in servers.items():
        print(f"{label}: starting", file=sys.stderr, flush=True)
        up[label] = running.enter_context(server())
    return up


def load(address: str, server_pids: list[int], plan, spec: ScenarioSpec, label: str):
    """Climb ``plan``'s ladder (``ladder()``) until a step misses the budget, then
    ``refine`` rates between the last step kept and the missed one; each step's figures
    and the CPU of the server and the generator."""
    measure = rung(address, server_pids, plan, spec, label)
    return climb(plan.ladder(), measure, getattr(plan, "refine", 0))


def limit(repo: Path, seconds: float, history: int, processes: int, form: str) -> dict:
    """``processes`` in-process pipelines side by side (one per core): summed feeds/s."""
    args = [sys.executable, "-m", "tenfold.models.feed_limit", "--repository", str(repo)]
    args += ["--seconds", str(seconds), "--history", str(history), "--form", form]
    procs = [
        subprocess.Popen([*args, "--seed", str(i)], stdout=subprocess.PIPE, text=True)
        for i in range(processes)
    ]
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=seconds * 4 + 300)
        if proc.returncode:
            raise LoadTestError(f"feed_limit exited {proc.returncode}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return {
        "processes": processes,
        "feeds_per_s": round(sum(r["feeds_per_s"] for r in results), 1),
        "per_process": results,
    }


def measure(plan: FeedBenchPlan) -> dict:
    repo = plan.repository.resolve()
    items = feed_items(repo)
    cores = os.cpu_count() or 1
    results: dict = {"stages": {}, "servers": {}}
    for form in ("day-one", "served"):
        print(f"in-process pipeline, {form} form (1 process)", file=sys.stderr, flush=True)
        results["stages"][form] = limit(repo, plan.duration_s, plan.history, 1, form)
    print(f"in-process limit: {cores} processes (before the ladders)", file=sys.stderr)
    before = limit(repo, plan.duration_s * 2, plan.history, cores, "served")
    servers: dict[str, Callable] = {
        f"tenfold (make run: 1 pod, {plan.gateway_workers} gateway worker)": lambda: make_run_stack(
            repo, plan.gateway_workers
        ),
    }
    for threads in plan.torch_threads:
        servers[f"naive PyTorch, {threads} thread(s)"] = lambda t=threads: naive_feed(repo, t)
    spec = ScenarioSpec("feed", feed_history=plan.history, items=items)
    with contextlib.ExitStack() as running:
        measures = {
            label: rung(address, pids, plan, spec, label)
            for label, (address, pids) in start_all(running, servers).items()
        }
        results["servers"] = climb_together(plan.ladder(), measures, plan.refine)
    print(f"in-process limit: {cores} processes (after the ladders)", file=sys.stderr)
    after = limit(repo, plan.duration_s * 2, plan.history, cores, "served")
    results["limit"] = {
        "processes": cores,
        "feeds_per_s": round((before["feeds_per_s"] + after["feeds_per_s"]) / 2, 1),
        "before": before,
        "after": after,
    }
    return results


def best_rate(entry: dict) -> float:
    """The highest rate a server kept within the budget (0 if none)."""
    return entry["best"]["achieved"] if entry["best"] else 0.0


def server_header(unit: str) -> list[str]:
    return [
        f"| server | {unit} with p99 in budget | p50 ms | p99 ms | cores: server | "
        "cores: generator |",
        "| --- | ---: | ---: | ---: | --- | ---: |",
    ]


def server_rows(servers: dict) -> list[str]:
    """One table row per server: its best rung, latency and CPU split (from ``load``)."""
    rows = []
    for label, entry in servers.items():
        best = entry["best"]
        if best is None:
            rows.append(f"| {label} | 0 (no rate in budget) | - | - | - | - |")
            continue
        cores = dict(best["cores"])
        gen = cores.pop("generator")
        split = ", ".join(f"{k} {v:.2f}" for k, v in cores.items() if v >= 0.005)
        rows.append(
            f"| {label} | {best['achieved']:g} | {best['p50_ms']:.1f} | {best['p99_ms']:.1f} | "
            f"{split} | {gen:.2f} |"
        )
    return rows


#: the limit before and after the ladders differing by more than this share of their
#: mean says the machine's speed drifted during the run
DRIFT = 0.15


def limit_drift(lim: dict) -> list[str]:
    """The line on the limit measured before and after the ladders (none for a result
    with one measurement, as written before they were two)."""
    if "before" not in lim:
        return []
    a, b = lim["before"]["feeds_per_s"], lim["after"]["feeds_per_s"]
    line = f"- the limit is the mean of {a:g} feeds/s before the ladders and {b:g} after"
    drift = abs(a - b) / ((a + b) / 2)
    if drift > DRIFT:
        line += (
            f": they differ by {drift:.0%}, so the machine's speed changed during the run "
            "and the ratio to the limit is uncertain by as much"
        )
    return [line]


def table(results: dict, plan: FeedBenchPlan) -> str:
    servers, lim = results["servers"], results["limit"]
    ours_label = next(k for k in servers if k.startswith("tenfold"))
    ours = best_rate(servers[ours_label])
    naive = {k: best_rate(v) for k, v in servers.items() if k.startswith("naive")}
    best_naive = max(naive.values(), default=0.0)
    lines = [
        f"POST /v1/feed, 20 items, {plan.history} history items per session; "
        f"p99 budget {plan.p99_budget_ms:g} ms; {plan.duration_s:g} s per rate; "
        f"generator at nice {plan.generator_nice}\n",
        *server_header("feeds/s"),
    ]
    lines += server_rows(servers)
    lines.append(
        f"| limit: in-process pipeline, {lim['processes']} processes | {lim['feeds_per_s']:g} "
        "| - | - | - | - |"
    )
    lines += [
        "",
        f"- tenfold / best naive PyTorch: **{ours / best_naive:.2f}x** (goal 10x)"
        if best_naive
        else "- naive PyTorch kept no rate in budget",
        f"- tenfold / in-process limit: **{ours / lim['feeds_per_s']:.2f}** (goal 0.80)",
        *limit_drift(lim),
        "",
        "Per-stage cost of one feed, in process, one thread (ms):\n",
    ]
    forms = results["stages"]
    names = sorted({k for f in forms.values() for k in f["per_process"][0]["stages_ms"]})
    lines += [
        "| stage | " + " | ".join(forms) + " |",
        "| --- |" + " ---: |" * len(forms),
    ]
    for name in names:
        cells = [f["per_process"][0]["stages_ms"].get(name) for f in forms.values()]
        lines.append(
            f"| {name} | " + " | ".join("-" if c is None else f"{c:.3f}" for c in cells) + " |"
        )
    totals = [1000 / f["feeds_per_s"] for f in forms.values()]
    lines.append("| **total** | " + " | ".join(f"**{t:.3f}**" for t in totals) + " |")
    lines.append(
        "| feeds/s on one core | "
        + " | ".join(f"{f['feeds_per_s']:g}" for f in forms.values())
        + " |"
    )
    return "\n".join(lines)


def benchmark(plan: FeedBenchPlan, out: Path | None = None) -> dict:
    feed_items(plan.repository)  # refuses a repository without feed models, up front
    started = time.time()
    results = measure(plan)
    results["setup"] = setup(
        started,
        history_items=plan.history,
        p99_budget_ms=plan.p99_budget_ms,
        duration_s_per_rate=plan.duration_s,
        generator_nice=plan.generator_nice,
    )
    publish(results, table(results, plan), out)
    return results
