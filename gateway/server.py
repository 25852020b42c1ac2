"""Wiring and lifecycle of one gateway worker: build everything in one place, start
the HTTP and gRPC listeners, check pool health in the background, drain on stop."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import grpc
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from gateway.core import CoreDeps, GatewayCore
from gateway.effects import EffectsPipeline
from gateway.events.store import EventStore
from gateway.feed import FeedAssets, FeedPipeline
from gateway.grpc.servicer import (
    EffectsServicer,
    EventsServicer,
    FeedServicer,
    kserve_passthrough,
    parsing_handler,
)
from gateway.http.app import create_app, create_metrics_app
from gateway.metrics import GatewayMetrics
from gateway.settings import GatewaySettings
from gateway.upstream.upstreams import build_upstreams
from inference.protocol.errors import TenfoldError
from protos.tenfold.v1 import gateway_pb2
from servicekit import kserve_grpc

log = logging.getLogger("tenfold.gateway")
HEALTH_INTERVAL_S = 1.0
#: how long the rest of an unread body is read and dropped after an early answer
#: (413, 408...) before the connection closes (aiohttp's default is 10 s)
LINGERING_S = 2.0
#: after the listeners close, how long connections accepted just before have for their
#: request to arrive before idle connections are closed
ACCEPTED_SETTLE_S = 0.2
_SERVICES = (
    "tenfold.v1.Feed",
    "tenfold.v1.Effects",
    "tenfold.v1.Events",
    kserve_grpc.SERVICE_NAME,
)


@dataclass(frozen=True)
class BoundPorts:
    http: int
    grpc: int
    metrics: int | None = None


def build_core(settings: GatewaySettings, metrics: GatewayMetrics | None = None) -> GatewayCore:
    """Everything the core needs, built from settings (the one wiring place)."""
    metrics = metrics or GatewayMetrics()
    upstream = build_upstreams(settings, metrics)
    feed = None
    if settings.feed.assets_dir is not None and settings.feed_pool in settings.pools:
        assets = FeedAssets.load(settings.feed.assets_dir)
        feed = FeedPipeline(settings.feed, assets, upstream.client(settings.feed_pool))
    effects = EffectsPipeline(
        settings.effects,
        upstream.client(settings.effects_pool),
        settings.max_image_pixels,
        settings.image_threads,
    )
    events = EventStore(settings.events) if settings.events.redis_url else None
    return GatewayCore(CoreDeps(settings, upstream, feed, effects, metrics, events))


class GatewayServer:
    def __init__(self, settings: GatewaySettings, core: GatewayCore) -> None:
        self.settings = settings
        self.core = core
        self._runner: web.AppRunner | None = None
        self._metrics: web.AppRunner | None = None
        self._grpc: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self._checker: asyncio.Task | None = None
        self._trending: asyncio.Task | None = None
        self.ports: BoundPorts | None = None

    @property
    def host(self) -> str:
        return self.settings.bind_host

    async def start(self) -> BoundPorts:
        s = self.settings
        reuse = s.workers > 1
        await self.core.upstream.start()
        self._runner = web.AppRunner(
            create_app(self.core),
            access_log=None,
            shutdown_timeout=s.drain_timeout_s,
            lingering_time=LINGERING_S,
            # request bodies are never inflated (a gzip bomb would stall the loop):
            # a compressed body is answered 415 (gateway/http/app.py)
            auto_decompress=False,
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, s.port, reuse_port=reuse, backlog=2048)
        await site.start()
        http_port = self._runner.addresses[0][1]
        metrics_port = None
        if s.metrics_port is not None:
            self._metrics = web.AppRunner(create_metrics_app(self.core), access_log=None)
            await self._metrics.setup()
            where = web.TCPSite(self._metrics, self.host, s.metrics_port, reuse_port=reuse)
            await where.start()
            metrics_port = self._metrics.addresses[0][1]

        options = [
            ("grpc.so_reuseport", 1 if reuse else 0),
            ("grpc.max_receive_message_length", s.max_body_bytes),
            ("grpc.max_send_message_length", -1),
        ]
        self._grpc = grpc.aio.server(options=options)
        self._grpc.add_generic_rpc_handlers(
            [
                parsing_handler("Feed", FeedServicer(self.core)),
                parsing_handler("Effects", EffectsServicer(self.core)),
                parsing_handler("Events", EventsServicer(self.core)),
                kserve_passthrough(self.core),
            ]
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._grpc)
        names = [
            gateway_pb2.DESCRIPTOR.services_by_name["Feed"].full_name,
            gateway_pb2.DESCRIPTOR.services_by_name["Effects"].full_name,
            gateway_pb2.DESCRIPTOR.services_by_name["Events"].full_name,
            health.SERVICE_NAME,
            reflection.SERVICE_NAME,
        ]
        if s.loopback_only:  # with API keys, reflection would list services to anyone
            reflection.enable_server_reflection(names, self._grpc)
        grpc_port = self._grpc.add_insecure_port(f"{self.host}:{s.grpc_port}")
        if grpc_port == 0:
            raise OSError(f"cannot listen on {self.host}:{s.grpc_port} (gRPC)")
        await self._grpc.start()
        await self.core.upstream.check_health()
        await self._set_health()
        self._checker = asyncio.create_task(self._check_loop())
        if self.core.events is not None:
            self._trending = asyncio.create_task(self._trending_loop(self.core.events))
        self.ports = BoundPorts(http_port, grpc_port, metrics_port)
        return self.ports

    async def _set_health(self) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if self.core.is_ready()
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *_SERVICES):
            await self._health.set(name, status)

    async def _check_loop(self) -> None:
        while True:
            await asyncio.sleep(HEALTH_INTERVAL_S)
            try:
                await self.core.upstream.check_health()
                await self._set_health()
            except Exception:  # never let the checker die
                log.exception("pool health check failed")

    async def _trending_loop(self, store: EventStore) -> None:
        """Re-read the trending pool; while the store is away, keep the last one."""
        every = self.settings.events.trending_refresh_s
        while True:
            try:
                await store.refresh_trending(timeout_s=every)
            except TenfoldError as exc:
                log.debug("trending pool not refreshed: %s", exc)
            await asyncio.sleep(every)

    async def drain(self) -> None:
        """Not ready but still serving for ``drain_grace_s`` (HTTP answers carry
        ``Connection: close``), then stop accepting, let in-flight requests finish
        (at most ``drain_timeout_s``; idle keep-alive connections are closed), close."""
        timeout = self.settings.drain_timeout_s
        self.core.draining = True
        await self._health.enter_graceful_shutdown()
        if self.settings.drain_grace_s > 0:
            log.info("draining: not ready, serving %.1f s more", self.settings.drain_grace_s)
            await asyncio.sleep(self.settings.drain_grace_s)
        steps = []
        if self._grpc is not None:
            steps.append(self._grpc.stop(grace=timeout))
        if self._runner is not None:
            steps.append(self._close_http())
        await asyncio.gather(*steps)
        await self.close()

    async def _close_http(self) -> None:
        """Stop accepting; give connections accepted just before a moment for their
        request to arrive (aiohttp closes a connection with no request yet as idle,
        and its client would get no answer); then finish in-flight and close."""
        assert self._runner is not None
        for site in list(self._runner.sites):
            await site.stop()
        await asyncio.sleep(ACCEPTED_SETTLE_S)
        await self._runner.cleanup()

    async def close(self) -> None:
        for task in (self._checker, self._trending):
            if task is not None:
                task.cancel()
        if self._grpc is not None:
            await self._grpc.stop(grace=None)
        for runner in (self._runner, self._metrics):
            if runner is not None:
                await runner.cleanup()
        await self.core.upstream.close()
        self.core.effects.close()
        if self.core.events is not None:
            await self.core.events.close()
