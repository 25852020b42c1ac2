"""The stream processor: reads the event log as a member of the consumer group
``processors``, applies each entry once to user state and item counters (one Lua
script per batch, ``apply.lua``), acknowledges after the write, and refreshes the
trending pool. Several processors share the group; entries a dead one left pending
are claimed after ``claim_idle_ms``. At least once delivery + the per-entry ``done``
marker = each event applied exactly once."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources

import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from redis.exceptions import RedisError, ResponseError

from gateway.events.keys import GROUP, Keys
from gateway.events.settings import StateSettings

log = logging.getLogger("tenfold.events")
#: how long an applied entry's id is remembered (a redelivery comes much sooner)
DONE_TTL_S = 86_400
#: what apply.lua says of each entry
DUPLICATE, APPLIED, ERASED = 0, 1, 2


def _script() -> str:
    return resources.files("gateway.events").joinpath("apply.lua").read_text()


def log_ms(entry_id: str) -> int:
    """The time part of a log id ("<ms>-<seq>")."""
    return int(entry_id.split("-", 1)[0])


class ProcessorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.applied = Counter(
            "tenfold_events_applied", "Events applied to state, by type.", ("type",), registry=r
        )
        self.duplicates = Counter(
            "tenfold_events_duplicates",
            "Redelivered events already applied (skipped).",
            registry=r,
        )
        self.erased = Counter(
            "tenfold_events_skipped_erased",
            "Events of a user erased after they were logged (not applied).",
            registry=r,
        )
        self.lag = Gauge(
            "tenfold_events_lag_seconds",
            "Age of the newest event in the last batch applied, at acknowledgement.",
            registry=r,
        )
        self.backlog = Gauge(
            "tenfold_events_backlog_seconds",
            "Newest logged event minus the newest delivered to the group (0 = caught up).",
            registry=r,
        )
        self.batch = Histogram(
            "tenfold_events_batch_duration_seconds",
            "Time to apply and acknowledge one batch.",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0),
            registry=r,
        )
        self.errors = Counter(
            "tenfold_events_redis_errors", "Redis errors met (the loop retries).", registry=r
        )
        self.trending = Gauge(
            "tenfold_events_trending_items", "Items in the trending set.", registry=r
        )


@dataclass(frozen=True)
class ProcessorOptions:
    consumer: str
    batch: int = 256
    block_ms: int = 500
    claim_idle_ms: int = 30_000
    trending_every_s: float = 1.0


class Processor:
    def __init__(
        self,
        client: aioredis.Redis,
        keys: Keys,
        state: StateSettings,
        options: ProcessorOptions,
        metrics: ProcessorMetrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = client
        self.keys = keys
        self.state = state
        self.options = options
        self.metrics = metrics
        self.clock = clock
        self._apply = client.register_script(_script())
        self._weights = ",".join(f"{t}={w:g}" for t, w in state.weights.items())
        #: read our own pending entries first (a restart after a crash)
        self._own_pending = True

    async def ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(self.keys.stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def step(self) -> int:
        """Read, apply and acknowledge one batch; the number of entries handled."""
        o = self.options
        start = "0" if self._own_pending else ">"
        block = None if self._own_pending else o.block_ms
        answer = await self.redis.xreadgroup(
            GROUP, o.consumer, {self.keys.stream: start}, count=o.batch, block=block
        )
        entries = answer[0][1] if answer else []
        if self._own_pending and not entries:
            self._own_pending = False
        return await self.handle(entries)

    async def claim(self) -> int:
        """Take over entries another consumer left pending for ``claim_idle_ms``."""
        o = self.options
        handled, cursor = 0, "0-0"
        while True:
            reply = await self.redis.xautoclaim(
                self.keys.stream, GROUP, o.consumer, o.claim_idle_ms, cursor, count=o.batch
            )
            cursor, entries = reply[0], reply[1]
            handled += await self.handle(entries)
            if cursor in (b"0-0", "0-0") or not entries:
                return handled

    async def handle(self, entries) -> int:
        """Apply ``[(id, fields)]`` in one script, then acknowledge them."""
        entries = [(i, f) for i, f in entries if f]  # a trimmed entry comes back empty
        if not entries:
            return 0
        started = time.perf_counter()
        s = self.state
        args: list = [self.keys.prefix, s.history, s.seen, s.ttl_s, DONE_TTL_S]
        args += [s.positive_watch_ms, s.bucket_s, s.window_buckets, self._weights]
        types = []
        for entry_id, fields in entries:
            text = {k.decode(): v.decode() for k, v in fields.items()}
            types.append(text.get("t", ""))
            args += [entry_id.decode(), types[-1], text.get("u", ""), text.get("i", "")]
            args += [text.get("w", ""), text.get("ts") or str(log_ms(entry_id.decode()))]
        statuses = await self._apply(keys=[], args=args)
        await self.redis.xack(self.keys.stream, GROUP, *[i for i, _ in entries])
        for kind, status in zip(types, statuses, strict=True):
            if status == APPLIED:
                self.metrics.applied.labels(kind).inc()
            elif status == DUPLICATE:
                self.metrics.duplicates.inc()
            else:
                self.metrics.erased.inc()
        newest = log_ms(entries[-1][0].decode())
        self.metrics.lag.set(max(0.0, self.clock() - newest / 1000))
        self.metrics.batch.observe(time.perf_counter() - started)
        return len(entries)

    async def refresh_trending(self) -> int:
        """The trending set = the sum of the window's buckets, best ``trending_keep``."""
        s = self.state
        now = int(self.clock() // s.bucket_s)
        buckets = [self.keys.trend(b) for b in range(now - s.window_buckets + 1, now + 1)]
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zunionstore(self.keys.trending, buckets)
            pipe.zremrangebyrank(self.keys.trending, 0, -(s.trending_keep + 1))
            pipe.zcard(self.keys.trending)
            size = (await pipe.execute())[-1]
        self.metrics.trending.set(size)
        return size

    async def measure_backlog(self) -> float:
        """Seconds between the newest logged entry and the group's last delivered one."""
        newest = await self.redis.xrevrange(self.keys.stream, count=1)
        groups = await self.redis.xinfo_groups(self.keys.stream)
        delivered = next(
            (g["last-delivered-id"] for g in groups if g["name"] in (GROUP, GROUP.encode())),
            b"0-0",
        )
        if not newest:
            backlog = 0.0
        else:
            backlog = max(0, log_ms(newest[0][0].decode()) - log_ms(delivered.decode())) / 1000
        self.metrics.backlog.set(backlog)
        return backlog

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop``: batches as they come; trending, claims and backlog every
        ``trending_every_s``. The batch in hand is finished before returning."""
        next_tick = 0.0
        while not stop.is_set():
            try:
                await self.step()
                if time.monotonic() >= next_tick:
                    next_tick = time.monotonic() + self.options.trending_every_s
                    await self.claim()
                    await self.refresh_trending()
                    await self.measure_backlog()
            except (RedisError, OSError) as exc:  # Redis restarting: wait, then go on
                self.metrics.errors.inc()
                log.warning("event log: %s; retrying in 1 s", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)
