"""The grpc.aio side of the error table: a ``TenfoldError`` becomes its status code,
its message, and Retry-After as trailing metadata (the same rule as over HTTP)."""

from __future__ import annotations

import logging

import grpc

from inference.protocol.errors import InternalError, TenfoldError, retry_after_seconds

RETRY_AFTER = "retry-after"


def status_code(exc: TenfoldError) -> grpc.StatusCode:
    return grpc.StatusCode[exc.code]


async def abort(
    context: grpc.aio.ServicerContext,
    exc: BaseException,
    log: logging.Logger,
    trailers: tuple[tuple[str, str], ...] = (),
):
    """End the call with ``exc``'s status (and ``trailers``); anything not a
    ``TenfoldError`` is logged and answered INTERNAL with a generic message."""
    if not isinstance(exc, TenfoldError):
        log.error("unhandled error in gRPC handler", exc_info=exc)
        exc = InternalError()
    seconds = retry_after_seconds(exc)
    if seconds is not None:
        trailers = ((RETRY_AFTER, str(seconds)), *trailers)
    if trailers:
        context.set_trailing_metadata(trailers)
    await context.abort(status_code(exc), exc.message)
