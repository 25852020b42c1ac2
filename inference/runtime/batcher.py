"""The dynamic batcher: one per model version.

Requests queue here; whenever a model instance is free, the scheduler forms a batch:
it takes queued requests in order (only ones whose non-batch shapes match the head's)
up to ``max_batch_size`` rows, waiting at most ``max_queue_delay`` after the head
arrived for more rows. With preferred batch sizes it dispatches as soon as the largest
preferred size is reached. Requests carrying several rows count as several rows.

The queue is bounded (``max_queue_size`` requests) and each request may have a queue
timeout: excess and expired requests fail at once with ``Overloaded``. A request with
a deadline is refused at submit when the queue cannot serve it in time, and shed at
dispatch when its batch would end past it (``Overloaded`` again); a batch stops
growing where it would last more than ``BATCH_SHARE_OF_DEADLINE`` of the time its most
pressed request has left (the first request is taken whatever it lasts, if it ends in
time). Under a CPU quota
the estimate is no faster than the quota allows: each row's CPU seconds (measured in
the thread that runs it, times the pod's overhead: ``inference.runtime.cpu``) over the
quota's cores, since a pod's warm-up and its first rows can run on unspent quota (or a
start-up boost) at several times the pace it can keep. A caller that goes away
(cancelled) is skipped. Nothing waits forever: on ``stop`` every queued
request fails with ``ServerUnavailable``.
"""

from __future__ import annotations

import asyncio
import collections
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from inference.protocol.errors import Overloaded, ServerUnavailable
from inference.protocol.loadreport import LoadReport
from inference.repository.spec import BatchingPolicy
from inference.runtime.cpu import CpuBudget
from inference.runtime.results import BatchResult


class BatchObserver(Protocol):
    def queued(self, depth: int) -> None: ...
    def dispatched(self, rows: int, queue_times_s: Sequence[float]) -> None: ...
    def computed(self, compute_s: float) -> None: ...
    def isolated(self, requests: int) -> None: ...


class _NullObserver:
    def queued(self, depth: int) -> None:
        pass

    def dispatched(self, rows: int, queue_times_s: Sequence[float]) -> None:
        pass

    def computed(self, compute_s: float) -> None:
        pass

    def isolated(self, requests: int) -> None:
        pass


#: event-loop timers fire on a 1 ms grid (uvloop/libuv); a shorter wait would overshoot
#: ``max_queue_delay``, so a remaining delay below this is not waited for.
TIMER_RESOLUTION_S = 0.001

#: a batch lasts at most this share of the time its most pressed request has left, so
#: each queued request is judged again several times before its deadline: a batch's rows
#: are held until it ends, and one that slips (a surge's first batches ran 75 % past
#: their judgement) makes only its own rows late, the next one being judged with the slip
BATCH_SHARE_OF_DEADLINE = 0.25

Execute = Callable[[Sequence[dict[str, np.ndarray]], Sequence[int]], Awaitable[BatchResult]]


@dataclass(slots=True, eq=False)
class _Pending:
    inputs: dict[str, np.ndarray]
    rows: int
    signature: tuple
    future: asyncio.Future
    enqueued: float
    timer: asyncio.TimerHandle | None = field(default=None)
    #: loop time by which the caller needs the answer (None: no deadline)
    deadline: float | None = field(default=None)

    def alive(self) -> bool:
        return not self.future.done()


