"""Validate a model's (complete) config into a ModelSpec.

Reading ``config.pbtxt`` and the facts derived from it (versions, files, instances,
threads) live in ``model``; auto-completion of missing inputs/outputs from the ONNX
model lives in ``autocomplete``.
"""

from __future__ import annotations

import dataclasses

from inference.protocol.datatypes import from_config_type
from inference.repository.errors import RepositoryError
from inference.repository.model import ModelDir
from inference.repository.spec import BatchingPolicy, ModelSpec, TensorSpec
from protos.kserve.v2 import model_config_pb2

ONNX_PLATFORM = "onnxruntime_onnx"
ONNX_BACKEND = "onnxruntime"
#: ``parameters { key: "tenfold.value_range.<input>" value { string_value: "lo:hi" } }``
#: (every element) or ``"lo:hi,lo:hi,..."`` (one per position of the last dimension):
#: the integer values an input may hold, inclusive; the pod refuses others (400)
RANGE_PREFIX = "tenfold.value_range."
_INTEGER = {"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}


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


def _value_ranges(model: str, config, inputs: tuple[TensorSpec, ...]) -> tuple[TensorSpec, ...]:
    """``inputs`` with the value ranges the config's parameters declare."""
    by_name = {t.name: t for t in inputs}
    for key, value in config.parameters.items():
        if not key.startswith(RANGE_PREFIX):
            continue
        name = key[len(RANGE_PREFIX) :]
        tensor = by_name.get(name)
        if tensor is None or tensor.datatype not in _INTEGER:
            raise RepositoryError(model, f"parameter {key!r}: no integer input named {name!r}")
        text = value.string_value
        try:
            ranges = tuple(
                (int(lo), int(hi)) for lo, hi in (part.split(":") for part in text.split(","))
            )
        except ValueError:
            raise RepositoryError(
                model, f"parameter {key!r}: {text!r} is not lo:hi or lo:hi,lo:hi,..."
            ) from None
        if any(lo > hi for lo, hi in ranges):
            raise RepositoryError(model, f"parameter {key!r}: a range has lo > hi in {text!r}")
        last = tensor.dims[-1] if tensor.dims else 1
        if len(ranges) > 1 and last != len(ranges):
            raise RepositoryError(
                model,
                f"parameter {key!r}: {len(ranges)} ranges, but the last dimension of "
                f"{name!r} is {last}",
            )
        by_name[name] = dataclasses.replace(tensor, value_range=ranges)
    return tuple(by_name[t.name] for t in inputs)


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


def to_spec(model_dir: ModelDir, config: model_config_pb2.ModelConfig) -> ModelSpec:
    """Validate ``model_dir``'s config, completed from the ONNX model as ``config``, and
    build the runtime's view of it."""
    model = model_dir.name
    if config.name and config.name != model:
        raise RepositoryError(
            model, f"config name '{config.name}' does not match its directory '{model}'"
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
    inputs = _value_ranges(model, config, inputs)
    outputs = tuple(_tensor(model, "output", t, batched) for t in config.output)
    for kind, tensors in (("input", inputs), ("output", outputs)):
        names = [t.name for t in tensors]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise RepositoryError(model, f"duplicate {kind} names: {dupes}")
    instance_count = model_dir.instance_count
    return ModelSpec(
        name=model,
        platform=ONNX_PLATFORM,
        max_batch_size=int(config.max_batch_size),
        inputs=inputs,
        outputs=outputs,
        batching=_batching(model, config),
        instance_count=instance_count,
        graph_level=model_dir.graph_level,
        default_model_filename=model_dir.model_filename,
        config=config,
    )
