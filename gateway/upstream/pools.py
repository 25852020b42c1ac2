"""Inference pools: named sets of KServe v2 endpoints behind one call interface.

``Pool.call`` picks an endpoint (power of two choices on in-flight), sends within the
request's deadline, retries another endpoint on connection failure / UNAVAILABLE while
the retry budget allows, optionally hedges after a delay, and ejects endpoints that
keep failing. ``PoolRegistry.update`` replaces a pool's endpoints at run time; outside
this package that is ``Upstream.update`` (``gateway.upstream``).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

import grpc

from gateway.limits import RetryBudget
from gateway.metrics import GatewayMetrics
from gateway.settings import EndpointSettings
from gateway.upstream.balancer import EjectionPolicy, EndpointState, choose
from gateway.upstream.errors import UpstreamError
from inference.protocol.errors import DeadlineExceeded, Overloaded, ServerUnavailable
from inference.protocol.loadreport import parse
from protos.kserve.v2 import grpc_service_pb2 as pb
from servicekit.kserve_grpc import method_path

T = TypeVar("T")
#: longest wait for a removed endpoint's in-flight calls before its channel is closed
RETIRE_GRACE_S = 30.0
_READY = method_path("ServerReady")
_READY_REQUEST = pb.ServerReadyRequest().SerializeToString()
_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 64 << 20),
    ("grpc.max_send_message_length", 64 << 20),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.enable_retries", 0),  # retries are ours, bounded by the budget
]


class Endpoint:
    """One pod: its balancing state, a persistent gRPC channel, and its HTTP address."""

    def __init__(self, settings: EndpointSettings, policy: EjectionPolicy) -> None:
        self.settings = settings
        self.state = EndpointState(settings.grpc, policy)
        self.channel = grpc.aio.insecure_channel(settings.grpc, options=_CHANNEL_OPTIONS)
        self._methods: dict[str, grpc.aio.UnaryUnaryMultiCallable] = {}

    @property
    def address(self) -> str:
        return self.settings.grpc

    def method(self, path: str) -> grpc.aio.UnaryUnaryMultiCallable:
        """A raw-bytes callable for ``path``: the gateway encodes and decodes itself."""
        call = self._methods.get(path)
        if call is None:
            call = self._methods[path] = self.channel.unary_unary(path)
        return call

    async def close(self, grace: float | None = None) -> None:
        await self.channel.close(grace)


@dataclass
class PoolDeps:
    metrics: GatewayMetrics
    clock: Callable[[], float]
    rng: random.Random
    policy: EjectionPolicy
    budget_ratio: float
    budget_min_per_s: float
    hedge_after_s: float | None
    #: builds an endpoint from its settings (a seam: tests pass endpoints without a channel)
    make_endpoint: Callable[[EndpointSettings, EjectionPolicy], Endpoint] = Endpoint


class Pool:
    def __init__(self, name: str, endpoints: Iterable[EndpointSettings], deps: PoolDeps) -> None:
        self.name = name
        self.deps = deps
        self.budget = RetryBudget(deps.budget_ratio, deps.budget_min_per_s, deps.clock())
        self.endpoints: list[Endpoint] = [deps.make_endpoint(e, deps.policy) for e in endpoints]
        self._closing: set[asyncio.Task] = set()
        self._retiring: dict[Endpoint, asyncio.Event] = {}  # removed, calls still in flight

    def set_endpoints(self, endpoints: Iterable[EndpointSettings]) -> None:
        """Replace the endpoint set; kept endpoints keep their channel and state, removed
        ones close once their in-flight calls finish (grace period)."""
        wanted = {e.grpc: e for e in endpoints}
        current = {e.address: e for e in self.endpoints}
        kept = [current[a] for a in wanted if a in current and current[a].settings == wanted[a]]
        kept_addresses = {e.address for e in kept}
        added = [
            self.deps.make_endpoint(s, self.deps.policy)
            for a, s in wanted.items()
            if a not in kept_addresses
        ]
        for gone in (e for e in self.endpoints if e not in kept):
            idle = self._retiring[gone] = asyncio.Event()
            if gone.state.inflight <= 0:
                idle.set()
            task = asyncio.get_running_loop().create_task(self._retire(gone, idle))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        self.endpoints = kept + added

    async def _retire(self, endpoint: Endpoint, idle: asyncio.Event) -> None:
        """Close a removed endpoint once its in-flight calls have finished (at most
        ``RETIRE_GRACE_S``; the channel's own grace covers calls outside ``call``)."""
        try:
            await asyncio.wait_for(idle.wait(), RETIRE_GRACE_S)
        except TimeoutError:
            pass
        finally:
            self._retiring.pop(endpoint, None)
        await endpoint.close(grace=RETIRE_GRACE_S)

    def ready_endpoints(self) -> int:
        now = self.deps.clock()
        return sum(1 for e in self.endpoints if e.state.healthy and not e.state.ejected(now))

    async def check_health(self, timeout_s: float) -> None:
        """Ask every endpoint ServerReady; an endpoint that is not ready takes no traffic."""

        async def one(endpoint: Endpoint) -> None:
            try:
                raw = await endpoint.method(_READY)(_READY_REQUEST, timeout=timeout_s)
                endpoint.state.healthy = pb.ServerReadyResponse.FromString(raw).ready
            except (TimeoutError, grpc.aio.AioRpcError):
                endpoint.state.healthy = False

        await asyncio.gather(*(one(e) for e in list(self.endpoints)))

    def remaining(self, deadline: float) -> float:
        return deadline - self.deps.clock()

    async def call(self, attempt: Callable[[Endpoint, float], Awaitable[T]], deadline: float) -> T:
        """Run ``attempt(endpoint, timeout_s)`` on one endpoint, retrying elsewhere."""
        self.budget.deposit()
        tried: set[str] = set()
        while True:
            if self.remaining(deadline) <= 0:
                raise DeadlineExceeded(f"deadline expired before pool {self.name!r} answered")
            endpoint = self._pick(tried, self.remaining(deadline))
            try:
                return await self._attempt_or_hedge(endpoint, attempt, deadline, tried)
            except UpstreamError as exc:
                if not exc.retryable or self.remaining(deadline) <= 0:
                    raise exc.error from None
                if self._pick_or_none(tried, self.remaining(deadline)) is None:
                    raise exc.error from None
                if not self.budget.withdraw(self.deps.clock()):
                    raise exc.error from None
                self.deps.metrics.retries.labels(self.name, "retry").inc()

    def _pick_or_none(self, tried: set[str], within_s: float | None = None) -> Endpoint | None:
        now = self.deps.clock()
        states = [e.state for e in self.endpoints]
        state = choose(states, now, self.deps.rng, frozenset(tried), within_s)
        if state is None:
            return None
        return next(e for e in self.endpoints if e.state is state)

    def _pick(self, tried: set[str], within_s: float) -> Endpoint:
        """An endpoint expected to serve within ``within_s``; if every available one is
        reported full, the request is shed here (``Overloaded``), costing no pod."""
        endpoint = self._pick_or_none(tried, within_s)
        if endpoint is not None:
            tried.add(endpoint.address)
            return endpoint
        if self._pick_or_none(tried) is None:
            raise ServerUnavailable(f"pool {self.name!r} has no available endpoint")
        now = self.deps.clock()
        waits = [e.state.expected_wait(now) for e in self.endpoints]
        shortest = min(w for w in waits if w is not None)
        self.deps.metrics.full.labels(self.name).inc()
        raise Overloaded(
            f"pool {self.name!r} is full: its shortest wait is {shortest * 1000:.0f} ms, "
            f"past the request's {within_s * 1000:.0f} ms left; retry later"
        )

    def reported(self, endpoint: Endpoint, metadata) -> None:
        """Keep ``endpoint``'s load report from an answer's trailing ``metadata``."""
        endpoint.state.reported(parse(metadata), self.deps.clock())

    async def _attempt_or_hedge(self, endpoint, attempt, deadline, tried) -> T:
        hedge_after = self.deps.hedge_after_s
        if hedge_after is None or hedge_after >= self.remaining(deadline):
            return await self._attempt(endpoint, attempt, deadline)
        first = asyncio.ensure_future(self._attempt(endpoint, attempt, deadline))
        done, _ = await asyncio.wait({first}, timeout=hedge_after)
        other = None if done else self._pick_or_none(tried)
        if other is None or not self.budget.withdraw(self.deps.clock()):
            return await first
        tried.add(other.address)
        self.deps.metrics.retries.labels(self.name, "hedge").inc()
        second = asyncio.ensure_future(self._attempt(other, attempt, deadline))
        pending = {first, second}
        error: UpstreamError | None = None
        try:
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if task.exception() is None:
                        return task.result()
                    if not isinstance(task.exception(), UpstreamError):
                        raise task.exception()
                    error = task.exception()
            assert error is not None
            raise error
        finally:
            for task in pending:
                task.cancel()

    async def _attempt(self, endpoint: Endpoint, attempt, deadline: float) -> T:
        clock = self.deps.clock
        state = endpoint.state
        start = clock()
        state.started(start)
        ok = False
        outcome = "error"
        try:
            result = await attempt(endpoint, max(0.0, deadline - start))
            ok, outcome = True, "ok"
            return result
        except UpstreamError as exc:
            ok = not exc.endpoint_fault
            outcome = "upstream_fault" if exc.endpoint_fault else "error"
            raise
        except asyncio.CancelledError:
            ok, outcome = True, "cancelled"  # not the endpoint's fault
            raise
        finally:
            now = clock()
            if state.finished(ok, now):
                self.deps.metrics.ejections.labels(self.name).inc()
            idle = self._retiring.get(endpoint)
            if idle is not None and state.inflight <= 0:
                idle.set()
            self.deps.metrics.upstream_latency.labels(self.name, outcome).observe(now - start)

    async def close(self) -> None:
        await asyncio.gather(*(e.close() for e in self.endpoints), *self._closing)


class PoolRegistry:
    """All pools by name; ``update`` is the run-time interface for endpoint changes."""

    def __init__(self, pools: dict[str, Pool]) -> None:
        self.pools = pools

    async def check_health(self, timeout_s: float = 1.0) -> None:
        await asyncio.gather(*(p.check_health(timeout_s) for p in self.pools.values()))

    def get(self, name: str) -> Pool:
        pool = self.pools.get(name)
        if pool is None:
            raise ServerUnavailable(f"no pool named {name!r}")
        return pool

    def update(self, name: str, endpoints: Iterable[EndpointSettings]) -> None:
        self.get(name).set_endpoints(endpoints)

    async def close(self) -> None:
        await asyncio.gather(*(p.close() for p in self.pools.values()))
