"""Settings of an inference pod: env ``TENFOLD_INFERENCE_<FIELD>``, YAML, or flags."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class InferenceSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="TENFOLD_INFERENCE_", use_attribute_docstrings=True, extra="forbid"
    )

    model_repository: Path
    """Directory of the Triton-layout model repository to serve."""
    host: str = "127.0.0.1"
    """Address to listen on (0.0.0.0 inside a container)."""
    http_port: int = Field(8000, ge=0, le=65535)
    """KServe v2 HTTP port; 0 picks a free port and prints it."""
    grpc_port: int = Field(8001, ge=0, le=65535)
    """KServe v2 gRPC port; 0 picks a free port and prints it."""
    metrics_port: int = Field(8002, ge=0, le=65535)
    """Prometheus /metrics port; 0 picks a free port and prints it."""
    intra_op_threads: int = Field(0, ge=0)
    """ONNX Runtime intra-op threads per session; 0 lets ONNX Runtime use every core."""
    graph_optimization: Literal["disable", "basic", "extended", "all"] = "all"
    """ONNX Runtime graph optimisation level (a model's config.pbtxt may override it)."""
    allow_spinning: bool = False
    """Let ONNX Runtime worker threads spin while idle (lower latency, burns CPU)."""
    memory_pattern: bool = False
    """ONNX Runtime's memory pattern: a buffer plan kept per input shape. With dynamic
    shapes (batch size, image size) it keeps one per shape seen: off, a pod serving the
    effects model stayed ~60 MB smaller (2 instances, batches of 1-4 at 256x256) at the
    same speed (measured: effects 25.4 vs 24.7 ms, feed models within 2 %)."""
    default_max_batch_size: int = Field(4, ge=0)
    """max_batch_size given to batchable models whose config is auto-completed."""
    max_queue_size: int = Field(0, ge=0)
    """Queue bound for models whose config sets none; 0 leaves them unbounded."""
    max_request_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    """Largest accepted request body (HTTP 413 above it; gRPC max message size)."""
    load_models: list[str] = Field(default_factory=list)
    """Serve only these models of the repository (like Triton's --load-model); empty:
    all of them. A pool's pods load only the pool's models."""
    strict_model_load: bool = True
    """Refuse to start when a model cannot be loaded; if false, serve the others and
    report the broken model as not ready."""
    drain_grace_s: float = Field(1.0, ge=0)
    """On SIGTERM, how long the pod reports not ready but still serves (HTTP answers
    carry ``Connection: close``), so balancers that have not yet seen it leave lose
    nothing; then new requests get 503/UNAVAILABLE."""
    drain_timeout_s: float = Field(30.0, gt=0)
    """On SIGTERM, how long in-flight requests may take to finish."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Log level."""

    @model_validator(mode="after")
    def _distinct_ports(self) -> InferenceSettings:
        ports = [p for p in (self.http_port, self.grpc_port, self.metrics_port) if p]
        if len(ports) != len(set(ports)):
            raise ValueError("http_port, grpc_port and metrics_port must differ")
        return self
