"""The transport-free core of the gateway. The HTTP and gRPC adapters only translate.

Every request goes through ``GatewayCore.admit``: authentication and the tenant's rate
limit, then admission control, then the route's work within a deadline, with metrics
recorded once. Errors are ``TenfoldError`` subclasses; the adapters map them with the
one table in ``inference.protocol.errors``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field

from gateway.admission import Admission
from gateway.auth import Authenticator, Tenant
from gateway.effects import EffectsPipeline, Rendered
from gateway.experiments import assign
from gateway.feed import FeedAnswer, FeedBody, FeedItemOut, FeedPipeline
from gateway.metrics import GatewayMetrics
from gateway.settings import GatewaySettings
from gateway.upstream import Upstream
from gateway.upstream.passthrough import HttpRequest
from inference.protocol.errors import ServerUnavailable, TenfoldError, TooManyRequests


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
    clock: Callable[[], float] = time.monotonic


class GatewayCore:
    def __init__(self, deps: CoreDeps) -> None:
        self.settings = deps.settings
        self.upstream = deps.upstream
        self.feed_pipeline = deps.feed
        self.effects = deps.effects
        self.metrics = deps.metrics
        self.clock = deps.clock
        self.auth = Authenticator(deps.settings.tenants, deps.clock)
        s = deps.settings
        self.admission = Admission(s.max_inflight, s.max_queue, s.queue_timeout_ms / 1000)
        self.draining = False
        self._defaults = {
            "feed": s.feed.deadline_ms / 1000,
            "infer": s.infer_deadline_ms / 1000,
        }

    # -- the envelope every request goes through ------------------------------------
    def default_deadline_s(self, route: str, effect: str | None = None) -> float:
        if route == "effects" and effect in self.settings.effects:
            return self.settings.effects[effect].deadline_ms / 1000
        return self._defaults.get(route, 5.0)

    @asynccontextmanager
    async def admit(
        self,
        route: str,
        key: str | None,
        timeout_s: float | None = None,
        request_id: str | None = None,
        effect: str | None = None,
    ) -> AsyncIterator[Call]:
        start = self.clock()
        code = "200"
        call: Call | None = None
        self.metrics.arrivals.labels(route).inc()
        self.metrics.inflight.labels(route).inc()
        try:
            if self.draining:
                raise ServerUnavailable("gateway is shutting down")
            try:
                tenant = self.auth.check(key, route)
            except TooManyRequests:
                self.metrics.shed.labels(route, "rate_limit").inc()
                raise
            budget = self.default_deadline_s(route, effect)
            if timeout_s is not None:
                budget = min(budget, timeout_s)
            call = Call(route, start + budget, tenant, request_id or uuid.uuid4().hex)
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
        except BaseException:
            code = "500"
            raise
        finally:
            self.metrics.inflight.labels(route).dec()
            arm = call.arm if call else ""
            if call is not None and call.status is not None and code == "200":
                code = str(call.status)  # a pass-through answer: the endpoint's status
            self.metrics.requests.labels(route, code, arm).inc()
            self.metrics.latency.labels(route).observe(self.clock() - start)

    # -- routes -------------------------------------------------------------------------
    async def feed(self, body: FeedBody, call: Call) -> FeedAnswer:
        if self.feed_pipeline is None:
            raise ServerUnavailable("the feed is not configured (no feed assets)")
        arm = assign(self.settings.experiments, str(body.user_id))
        call.arm = arm.label
        result = await self.feed_pipeline.run(body, arm, call.deadline, call.request_id)
        return FeedAnswer(
            items=[FeedItemOut(item_id=i, score=s, source=src) for i, s, src in result.items],
            model_version=result.model_version,
            experiment=arm.label,
            request_id=call.request_id,
        )

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
