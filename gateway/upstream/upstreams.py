"""The one implementation of ``Upstream``: named pools, the model -> pool routing, the
gRPC client and the HTTP pass-through client; and ``build_upstreams``, where they are
built from settings."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable

from gateway.metrics import GatewayMetrics
from gateway.settings import EndpointSettings, GatewaySettings
from gateway.upstream.balancer import EjectionPolicy
from gateway.upstream.follower import EndpointFollower
from gateway.upstream.kserve import PoolClient, Transport, call_raw
from gateway.upstream.passthrough import HttpPassthrough, HttpRequest
from gateway.upstream.pools import Pool, PoolDeps, PoolRegistry
from inference.protocol.errors import ModelNotFound


class Upstreams:
    def __init__(
        self,
        pools: PoolRegistry,
        models: dict[str, tuple[str, ...]],
        follower: EndpointFollower | None = None,
        follow_wait_s: float = 0.0,
        transports: dict[str, Transport] | None = None,
    ) -> None:
        self.pools = pools
        self._models = models  # pool name -> the models it serves
        self._transports = transports or {}  # pool name -> its pipelines' transport
        self._http = HttpPassthrough()
        self._follower = follower
        self._follow_wait_s = follow_wait_s

    def pool_for_model(self, model: str) -> str:
        for name, served in self._models.items():
            if model in served:
                return name
        if len(self._models) == 1:
            return next(iter(self._models))
        raise ModelNotFound(f"no pool serves model {model!r}")

    def client(self, pool: str) -> PoolClient:
        return PoolClient(self.pools, pool, self._http, self._transports.get(pool, "grpc"))

    async def infer_raw(
        self, model: str, method_path: str, request: bytes, deadline: float
    ) -> bytes:
        pool = self.pools.get(self.pool_for_model(model))
        return await call_raw(pool, method_path, request, deadline)

    async def http(self, model: str, request: HttpRequest, deadline: float):
        pool = self.pools.get(self.pool_for_model(model))
        return await self._http.forward(pool, request, deadline)

    def ready(self) -> dict[str, int]:
        return {name: pool.ready_endpoints() for name, pool in self.pools.pools.items()}

    def update(self, pool: str, endpoints: Iterable[EndpointSettings]) -> None:
        self.pools.update(pool, endpoints)

    async def start(self) -> None:
        await self._http.start()
        if self._follower is not None:
            await self._follower.start(self._follow_wait_s)

    async def check_health(self) -> None:
        await self.pools.check_health()

    async def close(self) -> None:
        if self._follower is not None:
            await self._follower.close()
        await self.pools.close()
        await self._http.close()


def build_upstreams(
    settings: GatewaySettings,
    metrics: GatewayMetrics,
    clock: Callable[[], float] = time.monotonic,
    rng: random.Random | None = None,
) -> Upstreams:
    deps = PoolDeps(
        metrics=metrics,
        clock=clock,
        rng=rng or random.Random(),
        policy=EjectionPolicy(
            settings.eject_after_failures, settings.eject_base_s, settings.eject_max_s
        ),
        budget_ratio=settings.retry_budget_ratio,
        budget_min_per_s=settings.retry_budget_min_per_s,
        hedge_after_s=settings.hedge_after_ms / 1000 if settings.hedge_after_ms else None,
    )
    pools = PoolRegistry({n: Pool(n, p.endpoints, deps) for n, p in settings.pools.items()})
    models = {n: tuple(p.models) for n, p in settings.pools.items()}
    transports = {n: p.transport for n, p in settings.pools.items()}
    follower = None
    if settings.xds:
        node = settings.xds_node_id
        follower = EndpointFollower(settings.xds, settings.pools, pools.update, node)
    return Upstreams(pools, models, follower, settings.xds_wait_s, transports)
