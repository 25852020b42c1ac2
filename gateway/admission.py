"""Admission control: a cap on in-flight requests and a short bounded wait queue.

Beyond the cap a request waits at most ``queue_timeout`` for a slot; when the queue is
full or the wait runs out it is refused at once with ``TooManyRequests`` (429 +
Retry-After / RESOURCE_EXHAUSTED), so overload is answered quickly instead of turning
into timeouts for everyone.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from gateway.concurrency import GradientLimit
from inference.protocol.errors import TooManyRequests


class Admission:
    def __init__(self, max_inflight: int, max_queue: int, queue_timeout_s: float) -> None:
        self.max_inflight = max_inflight
        self.max_queue = max_queue
        self.queue_timeout_s = queue_timeout_s
        self.inflight = 0
        self._waiters: collections.deque[asyncio.Future] = collections.deque()

    @property
    def queued(self) -> int:
        return len(self._waiters)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        await self.acquire()
        try:
            yield
        finally:
            self.release()

    async def acquire(self) -> None:
        """A slot, after a wait of at most ``queue_timeout_s``; else TooManyRequests."""
        if self.inflight < self.max_inflight and not self._waiters:
            self.inflight += 1
            return
        if len(self._waiters) >= self.max_queue or self.queue_timeout_s <= 0:
            raise TooManyRequests("gateway overloaded: too many requests in flight")
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), self.queue_timeout_s)
        except TimeoutError:
            if waiter.done() and not waiter.cancelled():
                return  # the slot was handed over as the wait ran out: keep it
            waiter.cancel()
            raise TooManyRequests("gateway overloaded: no slot within the queue timeout") from None
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()
            waiter.cancel()
            raise
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def wake(self) -> None:
        """Hand free slots to waiters (after ``max_inflight`` was raised)."""
        while self._waiters and self.inflight < self.max_inflight:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.inflight += 1
                waiter.set_result(None)

    def release(self) -> None:
        # max_inflight may have been lowered (an adaptive limit): hand over only within it
        while self._waiters and self.inflight <= self.max_inflight:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes to the waiter: inflight unchanged
                return
        self.inflight -= 1


class AdaptiveAdmission:
    """A route's admission under its adaptive limit (``gateway.concurrency``): at most
    ``limit`` in flight, the next request refused at once (a queue under overload only
    adds its wait to every answer, shed or served). While the floor is measured (the
    limit pinned to its minimum: at start, and for a moment every minute or so) up to
    ``max_queue`` requests wait up to ``queue_timeout_s`` instead, so clients arriving
    with a fresh gateway are not refused."""

    def __init__(self, controller: GradientLimit, max_queue: int, queue_timeout_s: float) -> None:
        self.controller = controller
        self.max_queue = max_queue
        self.admission = Admission(controller.limit, max_queue, queue_timeout_s)

    @property
    def inflight(self) -> int:
        return self.admission.inflight

    def _apply(self) -> None:
        self.admission.max_inflight = self.controller.limit
        self.admission.max_queue = self.max_queue if self.controller.measuring else 0
        self.admission.wake()

    async def acquire(self, now: float, endpoints: int = 1) -> int:
        """A place (the controller's epoch, for ``release``), or TooManyRequests.
        ``endpoints``: ready endpoints behind the route now (the limit's minimum is per
        endpoint)."""
        self.controller.endpoints = endpoints
        self.controller.advance(now)
        self._apply()
        await self.admission.acquire()
        return self.controller.epoch

    def release(self, epoch: int, latency_s: float | None, now: float) -> None:
        self.controller.observe(epoch, latency_s, now)
        self._apply()
        self.admission.release()
