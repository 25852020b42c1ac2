"""What every aiohttp adapter of ours shares: JSON answers, the error answer built from
a ``TenfoldError`` (status, message, Retry-After), and the middleware that turns any
exception into one. The status table itself lives on the error classes."""

from __future__ import annotations

import logging
import math
from typing import Any

import orjson
from aiohttp import web

from inference.protocol.errors import InternalError, InvalidInput, PayloadTooLarge, TenfoldError


def json_response(doc: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(doc), status=status, content_type="application/json")


def error_response(exc: TenfoldError) -> web.Response:
    response = json_response({"error": exc.message}, exc.http_status)
    if exc.retry_after is not None:
        response.headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    return response


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
                return json_response({"error": exc.reason}, exc.status)
            raise
        except Exception:
            log.exception("unhandled error on %s %s", request.method, request.path)
            return error_response(InternalError())

    return middleware


def json_object(raw: bytes | memoryview, what: str = "body") -> dict:
    """Parse a JSON object or raise InvalidInput saying what was wrong."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"{what}: malformed JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise InvalidInput(f"{what}: must be a JSON object")
    return doc
