"""The one serve loop of every service, on uvloop.

Order: ``start()`` binds the listeners (the service is live, not ready) → the ready
file says ``listening`` → ``prepare()`` (load models, check pools) → the collector's
generations are frozen (what start-up built lives as long as the process) → ``ready``
→ wait for SIGTERM/SIGINT → ``draining`` → ``drain()`` (stop accepting, finish
in-flight, then close) → exit 0. A ``StartError`` at either step exits 1 with its
message; a signal during ``prepare()`` cancels it and exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import uvloop

from servicekit.logs import say
from servicekit.ready import ReadyState, write_ready


class StartError(Exception):
    """The service cannot start; the message says why (printed, exit code 1)."""


class Service(Protocol):
    async def start(self) -> Mapping[str, int]:
        """Bind the listeners; the bound ports by name. Raise StartError on failure."""

    def listening(self, ports: Mapping[str, int]) -> str:
        """The status line printed once the listeners are up."""

    @property
    def host(self) -> str:
        """The address the listeners are bound to."""

    async def prepare(self) -> str:
        """Get ready to serve (load models...); the status line for 'ready'."""

    async def drain(self) -> None:
        """Stop accepting, let in-flight work finish (bounded), close everything."""

    async def close(self) -> None:
        """Close at once (start-up failed or was interrupted)."""


@dataclass(frozen=True)
class RunOptions:
    ready_file: Path | None = None
    #: print status lines (a supervised worker leaves that to its supervisor)
    announce: bool = True
    #: the signals that start the drain (a supervised worker ignores SIGINT: its
    #: supervisor gets Ctrl-C and forwards SIGTERM)
    signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)


async def serve(name: str, service: Service, options: RunOptions = RunOptions()) -> int:
    """Run ``service`` until a signal; the process exit code. ``name`` is the one in
    status lines (``tenfold <name>: ...``) and in the ready file."""

    def status(state: str, ports: Mapping[str, int]) -> None:
        write_ready(options.ready_file, ReadyState(name, os.getpid(), state, service.host, ports))

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    if signal.SIGINT not in options.signals:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    for sig in options.signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        ports = await service.start()
    except StartError as exc:
        say(name, f"cannot start: {exc}", error=True)
        await service.close()
        return 1
    if options.announce:
        say(name, service.listening(ports))
    status("listening", ports)

    preparing = asyncio.create_task(service.prepare())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({preparing, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if not preparing.done():
        preparing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await preparing
        await service.close()
        return 0
    try:
        ready_text = preparing.result()
    except StartError as exc:
        say(name, f"cannot start: {exc}", error=True)
        stopping.cancel()
        await service.close()
        return 1
    gc.collect()
    gc.freeze()
    status("ready", ports)
    if options.announce:
        say(name, ready_text)
    await stopping
    status("draining", ports)
    if options.announce:
        say(name, "draining")
    await service.drain()
    if options.announce:
        say(name, "stopped")
    return 0


def run(name: str, make_service: Callable[[], Service], options: RunOptions = RunOptions()) -> int:
    """Build the service inside the loop (``make_service`` may raise StartError) and
    serve it on uvloop."""

    async def main() -> int:
        try:
            service = make_service()
        except StartError as exc:
            say(name, f"cannot start: {exc}", error=True)
            return 1
        return await serve(name, service, options)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main())
