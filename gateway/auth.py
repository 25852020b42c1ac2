"""API keys per tenant (stored as SHA-256) and per-tenant token-bucket rate limits."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from gateway.limits import TokenBucket
from gateway.settings import TenantSettings
from inference.protocol.errors import PermissionDenied, TooManyRequests, Unauthenticated


@dataclass(frozen=True)
class Tenant:
    name: str
    routes: frozenset[str]


ANONYMOUS = Tenant("anonymous", frozenset({"feed", "effects", "infer"}))


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_from_headers(headers: Mapping[str, str]) -> str | None:
    """``Authorization: Bearer KEY`` or ``x-api-key: KEY`` (HTTP headers or gRPC metadata)."""
    auth = headers.get("authorization") or headers.get("Authorization")
    if auth:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        return ""
    return headers.get("x-api-key") or headers.get("X-Api-Key")


class Authenticator:
    """Checks keys and route access; applies the tenant's rate limit."""

    def __init__(self, tenants: list[TenantSettings], clock: Callable[[], float]) -> None:
        self.clock = clock
        self.enabled = bool(tenants)
        self._by_hash = {t.key_sha256: t for t in tenants}
        now = clock()
        self._buckets = {
            t.name: TokenBucket(t.rate_per_s, t.burst, now) for t in tenants if t.rate_per_s > 0
        }

    def identify(self, key: str | None) -> TenantSettings | None:
        """The key's tenant (None: no tenants configured, everyone is anonymous);
        Unauthenticated for a missing or unknown key. No route check, no rate limit:
        for the read-only surfaces (metrics, the OpenAPI document, the effects list)."""
        if not self.enabled:
            return None
        if key is None:
            raise Unauthenticated("missing API key: send 'Authorization: Bearer <key>'")
        digest = hash_key(key)
        tenant = next((t for h, t in self._by_hash.items() if hmac.compare_digest(h, digest)), None)
        if tenant is None:
            raise Unauthenticated("unknown API key")
        return tenant

    def check(self, key: str | None, route: str) -> Tenant:
        tenant = self.identify(key)
        if tenant is None:
            return ANONYMOUS
        if route not in tenant.routes:
            raise PermissionDenied(f"tenant {tenant.name!r} may not use route {route!r}")
        bucket = self._buckets.get(tenant.name)
        if bucket is not None:
            wait = bucket.take(self.clock())
            if wait > 0:
                raise TooManyRequests(
                    f"rate limit of tenant {tenant.name!r} exceeded", retry_after=wait
                )
        return Tenant(tenant.name, frozenset(tenant.routes))
