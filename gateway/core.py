"""The transport-free core of the gateway. The HTTP and gRPC adapters only translate.

Every request goes through ``GatewayCore.admit``: authentication and the tenant's rate
limit, then admission control, then the route's work within a deadline, with metrics
recorded once. Errors are ``TenfoldError`` subclasses; the adapters map them with the
one table in ``inference.protocol.errors``.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field

from gateway.admission import AdaptiveAdmission, Admission
from gateway.auth import Authenticator, Tenant
from gateway.concurrency import GradientLimit
from gateway.effects import EffectsPipeline, Rendered
from gateway.events.schema import (
    MAX_USER_ID,
    EventLimits,
    EventsAnswer,
    EventsBody,
    check_batch,
    checked_user,
    user_key,
)
from gateway.events.store import EventStore
from gateway.experiments import assign
from gateway.feed import FeedAnswer, FeedBody, FeedItemOut, FeedPipeline, Trending
from gateway.metrics import GatewayMetrics
from gateway.settings import GatewaySettings
from gateway.upstream import Upstream
from gateway.upstream.passthrough import HttpRequest
from inference.protocol.errors import (
    DeadlineExceeded,
    ServerUnavailable,
    TenfoldError,
    TooManyRequests,
)

#: the status counted for a request whose client went away (nginx's 499)
CLIENT_GONE = "499"
_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}")


def usable_request_id(given: str | None) -> str:
    """The client's x-request-id if it is 1-128 printable ASCII characters (it is
    echoed in a header), else a new one."""
    if given and _REQUEST_ID.fullmatch(given):
        return given
    return uuid.uuid4().hex


@dataclass
class Call:
    """One request's context, as the adapters hand it to the core."""

    route: str
    deadline: float
    tenant: Tenant
    request_id: str
    arm: str = ""
    extra: dict = field(default_factory=dict)
    #: the status a pass-through answer carries (the upstream's), for the metrics
    status: int | None = None


@dataclass(frozen=True)
class CoreDeps:
    settings: GatewaySettings
    upstream: Upstream
    feed: FeedPipeline | None
    effects: EffectsPipeline
    metrics: GatewayMetrics
    #: the event log and user state (None: no Redis configured, the feed is stateless)
    events: EventStore | None = None
    clock: Callable[[], float] = time.monotonic
    #: Unix time, for event timestamps (``clock`` is monotonic, for deadlines)
    wall_clock: Callable[[], float] = time.time


def _retrieved(task: asyncio.Future) -> None:
    """A done callback: the task's outcome is taken (no "exception was never retrieved")."""
    if not task.cancelled():
        task.exception()


