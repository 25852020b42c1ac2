"""Fill in a missing or partial config.pbtxt from the ONNX model, as Triton does.

When a model has no config.pbtxt, or its config lists no inputs and outputs, the
inputs, outputs and batching are derived from the model: if every input and output
has a dynamic first dimension the model is batchable, gets ``max_batch_size`` =
``default_max_batch_size`` and an empty ``dynamic_batching`` block (Triton's default).
"""

from __future__ import annotations

from dataclasses import dataclass

from inference.protocol.datatypes import to_config_type
from protos.kserve.v2 import model_config_pb2


@dataclass(frozen=True, slots=True)
class ModelTensorInfo:
    """What the ONNX model itself declares for one tensor."""

    name: str
    datatype: str  # KServe name
    #: None entries are symbolic (dynamic) dimensions
    shape: tuple[int | None, ...]


@dataclass(frozen=True, slots=True)
class ModelIO:
    inputs: tuple[ModelTensorInfo, ...]
    outputs: tuple[ModelTensorInfo, ...]

    def batchable(self) -> bool:
        tensors = self.inputs + self.outputs
        return all(t.shape and t.shape[0] is None for t in tensors)


def needs_completion(config: model_config_pb2.ModelConfig) -> bool:
    return not config.input and not config.output


def complete(
    name: str,
    config: model_config_pb2.ModelConfig | None,
    io: ModelIO,
    default_max_batch_size: int,
) -> model_config_pb2.ModelConfig:
    out = model_config_pb2.ModelConfig()
    if config is not None:
        out.CopyFrom(config)
    if not out.name:
        out.name = name
    if not out.platform and not out.backend:
        out.platform = "onnxruntime_onnx"
    if not needs_completion(out):
        return out
    batched = io.batchable() and default_max_batch_size > 0
    if batched and out.max_batch_size == 0:
        out.max_batch_size = default_max_batch_size
        if not out.HasField("dynamic_batching"):
            out.dynamic_batching.SetInParent()
    skip = 1 if out.max_batch_size > 0 else 0
    for info, target in ((io.inputs, out.input), (io.outputs, out.output)):
        for tensor in info:
            entry = target.add()
            entry.name = tensor.name
            entry.data_type = model_config_pb2.DataType.Value(to_config_type(tensor.datatype))
            entry.dims.extend(-1 if d is None else d for d in tensor.shape[skip:])
    return out
