"""An inference pod: its listeners, its models, and its start/drain/stop lifecycle.

Start: listeners come up first (live, not ready), then every model loads and runs one
warm-up inference, then the pod is ready. Stop (SIGTERM): ready turns false while the
pod still serves for ``drain_grace_s``, then new requests are refused (503/UNAVAILABLE),
in-flight ones finish within ``drain_timeout_s``, then the listeners close.
"""

from __future__ import annotations

import asyncio
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

import grpc
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from inference.dataplane import DataPlane, ServedVersion
from inference.grpc.servicer import InferenceServicer
from inference.http.app import create_app
from inference.metrics import InferenceMetrics
from inference.repository.errors import RepositoryError
from inference.repository.loader import LoadedVersion, load_model, model_dirs
from inference.runtime.batcher import DynamicBatcher
from inference.runtime.cpu import CpuBudget
from inference.runtime.onnx_model import OnnxModel, SessionSettings
from inference.settings import InferenceSettings
from inference.warmup import warmup_inputs
from servicekit import kserve_grpc

log = logging.getLogger("tenfold.inference")

#: after in-flight work is done, how long the gRPC server gives calls still arriving
LISTENER_CLOSE_S = 1.0


def _server_version() -> str:
    try:
        return version("tenfold")
    except PackageNotFoundError:  # running from a source tree
        return "0+unknown"


@dataclass(frozen=True, slots=True)
class BoundPorts:
    http: int
    grpc: int
    metrics: int


