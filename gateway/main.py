"""Run the gateway in the foreground: one worker in this process, or a supervisor with
N worker processes sharing the ports (SO_REUSEPORT) that restarts a worker that dies.
SIGTERM/SIGINT drains. The loop, the ready file and the supervisor are servicekit's."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path

from gateway.server import GatewayServer, build_core
from gateway.settings import GatewaySettings
from servicekit.launcher import LaunchError
from servicekit.logs import say, setup_logging
from servicekit.ready import ReadyState, write_ready
from servicekit.runloop import RunOptions, StartError, run
from servicekit.supervisor import Supervisor

NAME = "gateway"


class GatewayService:
    """One gateway worker as a servicekit ``Service``."""

    def __init__(self, settings: GatewaySettings) -> None:
        try:
            core = build_core(settings)
        except ValueError as exc:
            raise StartError(str(exc)) from None
        self.settings = settings
        self.server = GatewayServer(settings, core)

    @property
    def host(self) -> str:
        return self.server.host

    async def start(self) -> Mapping[str, int]:
        try:
            ports = await self.server.start()
        except (OSError, RuntimeError) as exc:
            raise StartError(f"cannot listen: {exc}") from None
        bound = {"http": ports.http, "grpc": ports.grpc}
        if ports.metrics is not None:
            bound["metrics"] = ports.metrics
        return bound

    def listening(self, ports: Mapping[str, int]) -> str:
        return listening_line(self.settings, self.host, ports)

    async def prepare(self) -> str:
        return ready_line(self.settings)

    async def drain(self) -> None:
        await self.server.drain()

    async def close(self) -> None:
        await self.server.close()


def listening_line(settings: GatewaySettings, host: str, ports: Mapping[str, int]) -> str:
    line = f"listening http={host}:{ports['http']} grpc={host}:{ports['grpc']}"
    if "metrics" in ports:
        line += f" metrics={host}:{ports['metrics']}"
    return f"{line} workers={settings.workers}"


def ready_line(settings: GatewaySettings) -> str:
    if settings.events.redis_url:
        events = f"events and user state in {settings.events.redis_url}"
    else:
        events = "no event store (events.redis_url): the feed is stateless"
    if settings.xds:
        return (
            f"ready, pools {', '.join(settings.pools) or 'none'} follow the mesh at "
            f"{settings.xds}; {events}"
        )
    pools = ", ".join(f"{n} ({len(p.endpoints)} endpoints)" for n, p in settings.pools.items())
    return f"ready, pools: {pools or 'none'}; {events}"


def _loopback_notice(settings: GatewaySettings) -> None:
    if settings.loopback_only:
        say(NAME, "no API keys configured: listening on loopback only (127.0.0.1)")


def run_worker(settings: GatewaySettings, ready_file: Path | None) -> int:
    """One supervised worker: no status lines, SIGINT left to the supervisor."""
    setup_logging()
    options = RunOptions(ready_file, announce=False, signals=(signal.SIGTERM,))
    return run(NAME, lambda: GatewayService(settings), options)


def _supervise(settings: GatewaySettings, ready_file: Path | None) -> int:
    if settings.port == 0 or settings.grpc_port == 0:
        say(NAME, "--workers > 1 needs fixed ports (not 0)", error=True)
        return 1
    from prometheus_client import multiprocess

    work = Path(tempfile.mkdtemp(prefix="tenfold-gateway-"))
    metrics_dir = work / "metrics"
    metrics_dir.mkdir()
    settings_file = work / "settings.json"
    settings_file.write_text(settings.model_dump_json(), encoding="utf-8")
    supervisor = Supervisor(
        NAME,
        [sys.executable, "-m", "gateway.worker", str(settings_file)],
        settings.workers,
        env={"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)},
        on_exit=lambda pid: multiprocess.mark_process_dead(pid, str(metrics_dir)),
        stop_timeout_s=settings.drain_timeout_s + 10,
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        try:
            ports = supervisor.start()
        except LaunchError as exc:
            say(NAME, f"cannot start: {exc}", error=True)
            return 1
        host = settings.bind_host
        _loopback_notice(settings)
        say(NAME, listening_line(settings, host, ports))
        write_ready(ready_file, ReadyState(NAME, os.getpid(), "ready", host, ports))
        say(NAME, ready_line(settings))
        code = supervisor.supervise(stop)
        say(NAME, "stopped")
        return code
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_gateway(settings: GatewaySettings, ready_file: Path | None = None) -> int:
    if settings.workers > 1:
        return _supervise(settings, ready_file)
    setup_logging()
    _loopback_notice(settings)
    return run(NAME, lambda: GatewayService(settings), RunOptions(ready_file))
