"""Run an inference pod in the foreground until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys

import uvloop

from inference.repository.errors import RepositoryError
from inference.server import InferenceServer, describe_ports
from inference.settings import InferenceSettings

log = logging.getLogger("tenfold.inference")


async def serve(settings: InferenceSettings) -> int:
    """Serve until a signal; the exit code (0 clean, 1 when models could not load)."""
    server = InferenceServer(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        ports = await server.start_listeners()
    except OSError as exc:
        print(f"tenfold inference: cannot listen: {exc}", file=sys.stderr, flush=True)
        await server.close()
        return 1
    print(describe_ports(settings.host, ports), flush=True)
    loading = asyncio.create_task(server.load_models())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({loading, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if not loading.done():
        loading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loading
        await server.close()
        return 0
    try:
        loading.result()
    except (RepositoryError, FileNotFoundError) as exc:
        print(f"tenfold inference: cannot start: {exc}", file=sys.stderr, flush=True)
        stopping.cancel()
        await server.close()
        return 1
    failed = server.dataplane.failed_models()
    for name, reason in failed.items():
        print(
            f"tenfold inference: model '{name}' NOT served: {reason}", file=sys.stderr, flush=True
        )
    served = sorted({v.spec.name for v in server.dataplane.served_versions()})
    print(f"tenfold inference: ready, serving {', '.join(served) or 'no models'}", flush=True)
    await stopping
    print("tenfold inference: draining", flush=True)
    await server.drain()
    print("tenfold inference: stopped", flush=True)
    return 0


def run(settings: InferenceSettings) -> int:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(serve(settings))
