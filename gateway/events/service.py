"""``tenfold events process`` as a servicekit service: connect to Redis and join the
consumer group, serve ``/metrics`` and ``/healthz``, process until SIGTERM, then finish
the batch in hand and stop (what it had not acknowledged is redelivered)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import generate_latest
from redis.exceptions import RedisError

from gateway.events.keys import Keys
from gateway.events.processor import Processor, ProcessorMetrics, ProcessorOptions
from gateway.events.settings import StateSettings
from gateway.events.store import connect
from servicekit.runloop import StartError


@dataclass(frozen=True)
class ProcessorConfig:
    redis_url: str
    prefix: str
    options: ProcessorOptions
    state: StateSettings
    host: str = "127.0.0.1"
    metrics_port: int = 0


class ProcessorService:
    def __init__(self, config: ProcessorConfig) -> None:
        self.config = config
        self.metrics = ProcessorMetrics()
        self.redis = connect(config.redis_url)
        self.processor = Processor(
            self.redis, Keys(config.prefix), config.state, config.options, self.metrics
        )
        self._stop = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._runner: web.AppRunner | None = None

    @property
    def host(self) -> str:
        return self.config.host

    async def start(self) -> Mapping[str, int]:
        try:
            await self.redis.ping()
            await self.processor.ensure_group()
        except (RedisError, OSError) as exc:
            raise StartError(f"event log at {self.config.redis_url}: {exc}") from None
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, self.host, self.config.metrics_port).start()
        except OSError as exc:
            raise StartError(f"metrics port {self.config.metrics_port}: {exc}") from None
        return {"metrics": self._runner.addresses[0][1]}

    def listening(self, ports: Mapping[str, int]) -> str:
        return f"metrics http://{self.host}:{ports['metrics']}/metrics"

    async def prepare(self) -> str:
        self._task = asyncio.create_task(self.processor.run(self._stop))
        o = self.config.options
        return (
            f"processing {self.processor.keys.stream} as {o.consumer!r} "
            f"(group processors, batches of {o.batch})"
        )

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, content_type="text/plain", charset="utf-8")

    async def _healthz(self, request: web.Request) -> web.Response:
        running = self._task is not None and not self._task.done()
        return web.json_response({"live": running}, status=200 if running else 503)

    async def drain(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task
        await self.close()

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
        await self.redis.aclose()
