"""The mesh's declarative config (one YAML file, pydantic-validated) and the live
endpoint sets of its pools.

Traffic policy lives here once: listeners and their edge limits, the pools (which
models each serves, how Envoy balances, retries, ejects and limits calls to it), and
the routes. Endpoints are not config: they change at run time (``EndpointStore``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

#: the pool that runs the gateway workers (``/v1/*``, ``tenfold.v1.*``)
GATEWAY_POOL = "gateway"
NAME_PATTERN = r"^[a-z][a-z0-9_-]{0,62}$"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RetryPolicy(Strict):
    retry_on: str = Field(
        "connect-failure,refused-stream,reset,unavailable,retriable-status-codes",
        description="Envoy retry conditions (x-envoy-retry-on / x-envoy-retry-grpc-on names)",
    )
    retriable_status_codes: list[int] = Field(
        default_factory=lambda: [503], description="HTTP statuses retried (a draining pod: 503)"
    )
    max_retries: int = Field(3, ge=0, le=10, description="retries per request at most")
    budget_percent: float = Field(
        20.0, ge=0, le=100, description="retries in flight as a share of active requests"
    )
    min_retry_concurrency: int = Field(
        3, ge=0, description="retries always allowed in flight, whatever the budget"
    )
    per_try_timeout_s: float | None = Field(None, gt=0, description="timeout of each try")


class OutlierDetection(Strict):
    consecutive_5xx: int = Field(5, ge=1, description="5xx answers in a row that eject")
    consecutive_gateway_failure: int = Field(
        2, ge=1, description="connect failures/resets (502, 503, 504) in a row that eject"
    )
    interval_s: float = Field(1.0, gt=0, description="how often ejection is evaluated")
    base_ejection_time_s: float = Field(5.0, gt=0, description="first ejection period")
    max_ejection_percent: int = Field(50, ge=0, le=100, description="most endpoints ejected")


class CircuitBreakers(Strict):
    max_connections: int = Field(4096, ge=1, description="upstream connections")
    max_pending_requests: int = Field(4096, ge=1, description="requests waiting for one")
    max_requests: int = Field(4096, ge=1, description="requests in flight")


class PoolConfig(Strict):
    models: list[str] = Field(
        default_factory=list, description="models it serves (KServe v2 routes go straight to it)"
    )
    balancing: Literal["least_request", "round_robin"] = Field(
        "least_request", description="Envoy's load-balancing policy"
    )
    connect_timeout_s: float = Field(1.0, gt=0, description="upstream connect timeout")
    retry: RetryPolicy = Field(default_factory=RetryPolicy, description="retries to this pool")
    outlier_detection: OutlierDetection = Field(
        default_factory=OutlierDetection, description="passive health checking"
    )
    circuit_breakers: CircuitBreakers = Field(
        default_factory=CircuitBreakers, description="upstream limits"
    )


class RateLimit(Strict):
    requests_per_s: float = Field(gt=0, description="token-bucket refill per second")
    burst: int = Field(ge=1, description="bucket size")


class EdgeLimits(Strict):
    max_connections: int = Field(10_000, ge=1, description="downstream connections per listener")
    max_request_headers_kb: int = Field(60, ge=1, le=8192, description="request header size")
    max_request_bytes: int | None = Field(
        None,
        ge=1024,
        description="largest request body at the edge (HTTP listener; 413 above). Envoy's "
        "buffer filter holds each body whole, which cost ~0.3 ms a request here; None: off "
        "(the gateway and the pods refuse bodies over their own limits)",
    )
    request_headers_timeout_s: float = Field(
        10.0, gt=0, description="time for a client to send its request headers"
    )
    stream_idle_timeout_s: float = Field(
        15.0, gt=0, description="a request with no bytes in either direction this long ends"
    )
    idle_timeout_s: float = Field(
        60.0,
        gt=0,
        description="a keep-alive connection with no request this long is drained and "
        "closed (HTTP/1.1: closed after Envoy's 5 s drain period)",
    )
    rate_limit: RateLimit | None = Field(None, description="local rate limit (None = off)")


class Tls(Strict):
    cert_file: str = Field(min_length=1, description="PEM certificate chain Envoy serves")
    key_file: str = Field(min_length=1, description="PEM private key of the certificate")


class Listener(Strict):
    address: str = Field("127.0.0.1", description="bind address")
    port: int = Field(ge=0, le=65535, description="port (0 = any free port)")
    protocol: Literal["http", "grpc"] = Field(
        description="http: HTTP/1.1 and h2c, KServe v2 routes; grpc: gRPC (h2c) only"
    )
    tls: Tls | None = Field(
        None, description="serve TLS (HTTP/1.1 and h2 by ALPN) instead of plaintext"
    )


class Route(Strict):
    prefix: str = Field(description="path prefix (gRPC: '/package.Service/')")
    pool: str = Field(pattern=NAME_PATTERN, description="pool the route goes to")
    listener: Literal["http", "grpc"] = Field("http", description="which listener serves it")
    timeout_s: float = Field(30.0, ge=0, description="whole-request timeout (0 = none)")
    retry: bool = Field(False, description="retry with the pool's policy (idempotent calls)")

    @field_validator("prefix")
    @classmethod
    def _slash(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("must start with '/'")
        return value


def _default_routes() -> list[Route]:
    return [
        Route(prefix="/", pool=GATEWAY_POOL, listener="http", timeout_s=30.0),
        Route(prefix="/", pool=GATEWAY_POOL, listener="grpc", timeout_s=30.0),
    ]


class MeshConfig(Strict):
    """What the control plane serves: Envoy's listeners, routes and clusters."""

    node_id: str = Field("tenfold-edge", min_length=1, description="the Envoy node served")
    listeners: dict[Literal["http", "grpc"], Listener] = Field(
        default_factory=lambda: {
            "http": Listener(port=8080, protocol="http"),
            "grpc": Listener(port=8081, protocol="grpc"),
        },
        description="the edge's listeners by protocol",
    )
    edge: EdgeLimits = Field(default_factory=EdgeLimits, description="limits at the edge")
    pools: dict[str, PoolConfig] = Field(
        default_factory=lambda: {GATEWAY_POOL: PoolConfig()},
        description="upstream pools by name (the gateway's workers are the 'gateway' pool)",
    )
    routes: list[Route] = Field(
        default_factory=_default_routes,
        description="routes, first match wins; KServe v2 model routes are added before them",
    )
    kserve_direct: bool = Field(
        True, description="KServe v2 HTTP calls go straight to the pool serving the model"
    )
    upstream_header: bool = Field(
        False,
        description="answer with x-tenfold-upstream: the address that served it (debugging; "
        "it shows internal addresses to clients)",
    )

    @field_validator("pools")
    @classmethod
    def _pool_names(cls, pools: dict[str, PoolConfig]) -> dict[str, PoolConfig]:
        import re

        for name in pools:
            if not re.match(NAME_PATTERN, name):
                raise ValueError(f"pool name {name!r} must match {NAME_PATTERN}")
        if GATEWAY_POOL not in pools:
            raise ValueError(f"a {GATEWAY_POOL!r} pool (the gateway workers) is required")
        return pools

    @model_validator(mode="after")
    def _references(self) -> MeshConfig:
        for i, route in enumerate(self.routes):
            if route.pool not in self.pools:
                raise ValueError(f"routes[{i}].pool: no pool named {route.pool!r}")
            if route.listener not in self.listeners:
                raise ValueError(f"routes[{i}].listener: no {route.listener!r} listener")
        owner: dict[str, str] = {}
        for name, pool in self.pools.items():
            for model in pool.models:
                if model in owner:
                    raise ValueError(
                        f"pools.{name}.models: {model!r} is served by pool {owner[model]!r} too"
                    )
                owner[model] = name
        ports = [lst.port for lst in self.listeners.values() if lst.port]
        if len(ports) != len(set(ports)):
            raise ValueError(f"listeners: two listeners on one port {ports}")
        return self

    def pool_of(self, model: str) -> str | None:
        return next((n for n, p in self.pools.items() if model in p.models), None)


