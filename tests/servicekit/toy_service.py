"""A minimal service on servicekit's run loop, for the launcher and supervisor tests:
``python -m tests.servicekit.toy_service [--fail-start] [--slow-prepare S] --ready-file F``.
GET / answers its pid."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated

import typer
from aiohttp import web

from servicekit.runloop import RunOptions, StartError, run


class Toy:
    def __init__(self, fail_start: bool, slow_prepare_s: float) -> None:
        self.fail_start = fail_start
        self.slow_prepare_s = slow_prepare_s
        self.runner: web.AppRunner | None = None
        self.host = "127.0.0.1"

    async def start(self) -> Mapping[str, int]:
        if self.fail_start:
            raise StartError("told to fail")

        async def pid(_: web.Request) -> web.Response:
            return web.Response(text=str(os.getpid()))

        app = web.Application()
        app.router.add_get("/", pid)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, self.host, 0).start()
        return {"http": self.runner.addresses[0][1]}

    def listening(self, ports: Mapping[str, int]) -> str:
        return f"listening http={ports['http']}"

    async def prepare(self) -> str:
        await asyncio.sleep(self.slow_prepare_s)
        return "ready"

    async def drain(self) -> None:
        await self.close()

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


def main(
    ready_file: Annotated[Path, typer.Option()],
    fail_start: bool = False,
    slow_prepare: float = 0.0,
) -> None:
    raise typer.Exit(run("toy", lambda: Toy(fail_start, slow_prepare), RunOptions(ready_file)))


if __name__ == "__main__":
    typer.run(main)
