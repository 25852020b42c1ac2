"""The validated, immutable view of one model's config that the runtime works from."""

from __future__ import annotations

from dataclasses import dataclass

from protos.kserve.v2 import model_config_pb2


@dataclass(frozen=True, slots=True)
class TensorSpec:
    name: str
    datatype: str  # KServe name: FP32, INT64, BYTES, ...
    #: dims without the batch dimension; -1 is variable
    dims: tuple[int, ...]
    #: the shape the model sees (without batch dim), when the config reshapes
    reshape: tuple[int, ...] | None = None
    optional: bool = False
    #: allowed integer values, inclusive: one (lo, hi) for every element, or one per
    #: position of the last dimension (``parameters { key: "tenfold.value_range.<input>" }``)
    value_range: tuple[tuple[int, int], ...] | None = None

    def accepts(self, shape: tuple[int, ...]) -> bool:
        return len(shape) == len(self.dims) and all(
            d == -1 or d == s for d, s in zip(self.dims, shape, strict=True)
        )


@dataclass(frozen=True, slots=True)
class BatchingPolicy:
    """Dynamic batching settings from ``dynamic_batching { ... }``."""

    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_s: float = 0.0
    #: 0 means unbounded (Triton's default); tenfold's settings may impose a cap
    max_queue_size: int = 0
    #: 0 means no timeout
    default_timeout_s: float = 0.0
    #: "REJECT" or "DELAY"
    timeout_action: str = "REJECT"
    allow_timeout_override: bool = False


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str
    platform: str
    max_batch_size: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    #: None when the config has no dynamic_batching: requests run one by one
    batching: BatchingPolicy | None
    instance_count: int
    #: ORT graph optimisation level from optimization { graph { level } }, or None
    graph_level: int | None
    default_model_filename: str
    #: the parsed config, with auto-completed fields filled in, for the config endpoints
    config: model_config_pb2.ModelConfig

    @property
    def batched(self) -> bool:
        return self.max_batch_size > 0

    def input(self, name: str) -> TensorSpec | None:
        return next((t for t in self.inputs if t.name == name), None)

    def output(self, name: str) -> TensorSpec | None:
        return next((t for t in self.outputs if t.name == name), None)
