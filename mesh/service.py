"""The control plane as a servicekit ``Service``: the ADS gRPC server and the admin
HTTP API over one endpoint store and snapshot cache, built in one place."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc
from aiohttp import web

from mesh.admin import create_admin_app, create_metrics_app
from mesh.cache import SnapshotCache
from mesh.config import MeshFile
from mesh.discovery import DiscoveryServer
from mesh.metrics import MeshMetrics
from mesh.snapshot import SnapshotError
from mesh.store import EndpointStore
from servicekit.runloop import StartError

NAME = "mesh"


@dataclass(frozen=True)
class MeshSettings:
    #: the xDS (ADS) server's address; Envoy and the gateways connect here
    xds_host: str = "127.0.0.1"
    xds_port: int = 18000
    #: the admin API is on loopback only
    admin_port: int = 18001
    drain_timeout_s: float = 5.0
    #: follow the EndpointSlices of these Services (name -> pool) in this namespace
    kubernetes_namespace: str | None = None
    services: tuple[tuple[str, str], ...] = ()
    #: a listener with only /metrics and /healthz on ``xds_host`` (None = none; the
    #: admin API's /metrics on loopback is always there)
    metrics_port: int | None = None


class MeshService:
    def __init__(self, mesh: MeshFile, settings: MeshSettings, clock=time.monotonic) -> None:
        self.settings = settings
        self.metrics = MeshMetrics()
        self.cache = SnapshotCache(clock)
        try:
            self.store = EndpointStore(mesh.config(), self.cache)
            for pool, members in mesh.endpoints.items():
                self.store.set_endpoints(pool, members)
        except SnapshotError as exc:
            raise StartError(f"mesh config gives an inconsistent snapshot: {exc}") from None
        for pool, members in self.store.endpoints().items():
            self.metrics.endpoints.labels(pool).set(len(members))
        self.metrics.snapshots.inc(self.cache.published)
        self.store.subscribe(lambda pool, members: self.metrics.snapshots.inc())
        self.discovery = DiscoveryServer(self.cache, self.metrics, clock)
        self._grpc: grpc.aio.Server | None = None
        self._runner: web.AppRunner | None = None
        self._metrics_runner: web.AppRunner | None = None
        self._watch: asyncio.Task | None = None
        for service, pool in settings.services:
            if pool not in mesh.pools:
                raise StartError(f"--service {service}={pool}: no pool named {pool!r}")

    @property
    def host(self) -> str:
        return self.settings.xds_host

    async def start(self) -> Mapping[str, int]:
        options = [("grpc.max_send_message_length", 64 << 20), ("grpc.so_reuseport", 0)]
        self._grpc = grpc.aio.server(options=options)
        self.discovery.add_to(self._grpc)
        address = f"{self.settings.xds_host}:{self.settings.xds_port}"
        try:
            xds_port = self._grpc.add_insecure_port(address)
        except RuntimeError as exc:
            raise StartError(f"cannot listen on {address}: {exc}") from None
        await self._grpc.start()
        self._runner = web.AppRunner(
            create_admin_app(self.store, self.metrics, self.discovery.nodes),
            access_log=None,
            handle_signals=False,
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.settings.admin_port)
        try:
            await site.start()
        except OSError as exc:
            where = f"127.0.0.1:{self.settings.admin_port}"
            raise StartError(f"cannot listen on {where}: {exc}") from None
        admin_port = self._runner.addresses[0][1]
        ports = {"grpc": xds_port, "http": admin_port}
        if self.settings.metrics_port is not None:
            self._metrics_runner = web.AppRunner(
                create_metrics_app(self.metrics), access_log=None, handle_signals=False
            )
            await self._metrics_runner.setup()
            host, port = self.settings.xds_host, self.settings.metrics_port
            try:
                await web.TCPSite(self._metrics_runner, host, port).start()
            except OSError as exc:
                raise StartError(f"cannot listen on {host}:{port}: {exc}") from None
            ports["metrics"] = self._metrics_runner.addresses[0][1]
        return ports

    def listening(self, ports: Mapping[str, int]) -> str:
        line = f"listening xds={self.host}:{ports['grpc']} admin=127.0.0.1:{ports['http']}"
        if "metrics" in ports:
            line += f" metrics={self.host}:{ports['metrics']}"
        return line

    async def prepare(self) -> str:
        if self.settings.kubernetes_namespace:
            from mesh.kubernetes import SliceTracker, watch_slices

            tracker = SliceTracker(dict(self.settings.services))
            self._watch = asyncio.create_task(
                watch_slices(self.store, self.settings.kubernetes_namespace, tracker)
            )
        sizes = ", ".join(f"{p} ({len(e)})" for p, e in self.store.endpoints().items())
        return f"ready, snapshot {self.store.version}, pools: {sizes}"

    async def _stop_watch(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch

    async def _stop_http(self) -> None:
        for runner in (self._runner, self._metrics_runner):
            if runner is not None:
                await runner.cleanup()

    async def drain(self) -> None:
        await self._stop_watch()
        await self._stop_http()
        if self._grpc is not None:
            await self._grpc.stop(self.settings.drain_timeout_s)

    async def close(self) -> None:
        await self._stop_watch()
        await self._stop_http()
        if self._grpc is not None:
            await self._grpc.stop(0)


def run_mesh(mesh: MeshFile, settings: MeshSettings, ready_file: Path | None) -> int:
    from servicekit.logs import setup_logging
    from servicekit.runloop import RunOptions, run

    setup_logging()
    return run(NAME, lambda: MeshService(mesh, settings), RunOptions(ready_file))
