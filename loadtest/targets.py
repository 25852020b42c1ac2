"""Where load goes: ``http://host:port`` or ``grpc://host:port``, loopback only."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit


class LoadTestError(Exception):
    """A bad argument or an unusable target: the command exits 2 with this message."""


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.address}"

    @classmethod
    def parse(cls, text: str, *, allow_remote: bool = False) -> Target:
        parts = urlsplit(text if "://" in text else f"http://{text}")
        if parts.scheme not in ("http", "grpc"):
            raise LoadTestError(
                f"target {text!r}: scheme must be http:// or grpc://, not {parts.scheme}://"
            )
        try:
            port = parts.port
        except ValueError:
            port = None
        if not parts.hostname or port is None:
            raise LoadTestError(f"target {text!r}: give host and port, e.g. http://127.0.0.1:8080")
        if parts.path not in ("", "/"):
            raise LoadTestError(f"target {text!r}: give no path, the scenario picks the routes")
        target = cls(parts.scheme, parts.hostname, port)
        if not allow_remote and not target.is_loopback():
            raise LoadTestError(
                f"target {text!r} is not a loopback address; load goes to loopback only "
                "(--allow-remote to override on a machine where that is allowed)"
            )
        return target

    def is_loopback(self) -> bool:
        try:
            infos = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise LoadTestError(f"target {self.url}: cannot resolve {self.host!r}: {exc}") from None
        return all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)

    def check_reachable(self, timeout_s: float = 2.0) -> None:
        """Raise a clear error when nothing accepts connections at the target."""
        try:
            with socket.create_connection((self.host, self.port), timeout=timeout_s):
                pass
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise LoadTestError(f"cannot reach target {self.url}: {reason}") from None
