"""What every aiohttp adapter of ours shares: JSON answers, the error answer built from
a ``TenfoldError`` (status, message, Retry-After), and the middleware that turns any
exception into one. The status table itself lives on the error classes
(``inference.protocol.errors``)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web

from inference.protocol.errors import (
    InternalError,
    PayloadTooLarge,
    RequestTimeout,
    TenfoldError,
    retry_after_seconds,
)


def json_response(doc: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(doc), status=status, content_type="application/json")


#: the error's status name (gRPC's, e.g. RESOURCE_EXHAUSTED), where one HTTP status
#: stands for several (503: overloaded or unavailable): what an upstream client reads
ERROR_CODE = "Tenfold-Error-Code"


def error_response(exc: TenfoldError) -> web.Response:
    response = json_response({"error": exc.message}, exc.http_status)
    response.headers[ERROR_CODE] = exc.code
    seconds = retry_after_seconds(exc)
    if seconds is not None:
        response.headers["Retry-After"] = str(seconds)
    if isinstance(exc, RequestTimeout):
        response.force_close()  # the rest of the body is not coming: drop the connection
    return response


def close_while(draining: Callable[[], bool]):
    """An ``on_response_prepare`` hook: while ``draining()``, every answer carries
    ``Connection: close``, so keep-alive clients open a new connection for their next
    request (and find another replica) instead of sending it on one about to close."""

    async def hook(_: web.Request, response: web.StreamResponse) -> None:
        if draining():
            response.force_close()  # the server closes the connection after this answer
            response.headers["Connection"] = "close"  # (the headers are made before this)

    return hook


def errors_middleware(log: logging.Logger):
    """Client errors become their status; anything else a logged, generic 500."""

    @web.middleware
    async def middleware(request: web.Request, handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except TenfoldError as exc:
            return error_response(exc)
        except web.HTTPRequestEntityTooLarge as exc:
            return error_response(PayloadTooLarge(f"request body is too large: {exc.text}"))
        except web.HTTPException as exc:
            if exc.status >= 400:
                response = json_response({"error": exc.reason}, exc.status)
                if "Allow" in exc.headers:  # 405 says what is allowed
                    response.headers["Allow"] = exc.headers["Allow"]
                return response
            raise
        except ConnectionError:
            raise  # the client went away: aiohttp drops the connection quietly
        except Exception:
            log.exception("unhandled error on %s %s", request.method, request.path)
            return error_response(InternalError())

    return middleware
