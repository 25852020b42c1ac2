"""Run the gateway in the foreground: one worker in this process, or a supervisor with
N worker processes sharing the ports (SO_REUSEPORT). SIGTERM/SIGINT drains."""

from __future__ import annotations

import asyncio
import gc
import logging
import multiprocessing
import os
import signal
import sys
import tempfile

import uvloop

from gateway.server import GatewayServer, build_core
from gateway.settings import GatewaySettings

log = logging.getLogger("tenfold.gateway")


def _say(text: str) -> None:
    print(f"tenfold gateway: {text}", flush=True)


async def serve(settings: GatewaySettings, ready=None) -> int:
    try:
        core = build_core(settings)
    except ValueError as exc:
        print(f"tenfold gateway: cannot start: {exc}", file=sys.stderr, flush=True)
        return 1
    server = GatewayServer(settings, core)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        ports = await server.start()
    except (OSError, RuntimeError) as exc:
        print(f"tenfold gateway: cannot listen: {exc}", file=sys.stderr, flush=True)
        await server.close()
        return 1
    # everything built so far lives as long as the process: keep it out of the
    # collector's generations so full collections stay short under load
    gc.collect()
    gc.freeze()
    if ready is not None:
        ready.put((os.getpid(), ports.http, ports.grpc))
    else:
        _announce(settings, server.host, ports.http, ports.grpc)
    await stop.wait()
    await server.drain()
    if ready is None:
        _say("stopped")
    return 0


def _announce(settings: GatewaySettings, host: str, http: int, grpc: int) -> None:
    if settings.loopback_only:
        _say("no API keys configured: listening on loopback only (127.0.0.1)")
    _say(f"listening http={host}:{http} grpc={host}:{grpc} workers={settings.workers}")
    pools = ", ".join(f"{n} ({len(p.endpoints)} endpoints)" for n, p in settings.pools.items())
    _say(f"ready, pools: {pools or 'none'}")


def _logging(settings: GatewaySettings) -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def _worker(settings_json: str, ready) -> None:
    settings = GatewaySettings.model_validate_json(settings_json)
    _logging(settings)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor forwards SIGTERM
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        code = runner.run(serve(settings, ready))
    sys.exit(code)


def _supervise(settings: GatewaySettings) -> int:
    if settings.port == 0 or settings.grpc_port == 0:
        print(
            "tenfold gateway: --workers > 1 needs fixed ports (not 0)", file=sys.stderr, flush=True
        )
        return 1
    metrics_dir = tempfile.mkdtemp(prefix="tenfold-gateway-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # before the workers start
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=(settings.model_dump_json(), ready), daemon=False)
        for _ in range(settings.workers)
    ]
    for proc in procs:
        proc.start()
    stopping = False

    def stop(signum, frame) -> None:
        nonlocal stopping
        stopping = True
        for proc in procs:
            if proc.is_alive():
                proc.terminate()  # SIGTERM: each worker drains

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    started = 0
    while started < len(procs):
        try:
            _, http, grpc = ready.get(timeout=0.5)
            started += 1
        except Exception:
            if stopping or any(p.exitcode not in (None, 0) for p in procs):
                stop(None, None)
                for proc in procs:
                    proc.join()
                return 1
    host = "127.0.0.1" if settings.loopback_only else settings.host
    _announce(settings, host, http, grpc)
    for proc in procs:
        proc.join()
    _say("stopped")
    return 0 if all(p.exitcode == 0 for p in procs) else 1


def run(settings: GatewaySettings) -> int:
    if settings.workers > 1:
        return _supervise(settings)
    _logging(settings)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(serve(settings))
