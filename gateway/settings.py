"""Gateway settings: ``TENFOLD_GATEWAY_*`` env, a YAML ``--config`` file and flags.

Pools, tenants and experiments are nested mappings; they are normally set in the YAML
file (see ``docs/gateway.md``). Nothing is read at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway.concurrency import GradientSettings
from gateway.events.settings import EventsSettings

ROUTES = ("feed", "effects", "infer", "events")


class EndpointSettings(BaseModel):
    grpc: str = Field(description="host:port of the endpoint's KServe v2 gRPC server")
    http: str | None = Field(
        None, description="host:port of its KServe v2 HTTP server (HTTP pass-through only)"
    )


class PoolSettings(BaseModel):
    endpoints: list[EndpointSettings] = Field(
        default_factory=list,
        description="the pool's endpoints (with `xds`: the first ones, until the mesh says)",
    )
    models: list[str] = Field(
        default_factory=list, description="models served by this pool (for pass-through)"
    )
    transport: Literal["grpc", "http"] = Field(
        "http",
        description="how the feed and effects pipelines call the pool's models: KServe v2 "
        "HTTP with the binary tensor extension (an endpoint without an HTTP address is "
        "called over gRPC) or gRPC; pass-through keeps the caller's protocol",
    )


class FeedSettings(BaseModel):
    recall_model: str = Field(
        "feed_recall",
        description="user tower + nearest-neighbour model run by the pod ('' = the user "
        "tower model, with the nearest neighbours searched in the gateway)",
    )
    user_tower_model: str = Field(
        "feed_user_tower", description="user tower model name (when recall_model is '')"
    )
    ranker_model: str = Field(
        "feed_list_ranker",
        description="ranker model name; its layout (one row per candidate, or one list "
        "per user) is the build's (feed_assets.json 'rankers')",
    )
    ranker_version: str = Field("", description="ranker version ('' = the pod's latest)")
    assets_dir: Path | None = Field(
        None,
        description="directory with item_embeddings.npy, cold_start_pool.npy and "
        "item_creator.npy (the user tower's folder in the model repository)",
    )
    recall_candidates: int = Field(400, ge=1, description="nearest neighbours to retrieve")
    cold_start_candidates: int = Field(100, ge=0, description="pool items mixed in")
    rank_candidates: int = Field(
        200,
        ge=0,
        description="cascade: rank only this many candidates, the best by recall score "
        "(0 = rank them all)",
    )
    max_per_creator: int = Field(2, ge=1, description="at most this many items per creator")
    weights: dict[str, float] = Field(
        default_factory=lambda: {"p_finish": 1.0, "p_like": 2.0, "p_share": 4.0, "watch": 1.0},
        description="final score = sum of weight x head output",
    )
    devices: list[str] = Field(
        default_factory=lambda: ["android", "ios", "web"], description="device names by index"
    )
    networks: list[str] = Field(
        default_factory=lambda: ["wifi", "5g", "4g"], description="network names by index"
    )
    deadline_ms: float = Field(500, gt=0, description="default deadline of a feed request")


class EffectSettings(BaseModel):
    model: str = Field(description="the model that renders the effect")
    sizes: list[int] = Field(default_factory=lambda: [256, 512], description="square sizes")
    deadline_ms: float = Field(5000, gt=0, description="default deadline of an effect request")

    @field_validator("sizes")
    @classmethod
    def _sizes(cls, sizes: list[int]) -> list[int]:
        if not sizes or any(s < 16 or s % 4 for s in sizes):
            raise ValueError("sizes must be a non-empty list of multiples of 4, at least 16")
        return sizes


class TenantSettings(BaseModel):
    name: str
    key_sha256: str = Field(description="hex SHA-256 of the tenant's API key")
    routes: list[str] = Field(default_factory=lambda: list(ROUTES), description="allowed routes")
    rate_per_s: float = Field(0, ge=0, description="token-bucket rate (0 = unlimited)")
    burst: float = Field(0, ge=0, description="bucket size (0 = one second of rate)")

    @field_validator("key_sha256")
    @classmethod
    def _hex(cls, value: str) -> str:
        value = value.lower()
        if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
            raise ValueError("must be 64 hex digits (sha256 of the key)")
        return value

    @field_validator("routes")
    @classmethod
    def _routes(cls, routes: list[str]) -> list[str]:
        unknown = sorted(set(routes) - set(ROUTES))
        if unknown:
            raise ValueError(f"unknown routes {unknown}; known: {list(ROUTES)}")
        return routes


class ExperimentSettings(BaseModel):
    name: str
    percent: float = Field(ge=0, le=100, description="share of users in the variant arm")
    ranker_model: str | None = Field(None, description="variant ranker model name")
    ranker_version: str | None = Field(None, description="variant ranker version")


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TENFOLD_GATEWAY_", extra="forbid")

    host: str = Field(
        "127.0.0.1",
        description="bind address (give 0.0.0.0 to serve other machines; forced to loopback "
        "without API keys)",
    )
    port: int = Field(8080, ge=0, le=65535, description="HTTP port (0 = any free port)")
    grpc_port: int = Field(8081, ge=0, le=65535, description="gRPC port (0 = any free port)")
    metrics_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="a port serving only /metrics, without a key (for Prometheus; None: "
        "/metrics on the HTTP port, which needs a key once API keys are configured)",
    )
    workers: int = Field(1, ge=1, le=64, description="worker processes sharing the ports")
    pools: dict[str, PoolSettings] = Field(default_factory=dict, description="inference pools")
    feed: FeedSettings = Field(default_factory=FeedSettings, description="feed pipeline")
    feed_pool: str = Field("default", description="pool serving the feed models")
    effects: dict[str, EffectSettings] = Field(
        default_factory=lambda: {"cartoon": EffectSettings(model="effects_cartoon")},
        description="effect name -> model and sizes",
    )
    effects_pool: str = Field("default", description="pool serving the effect models")
    events: EventsSettings = Field(
        default_factory=EventsSettings,
        description="feedback events and user state in Redis (off without redis_url)",
    )
    max_body_bytes: int = Field(8 << 20, ge=1024, description="largest request body")
    max_image_pixels: int = Field(
        25_000_000, ge=1024, description="largest decoded image (width x height)"
    )
    image_threads: int = Field(
        2,
        ge=1,
        le=64,
        description="threads decoding and encoding images: at most this many are in memory",
    )
    body_timeout_ms: float = Field(
        10_000,
        gt=0,
        description="longest time to receive a request body (then 408); bodies are read "
        "before an admission slot is taken, so slow uploads hold no slot",
    )
    concurrency: GradientSettings = Field(
        default_factory=GradientSettings,
        description="adaptive concurrency limit per route: requests over it are refused "
        "at once (429) instead of queueing into a 504 (gateway/concurrency.py)",
    )
    concurrency_routes: dict[str, dict[str, Any]] = Field(
        default_factory=lambda: {
            "effects": {"buffer": 3.0, "latency_target_ms": 100.0},
            "feed": {"latency_target_ms": 40.0},
        },
        description="per-route changes to `concurrency` (route -> its fields); a value "
        "given replaces this default. effects: buffer 3 (latency up to 4x the floor) and "
        "a 100 ms latency target: an image's floor is ~10-25 ms of compute on shared "
        "cores, where it swings to several times that in waves well before the pods are "
        "overloaded; with buffer 1 the route shed 429s at ~150/s with CPU to spare, with "
        "buffer 3 alone 12 % of a sustained 140/s, with the target 1.7 %. feed: a 40 ms "
        "target: its floor is ~10 ms (the pod's batching wait), and buffer 1 alone shed "
        "9 % of 300/s with a third of the CPU unused; with the target 1 % "
        '(docs/benchmarks.md, "Effects under sustained load", "Feed end to end")',
    )
    max_inflight: int = Field(256, ge=1, description="requests in flight per worker")
    max_queue: int = Field(128, ge=0, description="requests waiting for a slot per worker")
    queue_timeout_ms: float = Field(50, ge=0, description="longest wait for a slot")
    infer_deadline_ms: float = Field(2000, gt=0, description="default pass-through deadline")
    retry_budget_ratio: float = Field(0.2, ge=0, le=1, description="retries per request")
    retry_budget_min_per_s: float = Field(5, ge=0, description="retries always allowed per s")
    hedge_after_ms: float | None = Field(None, gt=0, description="hedge after this delay")
    eject_after_failures: int = Field(3, ge=1, description="consecutive failures to eject")
    eject_base_s: float = Field(2.0, gt=0, description="first ejection period")
    eject_max_s: float = Field(30.0, gt=0, description="longest ejection period")
    tenants: list[TenantSettings] = Field(default_factory=list, description="API keys")
    experiments: list[ExperimentSettings] = Field(default_factory=list, description="A/B tests")
    drain_grace_s: float = Field(
        2.0,
        ge=0,
        description="on SIGTERM, keep serving this long while not ready (answers carry "
        "Connection: close) before the listeners close: balancers and clients move away "
        "first",
    )
    drain_timeout_s: float = Field(10, ge=0, description="longest wait for in-flight on stop")
    xds: str | None = Field(
        None,
        description="host:port of the mesh control plane: pools follow its endpoint sets "
        "(None = the static endpoints above)",
    )
    xds_node_id: str = Field("tenfold-gateway", description="node id sent to the mesh")
    xds_wait_s: float = Field(
        5.0, ge=0, description="longest wait at start for the mesh's first endpoint sets"
    )

    @model_validator(mode="after")
    def _pools_exist(self) -> GatewaySettings:
        for field in ("feed_pool", "effects_pool"):
            name = getattr(self, field)
            if self.pools and name not in self.pools:
                raise ValueError(f"{field}: no pool named {name!r} (pools: {sorted(self.pools)})")
        if sum(e.percent for e in self.experiments) > 100:
            raise ValueError("experiments: percentages add up to more than 100")
        for route in self.concurrency_routes:
            if route not in ROUTES:
                raise ValueError(f"concurrency_routes: no route {route!r} (routes: {ROUTES})")
            try:
                self.route_concurrency(route)
            except ValueError as exc:
                raise ValueError(f"concurrency_routes.{route}: {exc}") from None
        return self

    def route_concurrency(self, route: str) -> GradientSettings:
        """The adaptive limit's settings for ``route``: ``concurrency`` with the route's
        changes from ``concurrency_routes``."""
        changes = self.concurrency_routes.get(route)
        if not changes:
            return self.concurrency
        return GradientSettings.model_validate({**self.concurrency.model_dump(), **changes})

    @property
    def loopback_only(self) -> bool:
        return not self.tenants

    @property
    def bind_host(self) -> str:
        """Where the listeners bind: loopback only while no API keys are configured."""
        return "127.0.0.1" if self.loopback_only else self.host