class InferenceServer:
    def __init__(self, settings: InferenceSettings, metrics: InferenceMetrics | None = None):
        self.settings = settings
        self.metrics = metrics or InferenceMetrics()
        self.dataplane = DataPlane(self.metrics, _server_version())
        self._http_runner: web.AppRunner | None = None
        self._metrics_runner: web.AppRunner | None = None
        self._grpc: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self._executor: ThreadPoolExecutor | None = None
        self._batchers: list[DynamicBatcher] = []
        #: the CPU quota and overhead the batchers judge their pace by (one per pod)
        self._cpu = CpuBudget()
        self.ports: BoundPorts | None = None

    # -- start -------------------------------------------------------------------------
    async def start_listeners(self) -> BoundPorts:
        s = self.settings
        http_app = create_app(self.dataplane, max_request_bytes=s.max_request_bytes)
        self._http_runner = web.AppRunner(
            http_app, shutdown_timeout=s.drain_timeout_s, access_log=None
        )
        await self._http_runner.setup()
        http_site = web.TCPSite(self._http_runner, s.host, s.http_port, reuse_port=False)
        await http_site.start()
        http_port = self._http_runner.addresses[0][1]

        self._metrics_runner = web.AppRunner(self._metrics_app(), access_log=None)
        await self._metrics_runner.setup()
        await web.TCPSite(self._metrics_runner, s.host, s.metrics_port).start()
        metrics_port = self._metrics_runner.addresses[0][1]

        options = [
            ("grpc.max_receive_message_length", s.max_request_bytes),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 0),
        ]
        self._grpc = grpc.aio.server(options=options)
        self._grpc.add_generic_rpc_handlers(
            [kserve_grpc.generic_handler(InferenceServicer(self.dataplane))]
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._grpc)
        await self._health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        await self._health.set(kserve_grpc.SERVICE_NAME, health_pb2.HealthCheckResponse.NOT_SERVING)
        reflection.enable_server_reflection(
            [kserve_grpc.SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME],
            self._grpc,
            pool=kserve_grpc.reflection_pool(),
        )
        grpc_port = self._grpc.add_insecure_port(f"{s.host}:{s.grpc_port}")
        await self._grpc.start()
        self.ports = BoundPorts(http=http_port, grpc=grpc_port, metrics=metrics_port)
        return self.ports

    def _metrics_app(self) -> web.Application:
        async def metrics(_: web.Request) -> web.Response:
            body = generate_latest(self.metrics.registry)
            return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        return app

    async def load_models(self) -> None:
        """Load, warm up and publish every model; raises RepositoryError when strict."""
        s = self.settings
        session_settings = SessionSettings(
            intra_op_threads=s.intra_op_threads,
            graph_optimization=s.graph_optimization,
            allow_spinning=s.allow_spinning,
            memory_pattern=s.memory_pattern,
        )
        loop = asyncio.get_running_loop()
        loaded: list[LoadedVersion] = []
        dirs = list(model_dirs(s.model_repository))
        if s.load_models:
            names = {d.name for d in dirs}
            missing = [m for m in s.load_models if m not in names]
            if missing:
                raise RepositoryError(
                    missing[0], f"--load-model: no such model in {s.model_repository}"
                )
            dirs = [d for d in dirs if d.name in s.load_models]
        for model_dir in dirs:
            try:
                loaded += await loop.run_in_executor(
                    None, load_model, model_dir, session_settings, s.default_max_batch_size
                )
            except RepositoryError as exc:
                if s.strict_model_load:
                    raise
                log.error("not serving %s", exc)
                self.dataplane.add_failed(exc.model, exc.problem)
        instances = sum(v.spec.instance_count for v in loaded) or 1
        self._executor = ThreadPoolExecutor(instances, thread_name_prefix="ort")
        for item in loaded:
            try:
                await self._publish(item)
            except RepositoryError as exc:
                if s.strict_model_load:
                    raise
                log.error("not serving %s", exc)
                self.dataplane.add_failed(exc.model, exc.problem)
        self.dataplane.finish_loading()
        await self._health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self._health.set(kserve_grpc.SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)

    async def _publish(self, item: LoadedVersion) -> None:
        spec, version = item.spec, str(item.version)
        model = OnnxModel(spec, item.sessions, self._executor)
        feed, rows = warmup_inputs(spec)
        try:
            warm = await model.execute([feed], [rows])
        except Exception as exc:
            raise RepositoryError(
                spec.name, f"version {version}: warm-up inference failed: {exc}"
            ) from None
        observer = self.metrics.observer(spec.name, version)
        batcher = DynamicBatcher(
            execute=model.execute,
            instances=spec.instance_count,
            max_batch_size=spec.max_batch_size,
            policy=spec.batching,
            queue_cap=self.settings.max_queue_size,
            observer=observer,
            budget=self._cpu,
        )
        batcher.seed(rows, warm)
        batcher.start()
        self._batchers.append(batcher)
        served = ServedVersion(spec, version, batcher, observer)
        self.dataplane.add_version(served)
        self.dataplane.mark_ready(served)
        log.info("model %s version %s ready", spec.name, version)

    # -- stop --------------------------------------------------------------------------
    async def drain(self) -> None:
        """Not ready but serving for ``drain_grace_s``; then new inferences are refused
        UNAVAILABLE (retry elsewhere) while in-flight ones finish (at most
        ``drain_timeout_s``); only then do the listeners close, so no call on an open
        connection meets a closing server (grpc core would answer it CANCELLED)."""
        s = self.settings
        self.dataplane.begin_drain()
        await self._health.enter_graceful_shutdown()
        if s.drain_grace_s > 0:
            log.info("draining: not ready, serving %.1f s more", s.drain_grace_s)
            await asyncio.sleep(s.drain_grace_s)
        self.dataplane.refuse_new()
        if not await self.dataplane.wait_idle(s.drain_timeout_s):
            log.warning(
                "%d requests still in flight after %.0fs",
                self.dataplane.in_flight,
                s.drain_timeout_s,
            )
        steps = []
        if self._grpc is not None:
            steps.append(self._grpc.stop(grace=LISTENER_CLOSE_S))
        if self._http_runner is not None:
            steps.append(self._http_runner.cleanup())
        await asyncio.gather(*steps)
        await self.close()

    async def close(self) -> None:
        for batcher in self._batchers:
            await batcher.stop()
        if self._grpc is not None:
            await self._grpc.stop(grace=None)
        if self._http_runner is not None:
            await self._http_runner.cleanup()
        if self._metrics_runner is not None:
            await self._metrics_runner.cleanup()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)


def describe_ports(host: str, ports: BoundPorts) -> str:
    return (
        f"listening http={ports.http} grpc={ports.grpc} "
        f"metrics={ports.metrics} (host {host}, pid {os.getpid()})"
    )
