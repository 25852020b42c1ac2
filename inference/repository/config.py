"""Parse and validate ``config.pbtxt`` (protobuf text format) into a ModelSpec.

The schema is protos/kserve/v2/model_config.proto; the parser is protobuf's own
``text_format``. Auto-completion of missing inputs/outputs from the ONNX model lives in
``autocomplete``.
"""

from __future__ import annotations

from pathlib import Path

from google.protobuf import text_format

from inference.protocol.datatypes import from_config_type
from inference.repository.errors import RepositoryError
from inference.repository.spec import BatchingPolicy, ModelSpec, TensorSpec
from protos.kserve.v2 import model_config_pb2

ONNX_PLATFORM = "onnxruntime_onnx"
ONNX_BACKEND = "onnxruntime"
DEFAULT_FILENAME = "model.onnx"


def read_config(model_dir: Path) -> model_config_pb2.ModelConfig | None:
    """The parsed config.pbtxt, or None when the model has none (auto-complete)."""
    path = model_dir / "config.pbtxt"
    if not path.exists():
        return None
    config = model_config_pb2.ModelConfig()
    try:
        text_format.Parse(path.read_text(encoding="utf-8"), config)
    except text_format.ParseError as exc:
        raise RepositoryError(model_dir.name, f"config.pbtxt: {exc}") from None
    except UnicodeDecodeError:
        raise RepositoryError(model_dir.name, "config.pbtxt is not UTF-8 text") from None
    return config


def _tensor(model: str, kind: str, tensor, batched: bool) -> TensorSpec:
    if not tensor.name:
        raise RepositoryError(model, f"an {kind} has no name")
    try:
        datatype = from_config_type(model_config_pb2.DataType.Name(tensor.data_type))
    except ValueError as exc:
        raise RepositoryError(model, f"{kind} '{tensor.name}': {exc}") from None
    dims = tuple(int(d) for d in tensor.dims)
    if not dims and not batched:
        raise RepositoryError(model, f"{kind} '{tensor.name}' has no dims")
    if any(d < -1 or d == 0 for d in dims):
        raise RepositoryError(model, f"{kind} '{tensor.name}': dims {list(dims)} are invalid")
    reshape = None
    if tensor.HasField("reshape"):
        reshape = tuple(int(d) for d in tensor.reshape.shape)
        if -1 not in dims and -1 not in reshape and _prod(dims) != _prod(reshape):
            raise RepositoryError(
                model,
                f"{kind} '{tensor.name}': reshape {list(reshape)} has a different element "
                f"count than dims {list(dims)}",
            )
    optional = bool(getattr(tensor, "optional", False))
    return TensorSpec(tensor.name, datatype, dims, reshape, optional)


def _prod(dims) -> int:
    out = 1
    for d in dims:
        out *= d
    return out


def _batching(model: str, config: model_config_pb2.ModelConfig) -> BatchingPolicy | None:
    if not config.HasField("dynamic_batching"):
        return None
    db = config.dynamic_batching
    preferred = tuple(int(p) for p in db.preferred_batch_size)
    for p in preferred:
        if p < 1 or p > config.max_batch_size:
            raise RepositoryError(
                model,
                f"preferred_batch_size {p} must be between 1 and max_batch_size "
                f"{config.max_batch_size}",
            )
    qp = db.default_queue_policy
    return BatchingPolicy(
        preferred_batch_sizes=tuple(sorted(set(preferred))),
        max_queue_delay_s=db.max_queue_delay_microseconds / 1e6,
        max_queue_size=int(qp.max_queue_size),
        default_timeout_s=qp.default_timeout_microseconds / 1e6,
        timeout_action=model_config_pb2.ModelQueuePolicy.TimeoutAction.Name(qp.timeout_action),
        allow_timeout_override=qp.allow_timeout_override,
    )


def to_spec(model_dir_name: str, config: model_config_pb2.ModelConfig) -> ModelSpec:
    """Validate a (complete) config and build the runtime's view of it."""
    model = model_dir_name
    if config.name and config.name != model_dir_name:
        raise RepositoryError(
            model, f"config name '{config.name}' does not match its directory '{model_dir_name}'"
        )
    platform, backend = config.platform, config.backend
    if platform not in ("", ONNX_PLATFORM) or backend not in ("", ONNX_BACKEND):
        raise RepositoryError(
            model,
            f"platform '{platform}' / backend '{backend}' is not served by tenfold; "
            f'use platform: "{ONNX_PLATFORM}" or backend: "{ONNX_BACKEND}"',
        )
    if config.max_batch_size < 0:
        raise RepositoryError(model, f"max_batch_size {config.max_batch_size} is negative")
    if config.HasField("dynamic_batching") and config.max_batch_size == 0:
        raise RepositoryError(model, "dynamic_batching needs max_batch_size > 0")
    batched = config.max_batch_size > 0
    if not config.input:
        raise RepositoryError(model, "config has no inputs")
    if not config.output:
        raise RepositoryError(model, "config has no outputs")
    inputs = tuple(_tensor(model, "input", t, batched) for t in config.input)
    outputs = tuple(_tensor(model, "output", t, batched) for t in config.output)
    for kind, tensors in (("input", inputs), ("output", outputs)):
        names = [t.name for t in tensors]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise RepositoryError(model, f"duplicate {kind} names: {dupes}")
    counts = [g.count for g in config.instance_group] or [1]
    if any(c < 0 for c in counts):
        raise RepositoryError(model, "instance_group count must not be negative")
    graph_level = None
    if config.HasField("optimization") and config.optimization.HasField("graph"):
        graph_level = config.optimization.graph.level
    return ModelSpec(
        name=model,
        platform=ONNX_PLATFORM,
        max_batch_size=int(config.max_batch_size),
        inputs=inputs,
        outputs=outputs,
        batching=_batching(model, config),
        instance_count=max(1, sum(c or 1 for c in counts)),
        graph_level=graph_level,
        default_model_filename=config.default_model_filename or DEFAULT_FILENAME,
        config=config,
    )


def select_versions(model: str, model_dir: Path, config: model_config_pb2.ModelConfig) -> list[int]:
    """Version directories to load, per ``version_policy`` (default: latest 1)."""
    available = sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())
    if not available:
        raise RepositoryError(model, f"no version directories (e.g. {model_dir}/1/) found")
    policy = config.version_policy
    which = policy.WhichOneof("policy_choice")
    if which == "all":
        return available
    if which == "specific":
        wanted = sorted(int(v) for v in policy.specific.versions)
        missing = [v for v in wanted if v not in available]
        if missing:
            raise RepositoryError(model, f"version_policy asks for missing versions {missing}")
        return wanted
    num = policy.latest.num_versions if which == "latest" else 1
    if num < 1:
        raise RepositoryError(model, "version_policy latest needs num_versions >= 1")
    return available[-num:]
