"""The effects endpoint end to end: the stack ``make run`` starts against the day-one
PyTorch effects server, one run, one machine, the same uploads.

    make bench-effects   # = tenfold loadtest bench effects --repository var/model-repository \\
                         #       --out docs/results/bench_effects.json

- ``tenfold``: ``tenfold up`` as ``make run`` starts it, loaded on
  ``POST /v1/effects/cartoon?size=N`` with JPEG uploads;
- ``naive PyTorch, N thread(s)``: loadtest/peers/naive_effects.py, full decode, the
  day-one painting network in PyTorch eager, JPEG encode, in the handler, one request
  at a time. Tried with 1 and 2 torch threads; its better figure counts.

The uploads are the load generator's photos (loadtest/photos/) at ``--upload`` long
side (640: 640x480 for the landscape photos). A rate ladder per server (p99 budget,
< 1 % errors, 95 % of the rate kept) for each result size, all servers up at once and
their ladders in turns, rung by rung, as in the feed benchmark; the CPU of the server's
processes and of the generator at every rung, likewise. The per-stage
table (decode, resize, model, encode; before and after issue 14) comes from
``python -m tenfold.models.effects_stages``.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from loadtest.bench_feed import (
    best_rate,
    make_run_stack,
    rung,
    server_header,
    server_rows,
    start_all,
)
from loadtest.bench_peers import ladder, publish, setup
from loadtest.climb import climb_together
from loadtest.scenarios import ScenarioSpec
from loadtest.targets import LoadTestError
from servicekit.launcher import launch


@dataclass(frozen=True)
class EffectsBenchPlan:
    repository: Path
    duration_s: float = 5.0
    p99_budget_ms: float = 500.0
    start_rate: float = 5.0
    factor: float = 1.25
    top_rate: float = 2000.0
    sizes: tuple[int, ...] = (256, 512)
    upload: int = 640
    torch_threads: tuple[int, ...] = (1, 2)
    gateway_workers: int = 1
    #: niceness of the load generator's worker (RunPlan.nice), the same for every server
    generator_nice: int = 0
    #: rates tried between the last rung kept and the one missed (loadtest.climb)
    refine: int = 3

    def ladder(self) -> tuple[float, ...]:
        return ladder(self.start_rate, self.factor, self.top_rate)


@contextmanager
def naive_effects(repo: Path, threads: int) -> Iterator[tuple[str, list[int]]]:
    args = [sys.executable, "-m", "loadtest.peers.naive_effects", "--repository", str(repo)]
    server = launch([*args, "--threads", str(threads)], "naive effects", timeout=300)
    try:
        yield server.http, [server.proc.pid]
    finally:
        server.stop()


def stages(repo: Path, uploads: tuple[int, ...], size: int) -> dict:
    """Per-stage cost, in process, one thread, before and after (effects_stages)."""
    args = [sys.executable, "-m", "tenfold.models.effects_stages", "--repository", str(repo)]
    args += ["--uploads", ",".join(map(str, uploads)), "--size", str(size)]
    out = subprocess.run(args, capture_output=True, text=True, timeout=900)
    if out.returncode:
        raise LoadTestError(f"effects_stages exited {out.returncode}: {out.stderr[-500:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(plan: EffectsBenchPlan) -> dict:
    repo = plan.repository.resolve()
    print("per-stage cost (in process)", file=sys.stderr, flush=True)
    results: dict = {"stages": stages(repo, (640, 1280), 256), "sizes": {}}
    servers: dict[str, Callable] = {
        f"tenfold (make run: 1 pod, {plan.gateway_workers} gateway worker)": lambda: make_run_stack(
            repo, plan.gateway_workers
        ),
    }
    for threads in plan.torch_threads:
        servers[f"naive PyTorch, {threads} thread(s)"] = lambda t=threads: naive_effects(repo, t)
    # their ladders in turns (bench_feed's reason: this machine's speed drifts in a run)
    with contextlib.ExitStack() as running:
        up = start_all(running, servers)
        for size in plan.sizes:
            spec = ScenarioSpec("effects", image_size=size, photo_sizes=(plan.upload,))
            measures = {
                label: rung(address, pids, plan, spec, f"{label} @{size}")
                for label, (address, pids) in up.items()
            }
            results["sizes"][str(size)] = climb_together(plan.ladder(), measures, plan.refine)
    return results


def table(results: dict, plan: EffectsBenchPlan) -> str:
    lines = []
    for size, servers in results["sizes"].items():
        ours_label = next(k for k in servers if k.startswith("tenfold"))
        ours = best_rate(servers[ours_label])
        best_naive = max(
            (best_rate(v) for k, v in servers.items() if k.startswith("naive")), default=0
        )
        lines += [
            f"\nPOST /v1/effects/cartoon?size={size}, {plan.upload}px JPEG uploads; p99 budget "
            f"{plan.p99_budget_ms:g} ms; {plan.duration_s:g} s per rate; generator at nice "
            f"{plan.generator_nice}\n",
            *server_header("req/s"),
            *server_rows(servers),
        ]
        ratio = f"**{ours / best_naive:.2f}x**" if best_naive else "n/a"
        lines += ["", f"- tenfold / best naive PyTorch at {size}: {ratio} (goal 5x at 256)"]
    lines += ["", "Per-stage cost of one request, in process, one thread (ms):\n"]
    st = results["stages"]
    cols = [(u, form) for u in st["uploads"] for form in ("before", "after")]
    lines.append("| stage | " + " | ".join(f"{u} {form}" for u, form in cols) + " |")
    lines.append("| --- |" + " ---: |" * len(cols))
    for stage in st["stage_names"]:
        cells = [st["ms"][str(u)][form][stage] for u, form in cols]
        lines.append(f"| {stage} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")
    totals = [sum(st["ms"][str(u)][form].values()) for u, form in cols]
    lines.append("| **total** | " + " | ".join(f"**{t:.2f}**" for t in totals) + " |")
    return "\n".join(lines)


def benchmark(plan: EffectsBenchPlan, out: Path | None = None) -> dict:
    if not (plan.repository / "effects_cartoon").is_dir():
        raise LoadTestError(f"{plan.repository} has no effects model: run tenfold models build")
    started = time.time()
    results = measure(plan)
    results["setup"] = setup(
        started,
        upload_long_side=plan.upload,
        p99_budget_ms=plan.p99_budget_ms,
        duration_s_per_rate=plan.duration_s,
        generator_nice=plan.generator_nice,
    )
    publish(results, table(results, plan), out)
    return results
