"""Open-loop load: requests start on a fixed schedule (constant rate), whatever the
server does, and each latency is measured from the request's *scheduled* start, so
queueing shows up in the percentiles (no coordinated omission). Latencies go into an
HDR histogram (microseconds, 3 significant digits)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from hdrh.histogram import HdrHistogram

LOWEST_US, HIGHEST_US, DIGITS = 1, 120_000_000, 3


def new_histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, DIGITS)


@dataclass
class OpenLoopResult:
    rate: float
    duration_s: float
    sent: int = 0
    histogram: HdrHistogram = field(default_factory=new_histogram)
    statuses: Counter = field(default_factory=Counter)
    #: requests not started because too many were outstanding (the client's own limit)
    dropped: int = 0

    @property
    def ok(self) -> int:
        return sum(n for s, n in self.statuses.items() if s in (200, "OK"))

    @property
    def achieved_rate(self) -> float:
        return self.ok / self.duration_s

    def percentile_ms(self, p: float) -> float:
        return self.histogram.get_value_at_percentile(p) / 1000

    def summary(self) -> dict:
        return {
            "target_rate": self.rate,
            "achieved_rate": round(self.achieved_rate, 1),
            "sent": self.sent,
            "dropped": self.dropped,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items(), key=str)},
            **{f"p{p:g}_ms": round(self.percentile_ms(p), 3) for p in (50, 90, 99, 99.9)},
            "max_ms": round(self.histogram.get_max_value() / 1000, 3),
        }


async def open_loop(
    send: Callable[[], Awaitable[int | str]],
    rate: float,
    duration_s: float,
    max_outstanding: int = 10_000,
    clock: Callable[[], float] = time.perf_counter,
) -> OpenLoopResult:
    """Call ``send`` ``rate`` times a second for ``duration_s``; ``send`` returns a status."""
    if rate <= 0 or duration_s <= 0:
        raise ValueError("rate and duration must be positive")
    result = OpenLoopResult(rate, duration_s)
    total = int(rate * duration_s)
    outstanding: set[asyncio.Task] = set()
    start = clock()

    async def one(scheduled: float) -> None:
        try:
            status = await send()
        except Exception as exc:  # a transport error is a result, not a crash
            status = type(exc).__name__
        result.statuses[status] += 1
        result.histogram.record_value(max(LOWEST_US, int((clock() - scheduled) * 1e6)))

    for i in range(total):
        scheduled = start + i / rate
        delay = scheduled - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(outstanding) >= max_outstanding:
            result.dropped += 1
            continue
        task = asyncio.create_task(one(scheduled))
        outstanding.add(task)
        task.add_done_callback(outstanding.discard)
        result.sent += 1
    if outstanding:
        await asyncio.wait(outstanding)
    return result


async def closed_loop(
    send: Callable[[], Awaitable[int | str]], concurrency: int, duration_s: float
) -> tuple[float, Counter]:
    """Throughput with ``concurrency`` workers each sending back to back."""
    statuses: Counter = Counter()
    end = time.perf_counter() + duration_s

    async def worker() -> None:
        while time.perf_counter() < end:
            try:
                statuses[await send()] += 1
            except Exception as exc:
                statuses[type(exc).__name__] += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    ok = sum(n for s, n in statuses.items() if s in (200, "OK"))
    return ok / elapsed, statuses
