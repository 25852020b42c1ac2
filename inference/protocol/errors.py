"""One error hierarchy, and the one table of what each error is on the wire.

Every error a client can see is a ``TenfoldError``. Each class carries its HTTP status
and its gRPC status *code name* (``"INVALID_ARGUMENT"``): that is the whole table, and it
needs no framework. Adapters never choose a status themselves: the aiohttp adapter reads
``http_status``, the grpc.aio adapter turns ``code`` into ``grpc.StatusCode[code]``
(``servicekit.grpcstatus``). ``retry_after_seconds`` is the one Retry-After rule for
both. Anything else that escapes is an internal error whose details stay in the log.
"""

from __future__ import annotations

import math


class TenfoldError(Exception):
    """Base of every client-visible error."""

    http_status: int = 500
    #: the gRPC status code name (``grpc.StatusCode[code]``)
    code: str = "INTERNAL"
    #: seconds a client should wait before retrying (sent as Retry-After), or None
    retry_after: float | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(TenfoldError):
    """The request is malformed or does not match the model (400 / INVALID_ARGUMENT)."""

    http_status = 400
    code = "INVALID_ARGUMENT"


class PayloadTooLarge(InvalidInput):
    """The request body is over the configured size cap (413 / INVALID_ARGUMENT)."""

    http_status = 413


class UnsupportedMediaType(InvalidInput):
    """The request body has a content type the route does not accept (415)."""

    http_status = 415


class RequestTimeout(InvalidInput):
    """The client did not send its request body in time (408; the connection closes)."""

    http_status = 408


class ModelNotFound(TenfoldError):
    """Unknown model or version (404 / NOT_FOUND)."""

    http_status = 404
    code = "NOT_FOUND"


class Overloaded(TenfoldError):
    """The request was shed: queue full or timed out in the queue.

    503 + Retry-After over HTTP, RESOURCE_EXHAUSTED over gRPC."""

    http_status = 503
    code = "RESOURCE_EXHAUSTED"
    retry_after = 1.0


class ServerUnavailable(TenfoldError):
    """The server is starting or draining (503 + Retry-After / UNAVAILABLE)."""

    http_status = 503
    code = "UNAVAILABLE"
    retry_after = 1.0


class ModelNotReady(ServerUnavailable):
    """The model exists but failed to load or is not loaded yet (503 / UNAVAILABLE)."""


class Cancelled(TenfoldError):
    """The client went away or cancelled (499-like; 400 over HTTP / CANCELLED)."""

    http_status = 400
    code = "CANCELLED"


class InternalError(TenfoldError):
    """Something broke on our side. The message sent to clients is generic."""

    http_status = 500
    code = "INTERNAL"

    def __init__(self, message: str = "internal error") -> None:
        super().__init__(message)


class NotFound(TenfoldError):
    """No such route or resource, e.g. an unknown effect (404 / NOT_FOUND)."""

    http_status = 404
    code = "NOT_FOUND"


class Unauthenticated(TenfoldError):
    """No API key, or one we do not know (401 / UNAUTHENTICATED)."""

    http_status = 401
    code = "UNAUTHENTICATED"


class PermissionDenied(TenfoldError):
    """A known key without access to this route (403 / PERMISSION_DENIED)."""

    http_status = 403
    code = "PERMISSION_DENIED"


class TooManyRequests(TenfoldError):
    """Shed at the front door: admission control or a tenant's rate limit.

    429 + Retry-After over HTTP, RESOURCE_EXHAUSTED over gRPC."""

    http_status = 429
    code = "RESOURCE_EXHAUSTED"

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class DeadlineExceeded(TenfoldError):
    """The request's deadline passed before an answer (504 / DEADLINE_EXCEEDED)."""

    http_status = 504
    code = "DEADLINE_EXCEEDED"


def retry_after_seconds(exc: TenfoldError) -> int | None:
    """Whole seconds to send as Retry-After (HTTP header, gRPC trailing metadata), or
    None: the error's hint rounded up, at least 1."""
    if exc.retry_after is None:
        return None
    return max(1, math.ceil(exc.retry_after))


#: what an upstream server's gRPC status means to its caller
_FROM_CODE: dict[str, type[TenfoldError]] = {
    "INVALID_ARGUMENT": InvalidInput,
    "NOT_FOUND": ModelNotFound,
    "RESOURCE_EXHAUSTED": Overloaded,
    "UNAVAILABLE": ServerUnavailable,
    "CANCELLED": Cancelled,
    "DEADLINE_EXCEEDED": DeadlineExceeded,
}


def error_for_code(code: str, message: str) -> TenfoldError:
    """The error an upstream answer with gRPC status ``code`` (a name) stands for; codes
    a client cannot act on become an ``InternalError`` with ``message``."""
    cls = _FROM_CODE.get(code)
    return cls(message) if cls is not None else InternalError(message)