class Endpoint(Strict):
    """One member of a pool: its HTTP and gRPC addresses (``host:port``)."""

    http: str = Field(description="host:port of its HTTP server")
    grpc: str = Field(description="host:port of its gRPC server")

    @field_validator("http", "grpc")
    @classmethod
    def _address(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{value!r} is not host:port with a port in 1..65535")
        return value

    def split(self, which: Literal["http", "grpc"]) -> tuple[str, int]:
        host, _, port = getattr(self, which).rpartition(":")
        return host, int(port)


class EndpointSet(Strict):
    endpoints: list[Endpoint] = Field(description="the pool's endpoints, all of them")


class MeshFile(MeshConfig):
    """A mesh YAML file: the config, and optionally each pool's first endpoints."""

    endpoints: dict[str, list[Endpoint]] = Field(
        default_factory=dict, description="initial endpoint sets by pool"
    )

    @model_validator(mode="after")
    def _known_pools(self) -> MeshFile:
        for pool in self.endpoints:
            if pool not in self.pools:
                raise ValueError(f"endpoints.{pool}: no pool named {pool!r}")
        return self

    def config(self) -> MeshConfig:
        return MeshConfig.model_validate(self.model_dump(exclude={"endpoints"}))


class MeshConfigError(ValueError):
    """The mesh config is invalid; the message names the field."""


def load_mesh_file(path, overrides: dict | None = None) -> MeshFile:
    """Read and validate a mesh YAML file (``None``: the defaults) plus ``overrides``."""
    import yaml
    from pydantic import ValidationError

    from servicekit.validation import validation_message

    doc: dict = {}
    if path is not None:
        try:
            with open(path, encoding="utf-8") as handle:
                doc = yaml.safe_load(handle) or {}
        except OSError as exc:
            raise MeshConfigError(f"cannot read mesh config {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise MeshConfigError(f"mesh config {path} is not valid YAML: {exc}") from None
        if not isinstance(doc, dict):
            raise MeshConfigError(f"mesh config {path} must hold a mapping")
    doc = {**doc, **(overrides or {})}
    try:
        return MeshFile.model_validate(doc)
    except ValidationError as exc:
        where = path or "mesh config"
        raise MeshConfigError(f"invalid {where}: {validation_message(exc)}") from None
