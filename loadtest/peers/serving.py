"""What every naive peer shares: its command line and its loopback server (aiohttp on
uvloop, the ready file the launcher waits for), so each peer is only its handler."""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path

import uvloop
from aiohttp import web

from servicekit.ready import ReadyState, write_ready


def peer_arguments(description: str, threads: int = 1) -> argparse.ArgumentParser:
    """``--repository``, ``--threads`` (torch intra-op), ``--port``, ``--ready-file``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=threads, help="torch intra-op threads")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ready-file", type=Path, help="write the ready state here")
    return parser


def serve(app: web.Application, name: str, port: int, ready_file: Path | None) -> None:
    """Serve ``app`` on 127.0.0.1:``port`` until killed; say so and write the ready file."""

    async def run() -> None:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        bound = runner.addresses[0][1]
        print(f"{name}: listening http=127.0.0.1:{bound}", flush=True)
        state = ReadyState(
            name.replace(" ", "-"), os.getpid(), "ready", "127.0.0.1", {"http": bound}
        )
        write_ready(ready_file, state)
        await asyncio.Event().wait()  # until killed

    uvloop.run(run())
