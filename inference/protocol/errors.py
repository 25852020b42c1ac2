"""One error hierarchy, mapped once to HTTP status and gRPC status code.

Every error a client can see is a ``TenfoldError``. Adapters never choose a status
themselves: they read ``http_status`` / ``grpc_code`` from the error. Anything else
that escapes is an internal error whose details stay in the server log.
"""

from __future__ import annotations

import grpc


class TenfoldError(Exception):
    """Base of every client-visible error."""

    http_status: int = 500
    grpc_code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    #: seconds a client should wait before retrying (sent as Retry-After), or None
    retry_after: float | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(TenfoldError):
    """The request is malformed or does not match the model (400 / INVALID_ARGUMENT)."""

    http_status = 400
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class PayloadTooLarge(InvalidInput):
    """The request body is over the configured size cap (413 / INVALID_ARGUMENT)."""

    http_status = 413


class UnsupportedMediaType(InvalidInput):
    """The request body has a content type the route does not accept (415)."""

    http_status = 415


class ModelNotFound(TenfoldError):
    """Unknown model or version (404 / NOT_FOUND)."""

    http_status = 404
    grpc_code = grpc.StatusCode.NOT_FOUND


class Overloaded(TenfoldError):
    """The request was shed: queue full or timed out in the queue.

    503 + Retry-After over HTTP, RESOURCE_EXHAUSTED over gRPC."""

    http_status = 503
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    retry_after = 1.0


class ServerUnavailable(TenfoldError):
    """The server is starting or draining (503 + Retry-After / UNAVAILABLE)."""

    http_status = 503
    grpc_code = grpc.StatusCode.UNAVAILABLE
    retry_after = 1.0


class ModelNotReady(ServerUnavailable):
    """The model exists but failed to load or is not loaded yet (503 / UNAVAILABLE)."""


class Cancelled(TenfoldError):
    """The client went away or cancelled (499-like; 400 over HTTP / CANCELLED)."""

    http_status = 400
    grpc_code = grpc.StatusCode.CANCELLED


class InternalError(TenfoldError):
    """Something broke on our side. The message sent to clients is generic."""

    http_status = 500
    grpc_code = grpc.StatusCode.INTERNAL

    def __init__(self, message: str = "internal error") -> None:
        super().__init__(message)


class NotFound(TenfoldError):
    """No such route or resource, e.g. an unknown effect (404 / NOT_FOUND)."""

    http_status = 404
    grpc_code = grpc.StatusCode.NOT_FOUND


class Unauthenticated(TenfoldError):
    """No API key, or one we do not know (401 / UNAUTHENTICATED)."""

    http_status = 401
    grpc_code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(TenfoldError):
    """A known key without access to this route (403 / PERMISSION_DENIED)."""

    http_status = 403
    grpc_code = grpc.StatusCode.PERMISSION_DENIED


class TooManyRequests(TenfoldError):
    """Shed at the front door: admission control or a tenant's rate limit.

    429 + Retry-After over HTTP, RESOURCE_EXHAUSTED over gRPC."""

    http_status = 429
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class DeadlineExceeded(TenfoldError):
    """The request's deadline passed before an answer (504 / DEADLINE_EXCEEDED)."""

    http_status = 504
    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED
