"""What a failed attempt at an endpoint means: the client's error, whether another
endpoint may succeed (retry), and whether it counts against this endpoint's health
(ejection). The one classification for gRPC and HTTP pass-through alike."""

from __future__ import annotations

from inference.protocol.errors import (
    DeadlineExceeded,
    InternalError,
    ServerUnavailable,
    TenfoldError,
    error_for_code,
)

#: upstream gRPC status name -> (retry on another endpoint, the endpoint's fault)
_POLICY = {
    "UNAVAILABLE": (True, True),
    "RESOURCE_EXHAUSTED": (True, False),
    "DEADLINE_EXCEEDED": (False, False),
    "INVALID_ARGUMENT": (False, False),
    "NOT_FOUND": (False, False),
    "CANCELLED": (False, False),
}


class UpstreamError(Exception):
    """An attempt failed. ``retryable``: another endpoint may succeed; ``endpoint_fault``:
    counts towards ejecting this endpoint."""

    def __init__(self, error: TenfoldError, retryable: bool, endpoint_fault: bool) -> None:
        super().__init__(error.message)
        self.error = error
        self.retryable = retryable
        self.endpoint_fault = endpoint_fault


def from_status(code: str, details: str, pool: str) -> UpstreamError:
    """An endpoint answered gRPC status ``code`` (a name, e.g. ``UNAVAILABLE``)."""
    policy = _POLICY.get(code)
    if policy is None:
        # INTERNAL, UNKNOWN, ...: a 500 for this request, with the pod's reason. Not
        # retried and not held against the endpoint: one request's input can cause it
        # (a pod that is really broken stops answering, which is UNAVAILABLE)
        return UpstreamError(InternalError(f"pool {pool!r}: {details or code}"), False, False)
    return UpstreamError(error_for_code(code, details or code), *policy)


def unreachable(pool: str, reason: object) -> UpstreamError:
    """The endpoint could not be reached or dropped the connection."""
    return UpstreamError(ServerUnavailable(f"pool {pool!r}: {reason}"), True, True)


def timed_out() -> UpstreamError:
    """The request's deadline passed while the endpoint worked on it."""
    return UpstreamError(DeadlineExceeded("deadline expired upstream"), False, False)