class GatewayCore:
    def __init__(self, deps: CoreDeps) -> None:
        self.settings = deps.settings
        self.upstream = deps.upstream
        self.feed_pipeline = deps.feed
        self.effects = deps.effects
        self.metrics = deps.metrics
        self.clock = deps.clock
        self.wall_clock = deps.wall_clock
        self.events = deps.events
        self.auth = Authenticator(deps.settings.tenants, deps.clock)
        s = deps.settings
        self.admission = Admission(s.max_inflight, s.max_queue, s.queue_timeout_ms / 1000)
        self.draining = False
        #: one adaptive concurrency limit per route (gateway/concurrency.py)
        self._limits: dict[str, AdaptiveAdmission | None] = {}
        self._defaults = {
            "feed": s.feed.deadline_ms / 1000,
            "infer": s.infer_deadline_ms / 1000,
            "events": s.events.deadline_ms / 1000,
        }
        #: route -> the models it calls (the routes whose limit's minimum is per endpoint)
        feed = s.feed
        self._route_models = {
            "feed": (feed.recall_model or feed.user_tower_model, feed.ranker_model),
            "effects": tuple(e.model for e in s.effects.values()),
        }
        self._route_pools: dict[str, frozenset[str]] = {}
        items = None if deps.feed is None else len(deps.feed.assets.embeddings)
        e = s.events
        self.event_limits = EventLimits(e.max_batch, e.future_tolerance_s, e.max_age_s, items)

    # -- the envelope every request goes through ------------------------------------
    def default_deadline_s(self, route: str, effect: str | None = None) -> float:
        if route == "effects" and effect in self.settings.effects:
            return self.settings.effects[effect].deadline_ms / 1000
        return self._defaults.get(route, 5.0)

    def limit(self, route: str) -> AdaptiveAdmission | None:
        """The route's admission under its adaptive concurrency limit (None: off)."""
        if route in self._limits:  # per request: the route's settings are merged once
            return self._limits[route]
        settings = self.settings.route_concurrency(route)
        limit = None
        if settings.enabled:
            limit = AdaptiveAdmission(
                GradientLimit(settings, self.clock()),
                settings.initial_limit,
                self.settings.queue_timeout_ms / 1000,
            )
        self._limits[route] = limit
        return limit

    def endpoints_behind(self, route: str) -> int:
        """Ready endpoints behind ``route``: the fewest of the pools its models live in
        (1 for a route that may call any pool, or none)."""
        pools = self._route_pools.get(route)
        if pools is None:  # resolved once: the model -> pool routing is fixed
            try:
                models = self._route_models.get(route, ())
                pools = frozenset(self.upstream.pool_for_model(m) for m in models)
            except TenfoldError:
                pools = frozenset()
            self._route_pools[route] = pools
        if not pools:
            return 1
        ready = self.upstream.ready()
        return max(1, min(ready.get(pool, 0) for pool in pools))

    @asynccontextmanager
    async def admit(
        self,
        route: str,
        key: str | None,
        timeout_s: float | None = None,
        request_id: str | None = None,
        effect: str | None = None,
        before_slot: Callable[[], Awaitable[object]] | None = None,
    ) -> AsyncIterator[Call]:
        """Authenticate, then ``before_slot`` (the HTTP adapter reads the body there:
        a slow upload holds no admission slot), then a place under the route's
        concurrency limit and an admission slot; yield the call."""
        start = self.clock()
        code = "200"
        call: Call | None = None
        limit, epoch, began = None, None, start
        self.metrics.arrivals.labels(route).inc()
        self.metrics.inflight.labels(route).inc()
        try:
            try:
                tenant = self.auth.check(key, route)
            except TooManyRequests:
                self.metrics.shed.labels(route, "rate_limit").inc()
                raise
            budget = self.default_deadline_s(route, effect)
            if timeout_s is not None:
                budget = min(budget, timeout_s)
            call = Call(route, start + budget, tenant, usable_request_id(request_id))
            if before_slot is not None:
                await before_slot()
            limit = self.limit(route)
            if limit is not None:
                try:
                    epoch = await limit.acquire(self.clock(), self.endpoints_behind(route))
                except TooManyRequests:
                    self.metrics.shed.labels(route, "concurrency").inc()
                    raise TooManyRequests(
                        f"{route}: at its adaptive concurrency limit "
                        f"({limit.controller.limit} in flight); retry later"
                    ) from None
                began = self.clock()
            slot = AsyncExitStack()
            try:
                await slot.enter_async_context(self.admission.slot())
            except TooManyRequests:
                self.metrics.shed.labels(route, "admission").inc()
                raise
            async with slot:
                yield call
        except TenfoldError as exc:
            code = str(exc.http_status)
            raise
        except (ConnectionError, asyncio.CancelledError):
            code = CLIENT_GONE  # the client went away: not the server's error
            raise
        except BaseException:
            code = "500"
            raise
        finally:
            if epoch is not None:
                self._release(route, limit, epoch, began, code)
            self.metrics.inflight.labels(route).dec()
            arm = call.arm if call else ""
            if call is not None and call.status is not None and code == "200":
                code = str(call.status)  # a pass-through answer: the endpoint's status
            self.metrics.requests.labels(route, code, arm).inc()
            self.metrics.latency.labels(route).observe(self.clock() - start)

    def _release(
        self, route: str, limit: AdaptiveAdmission, epoch: int, began: float, code: str
    ) -> None:
        """Hand the place back; answers and deadline misses are latency samples
        (client errors and sheds say nothing about the route's latency)."""
        now = self.clock()
        sample = code == "200" or code == str(DeadlineExceeded.http_status)
        limit.release(epoch, now - began if sample else None, now)
        self.metrics.concurrency_limit.labels(route).set(limit.controller.limit)
        if limit.controller.min_rtt_s is not None:
            self.metrics.concurrency_min_rtt.labels(route).set(limit.controller.min_rtt_s)

    # -- routes -------------------------------------------------------------------------
    async def feed(self, body: FeedBody, call: Call) -> FeedAnswer:
        if self.feed_pipeline is None:
            raise ServerUnavailable("the feed is not configured (no feed assets)")
        arm = assign(self.settings.experiments, str(body.user_id))
        call.arm = arm.label
        trending = None
        if self.events is not None:
            trending = Trending(self.events.trending, self.settings.events.trending_slots)
        pipeline, deadline, rid = self.feed_pipeline, call.deadline, call.request_id
        if body.history and self.events is not None:
            # the request's own history drives recall, and the stored state adds only
            # seen items, which ranking needs: the state read overlaps recall
            state_read = asyncio.ensure_future(self._with_state(body, call))
            try:
                recalled = await pipeline.recall(body, deadline, rid)
            except BaseException:
                state_read.cancel()  # recall's error is the answer; the read's, if any,
                state_read.add_done_callback(_retrieved)  # is collected, not logged
                raise
            body, history_source, state = await state_read
        else:
            body, history_source, state = await self._with_state(body, call)
            recalled = await pipeline.recall(body, deadline, rid)
        result = await pipeline.rank(recalled, body, arm, deadline, rid, trending)
        return FeedAnswer(
            items=[FeedItemOut(item_id=i, score=s, source=src) for i, s, src in result.items],
            model_version=result.model_version,
            experiment=arm.label,
            request_id=call.request_id,
            history_source=history_source,
            state=state,
        )

    async def _with_state(self, body: FeedBody, call: Call) -> tuple[FeedBody, str, str]:
        """The body with the user's stored history (when it sends none) and seen items
        added; where the history came from; the state's outcome (ok, degraded, off)."""
        source = "request" if body.history else "none"
        user = user_key(body.user_id)
        if self.events is None or len(user) > MAX_USER_ID:
            return body, source, "off"
        budget = min(self.settings.events.state_timeout_ms / 1000, call.deadline - self.clock())
        try:
            stored = await self.events.user_state(user, budget)
        except ServerUnavailable:
            self.metrics.state_reads.labels("degraded").inc()
            return body, source, "degraded"
        items = self.event_limits.items  # the catalogue size (the feed is configured)
        update = {}
        history = [i for i in stored.history if 0 <= i < items]
        if not body.history and history:
            update["history"], source = history, "state"
        if stored.seen:
            update["seen"] = [*body.seen, *stored.seen]
        self.metrics.state_reads.labels("hit" if update else "miss").inc()
        return (body.model_copy(update=update) if update else body), source, "ok"

    # -- events -------------------------------------------------------------------------
    def _event_store(self) -> EventStore:
        if self.events is None:
            raise ServerUnavailable(
                "events are not configured (no events.redis_url): the gateway is stateless"
            )
        return self.events

    async def publish_events(self, body: EventsBody, call: Call) -> EventsAnswer:
        """Check the batch and append it to the event log; answered once stored."""
        store = self._event_store()
        events = check_batch(body, self.event_limits, self.wall_clock())
        ids = await store.publish(events, call.deadline - self.clock())
        for event in events:
            self.metrics.events.labels(event.type).inc()
        return EventsAnswer(accepted=len(ids), ids=ids, request_id=call.request_id)

    async def erase_user(self, user_id: str, call: Call) -> str:
        """Delete a user's state (history, seen items); the log id of the erasure."""
        store = self._event_store()
        return await store.erase(checked_user(user_id, "user_id"), call.deadline - self.clock())

    async def apply_effect(
        self, effect: str, data: bytes, size: int | None, fmt: str, call: Call
    ) -> Rendered:
        return await self.effects.apply(effect, data, size, fmt, call.deadline, call.request_id)

    async def infer_raw(self, model: str, method_path: str, request: bytes, call: Call) -> bytes:
        """KServe v2 gRPC pass-through: ``request`` goes to the model's pool unchanged."""
        return await self.upstream.infer_raw(model, method_path, request, call.deadline)

    async def http_passthrough(
        self, model: str, request: HttpRequest, call: Call
    ) -> tuple[int, dict[str, str], bytes]:
        """KServe v2 HTTP pass-through to an endpoint's HTTP address (its status is
        what the request is counted as)."""
        status, headers, body = await self.upstream.http(model, request, call.deadline)
        call.status = status
        return status, headers, body

    def ready(self) -> dict[str, int]:
        """Ready endpoints per pool; the gateway is ready when every pool has one."""
        return self.upstream.ready()

    def is_ready(self) -> bool:
        counts = self.ready()
        return not self.draining and bool(counts) and all(counts.values())
