"""A deliberately slow feed server on loopback: one request at a time, each taking
``service_s``, so its capacity is ``1 / service_s`` requests a second. Runs its own
event loop in a thread, so blocking code (the load runner) can drive it."""

from __future__ import annotations

import asyncio
import socket
import threading

from aiohttp import web


class SlowServer:
    def __init__(self, service_s: float = 0.02):
        self.service_s = service_s
        self.handled = 0
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    async def _feed(self, request: web.Request) -> web.Response:
        body = await request.json()
        async with self._lock:
            await asyncio.sleep(self.service_s)
            self.handled += 1
        start = 1000 + len(body.get("seen", []))
        items = [{"item_id": start + i, "score": 1.0, "source": "recall"} for i in range(3)]
        return web.json_response(
            {
                "items": items,
                "model_version": "1",
                "experiment": "",
                "request_id": str(self.handled),
            }
        )

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._lock = asyncio.Lock()
        app = web.Application()
        app.router.add_post("/v1/feed", self._feed)
        self._runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(self._runner.setup())
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self._loop.run_until_complete(web.SockSite(self._runner, sock).start())
        self._ready.set()
        self._loop.run_forever()

    def __enter__(self) -> SlowServer:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"
