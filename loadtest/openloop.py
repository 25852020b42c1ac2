"""Open-loop load: requests start on a fixed schedule (constant rate, or Poisson
arrivals), whatever the server does, and each latency is measured from the request's
*scheduled* start, so queueing shows up in the percentiles (no coordinated omission).
How late the generator itself started each request is recorded apart (``start_lag``):
when that grows, the generator, not the server, is the bottleneck.

Several processes share one schedule: process ``offset`` of ``stride`` takes every
``stride``-th arrival of the constant schedule (or its own Poisson stream at
``rate / stride``), all measured from one ``start`` on the system-wide monotonic clock.

``closed_loop`` is the capacity probe: N workers send back to back; their latencies
and statuses go into the same HDR recorder (loadtest/recorder.py). Every benchmark
measures with these two.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from hdrh.histogram import HdrHistogram

from loadtest.recorder import CLIENT_OVERFLOW, TIMEOUT, Interval, new_histogram

Send = Callable[[], Awaitable[int | str]]


@dataclass
class OpenLoopResult:
    rate: float
    duration_s: float
    #: first scheduled start to the last completion (>= duration_s when the server lags)
    elapsed_s: float = 0.0
    sent: int = 0
    total: Interval = field(default_factory=Interval)
    start_lag: HdrHistogram = field(default_factory=new_histogram)

    @property
    def histogram(self) -> HdrHistogram:
        return self.total.histogram

    @property
    def statuses(self) -> Counter:
        return self.total.statuses

    @property
    def dropped(self) -> int:
        return self.total.statuses.get(CLIENT_OVERFLOW, 0)

    @property
    def ok(self) -> int:
        return self.total.ok

    @property
    def achieved_rate(self) -> float:
        return self.ok / max(self.elapsed_s, self.duration_s)

    def percentile_ms(self, p: float) -> float:
        return self.total.percentile_ms(p)

    def merge(self, other: OpenLoopResult) -> None:
        """Add a run that followed this one (same rate) into it."""
        self.total.add(other.total)
        self.start_lag.add(other.start_lag)
        self.sent += other.sent
        self.duration_s += other.duration_s
        self.elapsed_s += other.elapsed_s

    def summary(self) -> dict:
        return {
            "target_rate": self.rate,
            "achieved_rate": round(self.achieved_rate, 1),
            "sent": self.sent,
            "dropped": self.dropped,
            "statuses": dict(sorted(self.statuses.items())),
            **self.total.latency_summary(),
        }


def arrivals(
    rate: float, duration_s: float, *, poisson: bool, offset: int = 0, stride: int = 1, seed=0
):
    """Scheduled start times (seconds after the start) of one process's requests."""
    if poisson:
        rng = random.Random(f"{seed}:{offset}")
        t = rng.expovariate(rate / stride)
        while t < duration_s:
            yield t
            t += rng.expovariate(rate / stride)
    else:
        k = offset
        while k < rate * duration_s:
            yield k / rate
            k += stride


async def _status(send: Send, timeout_s: float | None) -> str:
    try:
        if timeout_s is None:
            return str(await send())
        async with asyncio.timeout(timeout_s):
            return str(await send())
    except TimeoutError:
        return TIMEOUT
    except Exception as exc:  # a transport error is a result, not a crash
        return type(exc).__name__


async def open_loop(
    send: Send,
    rate: float,
    duration_s: float,
    *,
    poisson: bool = False,
    seed: int = 0,
    offset: int = 0,
    stride: int = 1,
    start: float | None = None,
    max_outstanding: int = 10_000,
    timeout_s: float | None = None,
    on_interval: Callable[[int, Interval], None] | None = None,
    interval_s: float = 1.0,
    clock: Callable[[], float] = time.monotonic,
) -> OpenLoopResult:
    """Call ``send`` on the schedule; ``send`` returns a status (HTTP code or gRPC name).

    ``on_interval(i, interval)`` gets what completed in each ``interval_s`` window."""
    if rate <= 0 or duration_s <= 0:
        raise ValueError("rate and duration must be positive")
    result = OpenLoopResult(rate, duration_s)
    start = clock() if start is None else start
    current = Interval()
    outstanding: set[asyncio.Task] = set()
    last_done = start

    def flush(index: int) -> None:
        nonlocal current
        done, current = current, Interval()
        result.total.add(done)
        if on_interval is not None:
            on_interval(index, done)

    next_index = 0

    async def ticker() -> None:
        nonlocal next_index
        while True:
            await asyncio.sleep(max(0.0, start + (next_index + 1) * interval_s - clock()))
            flush(next_index)
            next_index += 1

    async def one(scheduled: float) -> None:
        nonlocal last_done
        status = await _status(send, timeout_s)
        last_done = clock()
        current.record(status, last_done - scheduled)

    tick = asyncio.create_task(ticker())
    try:
        for at in arrivals(
            rate, duration_s, poisson=poisson, offset=offset, stride=stride, seed=seed
        ):
            scheduled = start + at
            delay = scheduled - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            result.start_lag.record_value(max(1, int((clock() - scheduled) * 1e6)))
            result.sent += 1
            if len(outstanding) >= max_outstanding:
                current.record(CLIENT_OVERFLOW, clock() - scheduled)
                continue
            task = asyncio.create_task(one(scheduled))
            outstanding.add(task)
            task.add_done_callback(outstanding.discard)
        if outstanding:
            await asyncio.wait(outstanding)
    finally:
        tick.cancel()
    result.elapsed_s = max(last_done, start + duration_s) - start
    flush(next_index)
    return result


@dataclass
class ClosedLoopResult:
    """What ``concurrency`` workers sending back to back completed, and how fast."""

    concurrency: int
    duration_s: float
    #: first send to the last answer (>= duration_s: the last requests finish late)
    elapsed_s: float = 0.0
    total: Interval = field(default_factory=Interval)

    @property
    def statuses(self) -> Counter:
        return self.total.statuses

    @property
    def ok(self) -> int:
        return self.total.ok

    @property
    def rate(self) -> float:
        """OK answers per second."""
        return self.ok / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def percentile_ms(self, p: float) -> float:
        return self.total.percentile_ms(p)

    def summary(self) -> dict:
        return {
            "concurrency": self.concurrency,
            "rate": round(self.rate, 1),
            "completed": self.total.completed,
            "statuses": dict(sorted(self.statuses.items())),
            **self.total.latency_summary(),
        }


async def closed_loop(
    send: Send,
    concurrency: int,
    duration_s: float,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> ClosedLoopResult:
    """Throughput with ``concurrency`` workers each sending back to back.

    Each request's latency (send to answer) and status go into the result's HDR
    recorder, as in ``open_loop``; no request starts after ``duration_s``."""
    if concurrency < 1 or duration_s <= 0:
        raise ValueError("concurrency and duration must be positive")
    result = ClosedLoopResult(concurrency, duration_s)
    start = clock()
    end = start + duration_s

    async def worker() -> None:
        while (began := clock()) < end:
            status = await _status(send, None)
            result.total.record(status, clock() - began)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.elapsed_s = clock() - start
    return result
