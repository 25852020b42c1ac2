"""Run a load plan from N processes and merge what they measured.

The parent starts N worker processes (spawned, each with its own event loop and
connection pool), gives every step a common start on the system-wide monotonic clock,
and merges the per-second intervals and totals the workers send back. With several
rates (``--rate-steps``) it runs them in order and stops after the first step that
misses the p99 budget, the error budget or the rate itself.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing as mp
import os
import queue
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

from hdrh.histogram import HdrHistogram

from loadtest.openloop import open_loop
from loadtest.recorder import Interval, decode, encode, is_ok, new_histogram
from loadtest.scenarios import ScenarioSpec, open_client
from loadtest.targets import LoadTestError, Target

#: a step "keeps" its rate when at least this share of it completed OK per second
RATE_KEPT = 0.95


@dataclass(frozen=True)
class RunPlan:
    target: Target
    spec: ScenarioSpec
    rates: tuple[float, ...]
    duration_s: float
    processes: int = 1
    poisson: bool = False
    warmup_s: float = 0.0
    timeout_s: float = 10.0
    max_outstanding: int = 10_000
    p99_budget_ms: float | None = None
    max_error_rate: float = 0.01
    #: niceness of the worker processes (0-19; never below the parent's): on a machine
    #: the generator shares with the servers under test, they then keep the CPU first.
    #: Latency counts from each request's scheduled start, so a generator that falls
    #: behind counts against the server, never for it (``start_lag`` shows it)
    nice: int = 0

    def __post_init__(self) -> None:
        if not self.rates or any(r <= 0 for r in self.rates):
            raise LoadTestError(f"rates must be positive, got {list(self.rates)}")
        if self.duration_s <= 0:
            raise LoadTestError(f"duration must be positive, got {self.duration_s}")
        if self.processes < 1:
            raise LoadTestError(f"processes must be >= 1, got {self.processes}")
        if self.warmup_s < 0 or self.timeout_s <= 0 or self.max_outstanding < 1:
            raise LoadTestError("warmup must be >= 0, timeout > 0, max outstanding >= 1")
        if self.p99_budget_ms is not None and self.p99_budget_ms <= 0:
            raise LoadTestError(f"p99 budget must be positive, got {self.p99_budget_ms}")
        if not 0 <= self.max_error_rate <= 1:
            raise LoadTestError(f"max error rate must be within [0, 1], got {self.max_error_rate}")
        if not 0 <= self.nice <= 19:
            raise LoadTestError(f"nice must be within [0, 19], got {self.nice}")


@dataclass
class StepResult:
    rate: float
    duration_s: float
    elapsed_s: float = 0.0
    sent: int = 0
    total: Interval = field(default_factory=Interval)
    timeline: list[Interval] = field(default_factory=list)
    start_lag: HdrHistogram = field(default_factory=new_histogram)

    @property
    def achieved_rate(self) -> float:
        return self.total.ok / max(self.elapsed_s, self.duration_s)

    @property
    def error_rate(self) -> float:
        done = self.total.completed
        return (done - self.total.ok) / done if done else 1.0

    def meets(self, plan: RunPlan) -> bool:
        """Kept its rate, within the error budget and (if one is set) the p99 budget."""
        return (
            self.achieved_rate >= RATE_KEPT * self.rate
            and self.error_rate <= plan.max_error_rate
            and (plan.p99_budget_ms is None or self.total.percentile_ms(99) <= plan.p99_budget_ms)
        )

    def interval(self, index: int) -> Interval:
        while len(self.timeline) <= index:
            self.timeline.append(Interval())
        return self.timeline[index]


def highest_rate_met(steps: list[StepResult], plan: RunPlan) -> float:
    """The highest rate among ``steps`` that met ``plan``'s budgets (0 if none did)."""
    return max((s.rate for s in steps if s.meets(plan)), default=0.0)


#: progress callback: (step number, rate, second, that second's merged interval)
Progress = Callable[[int, float, int, Interval], None]


def _worker(index: int, plan: RunPlan, commands, results) -> None:
    import uvloop

    try:
        if plan.nice:  # at least that niceness (never raised back over the parent's)
            own = os.getpriority(os.PRIO_PROCESS, 0)
            os.setpriority(os.PRIO_PROCESS, 0, max(own, plan.nice))
        uvloop.run(_serve_steps(index, plan, commands, results))
    except BaseException:
        results.put(("error", index, traceback.format_exc(limit=3)))