class DynamicBatcher:
    def __init__(
        self,
        *,
        execute: Execute,
        instances: int,
        max_batch_size: int,
        policy: BatchingPolicy | None,
        queue_cap: int = 0,
        observer: BatchObserver | None = None,
        budget: CpuBudget | None = None,
    ) -> None:
        """``policy`` None: no dynamic batching, each request runs as its own batch.
        ``queue_cap`` > 0 bounds the queue when the config sets no max_queue_size.
        ``budget``: the pod's CPU quota and overhead, shared by its batchers."""
        self._execute = execute
        self._slots = asyncio.Semaphore(max(1, instances))
        self._merge = policy is not None and max_batch_size > 0
        self._max_rows = max(1, max_batch_size)
        self._policy = policy or BatchingPolicy()
        self._max_queue = self._policy.max_queue_size or queue_cap
        self._preferred_top = max(self._policy.preferred_batch_sizes, default=0)
        self._queue: collections.deque[_Pending] = collections.deque()
        self._arrival = asyncio.Event()
        self._observer = observer or _NullObserver()
        self._scheduler: asyncio.Task | None = None
        self._running: set[asyncio.Task] = set()
        self._loop = asyncio.get_running_loop()
        self._instances = max(1, instances)
        self._budget = budget or CpuBudget()  # the quota, and the pod's CPU overhead
        #: seconds of one instance per row (moving average over executed batches)
        self._row_s: float | None = None
        #: CPU seconds per row (moving average; None: not measured)
        self._cpu_row_s: float | None = None
        #: seconds per row between completions while requests waited (moving average;
        #: None: never backlogged): the pace the pod really keeps, all costs included
        self._busy_row_s: float | None = None
        #: when the last batch finished, and whether requests were waiting then
        self._last_done: tuple[float, bool] | None = None
        self._running_rows = 0
        #: how much longer batches ran than judged when they started (>= 1): rises at
        #: once, falls slowly; a batch's end is judged with it
        self._slip = 1.0

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        if self._scheduler is None:
            self._scheduler = asyncio.create_task(self._schedule(), name="batcher")

    async def stop(self) -> None:
        """Stop scheduling; fail what is still queued; wait for running batches."""
        if self._scheduler is not None:
            self._scheduler.cancel()
            await asyncio.gather(self._scheduler, return_exceptions=True)
            self._scheduler = None
        while self._queue:
            self._fail(self._queue.popleft(), ServerUnavailable("server is shutting down"))
        self._observer.queued(0)
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    @property
    def depth(self) -> int:
        return len(self._queue)

    def seed(self, rows: int, result: BatchResult) -> None:
        """Judge from a run made outside the queue (the warm-up): without it a new pod
        admits whatever comes until its first batch has run, and a pod joining a surge
        is sent the most work, much of it retried with little time left."""
        if self._row_s is None:
            self._row_s = result.compute_s / max(1, rows)
        if self._cpu_row_s is None and result.cpu_s is not None:
            self._cpu_row_s = result.cpu_s / max(1, rows)

    # -- submit ----------------------------------------------------------------------
    def expected_wait_s(self, rows: int) -> float | None:
        """How long ``rows`` more rows would take to be served from now, judged by the
        rows queued and running and the measured seconds per row (None: not measured)."""
        if self._row_s is None:
            return None
        queued = sum(p.rows for p in self._queue if p.alive())
        return (queued + self._running_rows + rows) * self._pace_s()

    def load_report(self) -> LoadReport | None:
        """What the pod tells the gateway with each answer (None: not measured)."""
        wait = self.expected_wait_s(1)
        return None if wait is None else LoadReport(wait, self._pace_s())

    def _parallel(self, limit: float | None) -> int:
        """Instances that run side by side under ``limit`` cores of quota: all of them,
        or as many as its whole cores (at least one); more only slow each other and the
        pod's loop."""
        return self._instances if limit is None else min(self._instances, max(1, int(limit)))

    def _pace_s(self) -> float:
        """Seconds per row the pod keeps up, all instances together: the measured wall
        time per row over the instances that run side by side, and under a CPU quota no
        less than the CPU per row over the quota's cores."""
        assert self._row_s is not None
        limit = self._budget.limit()
        pace = self._row_s / self._parallel(limit)
        if limit is None:
            return pace
        if self._cpu_row_s is not None:
            pace = max(pace, self._cpu_row_s * self._budget.overhead / limit)
        if self._busy_row_s is not None:  # what it kept while backlogged
            pace = max(pace, self._busy_row_s)
        return pace

    async def submit(
        self,
        inputs: dict[str, np.ndarray],
        rows: int,
        timeout_s: float | None = None,
        deadline_s: float | None = None,
    ) -> dict[str, np.ndarray]:
        """Queue one request of ``rows`` rows; return its own output rows.

        ``timeout_s`` overrides the policy's default queue timeout when the policy
        allows it. ``deadline_s``: the caller's remaining time; a request that the queue
        cannot serve within it is refused at once (``Overloaded``) instead of being
        queued to time out: under overload the pod sheds fast and spends its CPU only
        on answers someone still waits for."""
        if self._scheduler is None:
            raise ServerUnavailable("model is not serving")
        if self._max_queue and len(self._queue) >= self._max_queue:
            raise Overloaded(f"queue is full ({self._max_queue} requests waiting); retry later")
        if deadline_s is not None:
            wait = self.expected_wait_s(rows)
            if wait is not None and wait > deadline_s:
                raise Overloaded(
                    f"the queue would take {wait * 1000:.0f} ms, past the request's deadline "
                    f"({deadline_s * 1000:.0f} ms left); retry later"
                )
        policy = self._policy
        if timeout_s is None or not policy.allow_timeout_override:
            timeout_s = policy.default_timeout_s
        signature = tuple((k, v.shape[1:] if self._merge else v.shape) for k, v in inputs.items())
        now = self._loop.time()
        pending = _Pending(inputs, rows, signature, self._loop.create_future(), now)
        if deadline_s is not None:
            pending.deadline = now + deadline_s
        if timeout_s > 0 and policy.timeout_action == "REJECT":
            pending.timer = self._loop.call_later(timeout_s, self._expire, pending, timeout_s)
        self._queue.append(pending)
        self._observer.queued(len(self._queue))
        self._arrival.set()
        try:
            return await pending.future
        finally:
            if pending.timer is not None:
                pending.timer.cancel()

    def _expire(self, pending: _Pending, timeout_s: float) -> None:
        if pending.alive():
            self._fail(
                pending,
                Overloaded(f"request waited {timeout_s * 1000:.0f} ms in the queue and timed out"),
            )
            self._discard_dead()

    @staticmethod
    def _fail(pending: _Pending, exc: Exception) -> None:
        if pending.alive():
            pending.future.set_exception(exc)

    def _discard_dead(self) -> None:
        if any(not p.alive() for p in self._queue):
            self._queue = collections.deque(p for p in self._queue if p.alive())
            self._observer.queued(len(self._queue))

    # -- scheduling ------------------------------------------------------------------
    async def _schedule(self) -> None:
        while True:
            await self._slots.acquire()
            try:
                while self._running and len(self._running) >= self._parallel(self._budget.limit()):
                    done = asyncio.FIRST_COMPLETED  # under a small quota: one at a time
                    await asyncio.wait(set(self._running), return_when=done)
                batch = await self._next_batch()
            except BaseException:
                self._slots.release()
                raise
            task = asyncio.create_task(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _wait_arrival(self, within_s: float | None) -> None:
        self._arrival.clear()
        if within_s is None:
            await self._arrival.wait()
            return
        try:
            await asyncio.wait_for(self._arrival.wait(), within_s)
        except TimeoutError:
            pass

    async def _next_batch(self) -> list[_Pending]:
        while True:
            self._discard_dead()
            self._shed_unreachable()
            if not self._queue:
                await self._wait_arrival(None)
                continue
            head = self._queue[0]
            rows = self._compatible_rows(head) if self._merge else 0
            remaining = head.enqueued + self._policy.max_queue_delay_s - self._loop.time()
            if not self._merge or rows >= self._max_rows:
                limit = self._max_rows
            elif self._preferred_top and rows >= self._preferred_top:
                limit = self._preferred_top
            elif remaining < TIMER_RESOLUTION_S:
                limit = self._max_rows
            else:
                await self._wait_arrival(remaining)
                continue
            taken = self._take(head, limit)
            if taken:  # else every candidate was shed past its deadline: look again
                return taken

    def _shed_unreachable(self) -> None:
        """Shed the queued requests that the queue, at the pace measured now, would no
        longer reach before their deadline. Admission judged them by the pace at their
        arrival; the pace slows when the pod's CPU overhead grows (under a quota,
        receiving and refusing a surge costs CPU), and they would then time out here.
        Shed now, the caller retries them elsewhere with time left."""
        if self._row_s is None or not any(p.deadline is not None for p in self._queue):
            return
        now, pace = self._loop.time(), self._pace_s()
        ahead = self._running_rows
        shed = False
        for pending in self._queue:
            if not pending.alive():
                continue
            ahead += pending.rows
            if pending.deadline is None or now + ahead * pace <= pending.deadline:
                continue
            late_ms = (now + ahead * pace - pending.deadline) * 1000
            self._fail(
                pending,
                Overloaded(
                    f"shed while queued: the queue would reach it {late_ms:.0f} ms past its "
                    "deadline; retry later"
                ),
            )
            if pending.timer is not None:
                pending.timer.cancel()
            ahead -= pending.rows
            shed = True
        if shed:
            self._discard_dead()

    def _compatible_rows(self, head: _Pending) -> int:
        return sum(p.rows for p in self._queue if p.alive() and p.signature == head.signature)

    def _take(self, head: _Pending, limit: int) -> list[_Pending]:
        """Take requests in order, compatible with ``head``, up to ``limit`` rows, and
        only while the batch lasts at most ``BATCH_SHARE_OF_DEADLINE`` of the time its
        most pressed request has left: a batch's rows all finish when it ends, so each
        row added delays the others (and a batch that slips makes all its rows late)."""
        taken: list[_Pending] = []
        kept: collections.deque[_Pending] = collections.deque()
        total = 0
        full = False
        now = self._loop.time()
        due = math.inf  # the earliest deadline among the requests taken
        for pending in self._queue:
            if not pending.alive():
                continue
            if full or pending.signature != head.signature:
                kept.append(pending)
                continue
            ends = self._batch_end(now, total + pending.rows)
            pressed = min(due, math.inf if pending.deadline is None else pending.deadline)
            too_long = ends - now > (pressed - now) * BATCH_SHARE_OF_DEADLINE
            if taken and (total + pending.rows > limit or too_long):
                full = True
                kept.append(pending)
                continue
            if self._past_deadline(pending, ends):
                continue
            taken.append(pending)
            total += pending.rows
            if pending.deadline is not None:
                due = min(due, pending.deadline)
            if not self._merge:
                full = True
        self._queue = kept
        self._observer.queued(len(kept))
        for pending in taken:
            if pending.timer is not None:
                pending.timer.cancel()
        if taken:
            self._observer.dispatched(total, [now - p.enqueued for p in taken])
        return taken

    def _batch_end(self, now: float, batch_rows: int, slip: bool = True) -> float:
        """When a batch of ``batch_rows`` rows started ``now`` would end: alone, or
        behind the rows running, at the pace (``now`` itself while nothing is measured),
        times the slip measured so far (unless ``slip`` is False)."""
        if self._row_s is None:
            return now
        alone = batch_rows * self._row_s
        judged = max(alone, (self._running_rows + batch_rows) * self._pace_s())
        return now + judged * (self._slip if slip else 1.0)

    def _slipped(self, judged_s: float, took_s: float) -> None:
        """Learn how far a batch's time slipped past its judgement: under a quota a
        surge slowed the pace by 75 % within one batch (receiving, being throttled
        among more processes), and every row of that batch ended late."""
        if judged_s <= 0:
            return
        sample = min(4.0, max(1.0, took_s / judged_s))
        self._slip = sample if sample > self._slip else 0.9 * self._slip + 0.1 * sample

    def _past_deadline(self, pending: _Pending, ends: float) -> bool:
        """Shed ``pending`` if its batch would end (``ends``) past its deadline: the
        caller gets a fast ``Overloaded`` (retry elsewhere) instead of a late one, and
        the instance's time goes to answers still wanted. (A later batch would end later
        still: the queue is served in order.)"""
        if pending.deadline is None or ends <= pending.deadline:
            return False
        late_ms = (ends - pending.deadline) * 1000
        self._fail(
            pending,
            Overloaded(
                f"shed before running: it would end {late_ms:.0f} ms past its deadline; retry later"
            ),
        )
        if pending.timer is not None:
            pending.timer.cancel()
        return True

    def _completed(self, rows: int) -> None:
        """Under a quota, the time between completions while requests waited is the
        pace the pod keeps with every cost it pays (receiving, refusing, answering,
        throttling): a pace judged by the model's CPU and an overhead averaged over
        seconds lagged a surge's first seconds, and admitted work that ended past its
        deadline. Without a quota the instances' own time is the measure."""
        now = self._loop.time()
        last, self._last_done = self._last_done, (now, any(p.alive() for p in self._queue))
        if last is None or not last[1] or self._budget.limit() is None:
            return
        per_row = (now - last[0]) / rows
        previous = self._busy_row_s
        self._busy_row_s = per_row if previous is None else 0.7 * previous + 0.3 * per_row

    async def _run(self, batch: list[_Pending]) -> None:
        try:
            await self._isolate(batch)
        finally:
            self._slots.release()

    async def _isolate(self, batch: list[_Pending]) -> None:
        """Run ``batch``; if it fails, run its halves apart, down to single requests, so
        only the request that causes a failure gets it (one bad input must not fail
        the others it was batched with)."""
        batch = [p for p in batch if p.alive()]
        if not batch:
            return
        rows = sum(p.rows for p in batch)
        started = self._loop.time()
        judged = self._batch_end(started, rows, slip=False) - started
        self._running_rows += rows
        try:
            result = await self._execute([p.inputs for p in batch], [p.rows for p in batch])
            took = self._loop.time() - started
            self._slipped(judged, took)
            per_row = took / rows
            self._row_s = per_row if self._row_s is None else 0.8 * self._row_s + 0.2 * per_row
            if result.cpu_s is not None:
                self._budget.charge(result.cpu_s)
                cpu, last = result.cpu_s / rows, self._cpu_row_s
                self._cpu_row_s = cpu if last is None else 0.8 * last + 0.2 * cpu
        except Exception as exc:
            self._running_rows -= rows
            if len(batch) == 1:
                self._fail(batch[0], exc)
                return
            self._observer.isolated(len(batch))
            half = len(batch) // 2
            await self._isolate(batch[:half])
            await self._isolate(batch[half:])
            return
        self._running_rows -= rows
        self._completed(rows)
        self._observer.computed(result.compute_s)
        for pending, outputs in zip(batch, result.outputs, strict=True):
            if pending.alive():
                pending.future.set_result(outputs)
