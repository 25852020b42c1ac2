"""KServe v2 over HTTP, passed through to an endpoint's HTTP address (aiohttp client)."""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp
from aiohttp import ClientTimeout

from gateway.upstream.errors import UpstreamError, timed_out, unreachable
from gateway.upstream.pools import Endpoint, Pool
from inference.protocol.errors import ServerUnavailable

#: upstream response headers an HTTP pass-through answer keeps
PASSED_HEADERS = frozenset({"content-type", "inference-header-content-length", "retry-after"})


@dataclass(frozen=True)
class HttpRequest:
    """A KServe v2 HTTP request to pass through as it came (path with its query)."""

    method: str
    path: str
    body: bytes
    headers: dict[str, str]


class HttpPassthrough:
    """One client session (persistent connections) for every pool's HTTP addresses."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, enable_cleanup_closed=True)
        )

    @property
    def session(self) -> aiohttp.ClientSession:
        """The shared client session (ServerUnavailable before ``start``)."""
        if self._session is None:
            raise ServerUnavailable("the HTTP client is not started")
        return self._session

    async def forward(
        self, pool: Pool, request: HttpRequest, deadline: float
    ) -> tuple[int, dict[str, str], bytes]:
        """The endpoint's (status, kept headers, body)."""
        session = self.session

        async def attempt(endpoint: Endpoint, timeout_s: float):
            if not endpoint.settings.http:
                raise UpstreamError(ServerUnavailable("endpoint has no HTTP address"), True, False)
            url = f"http://{endpoint.settings.http}{request.path}"
            timeout = ClientTimeout(total=timeout_s)
            try:
                async with session.request(
                    request.method, url, data=request.body, headers=request.headers, timeout=timeout
                ) as resp:
                    data = await resp.read()
                    kept = {k: v for k, v in resp.headers.items() if k.lower() in PASSED_HEADERS}
                    return resp.status, kept, data
            except (aiohttp.ClientConnectionError, ConnectionError) as exc:
                raise unreachable(pool.name, exc) from None
            except TimeoutError:
                raise timed_out() from None

        return await pool.call(attempt, deadline)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