async def _serve_steps(index: int, plan: RunPlan, commands, results) -> None:
    loop = asyncio.get_running_loop()
    async with open_client(plan.target, plan.spec, worker=index) as client:
        send = client.send
        results.put(("ready", index, None))
        while (command := await loop.run_in_executor(None, commands.get)) is not None:
            step, rate, duration, start, record = command

            def on_interval(i: int, interval: Interval, step=step) -> None:
                results.put(("interval", index, (step, i, interval.to_wire())))

            result = await open_loop(
                send,
                rate,
                duration,
                poisson=plan.poisson,
                seed=plan.spec.seed + step,
                offset=index,
                stride=plan.processes,
                start=start,
                max_outstanding=plan.max_outstanding,
                timeout_s=plan.timeout_s,
                on_interval=on_interval if record else None,
            )
            done = {
                "sent": result.sent,
                "elapsed": result.elapsed_s,
                "start_lag": encode(result.start_lag),
            }
            results.put(("done", index, (step, done)))


class Runner:
    """Worker processes for one plan; use as a context manager."""

    def __init__(self, plan: RunPlan, progress: Progress | None = None):
        self.plan, self.progress = plan, progress
        ctx = mp.get_context("spawn")
        self.results = ctx.Queue()
        self.commands = [ctx.Queue() for _ in range(plan.processes)]
        self.procs = [
            ctx.Process(target=_worker, args=(i, plan, self.commands[i], self.results), daemon=True)
            for i in range(plan.processes)
        ]

    def __enter__(self) -> Runner:
        for proc in self.procs:
            proc.start()
        ready = 0
        while ready < len(self.procs):
            kind = self._next(timeout_s=60)[0]
            if kind == "ready":
                ready += 1
        return self

    def __exit__(self, *exc) -> None:
        for q in self.commands:
            q.put(None)
        for proc in self.procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()

    def _next(self, timeout_s: float):
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                message = self.results.get(timeout=0.5)
            except queue.Empty:
                if any(not p.is_alive() for p in self.procs):
                    codes = [p.exitcode for p in self.procs]
                    raise RuntimeError(
                        f"a load worker exited unexpectedly (codes {codes})"
                    ) from None
                if time.monotonic() > deadline:
                    raise RuntimeError("load workers stopped answering") from None
                continue
            if message[0] == "error":
                raise RuntimeError(f"load worker {message[1]} failed:\n{message[2]}")
            return message

    def step(self, number: int, rate: float, duration_s: float, record: bool = True):
        """Run one rate on all workers; the merged result when ``record``."""
        start = time.monotonic() + 0.2
        for q in self.commands:
            q.put((number, rate, duration_s, start, record))
        result = StepResult(rate, duration_s)
        seen: dict[int, int] = {}
        done = 0
        while done < len(self.procs):
            kind, _, payload = self._next(timeout_s=duration_s + 2 * self.plan.timeout_s + 30)
            if kind == "interval":
                _, second, wire = payload
                # what completed while draining after the schedule counts in its last second
                second = min(second, max(0, math.ceil(duration_s) - 1))
                result.interval(second).add(Interval.from_wire(wire))
                seen[second] = seen.get(second, 0) + 1
                if seen[second] == len(self.procs) and self.progress is not None:
                    self.progress(number, rate, second, result.timeline[second])
            elif kind == "done":
                _, info = payload
                done += 1
                result.sent += info["sent"]
                result.elapsed_s = max(result.elapsed_s, info["elapsed"])
                result.start_lag.add(decode(info["start_lag"]))
        for interval in result.timeline:
            result.total.add(interval)
        return result

    def run(self) -> list[StepResult]:
        plan = self.plan
        if plan.warmup_s > 0:
            self.step(0, plan.rates[0], plan.warmup_s, record=False)
        steps = []
        for number, rate in enumerate(plan.rates, start=1):
            steps.append(self.step(number, rate, plan.duration_s))
            if len(plan.rates) > 1 and not steps[-1].meets(plan):
                break
        return steps


async def probe(plan: RunPlan) -> str:
    """Send one request of the scenario; its status (raises LoadTestError on a bad one)."""
    plan.target.check_reachable()
    async with open_client(plan.target, plan.spec, worker=-1) as client:
        try:
            async with asyncio.timeout(plan.timeout_s):
                status = await client.send()
        except TimeoutError:
            raise LoadTestError(
                f"{plan.target.url} did not answer the probe ({plan.spec.name} scenario) in "
                f"{plan.timeout_s:g} s"
            ) from None
        except OSError as exc:
            raise LoadTestError(f"cannot reach target {plan.target.url}: {exc}") from None
    if not is_ok(status):
        raise LoadTestError(
            f"the probe ({plan.spec.name} scenario) to {plan.target.url} answered {status}"
            f"{': ' + client.last_error if client.last_error else ''}; check the target and "
            "the scenario's options (--model, --effect, --size, --api-key)"
        )
    return status


def run(plan: RunPlan, progress: Progress | None = None, check: bool = True) -> list[StepResult]:
    """Probe the target (unless ``check`` is false), then run every step."""
    if check:
        asyncio.run(probe(plan))
    with Runner(plan, progress) as runner:
        return runner.run()
