"""The warm-up inference every model version runs before the pod reports ready."""

from __future__ import annotations

import numpy as np

from inference.protocol.datatypes import from_config_type, numpy_dtype
from inference.repository.spec import ModelSpec
from protos.kserve.v2 import model_config_pb2


def _array(datatype: str, shape: tuple[int, ...], random: bool, rng) -> np.ndarray:
    if datatype == "BYTES":
        out = np.empty(shape, dtype=np.object_)
        out.fill("")
        return out
    dtype = numpy_dtype(datatype)
    if random and dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    return np.zeros(shape, dtype=dtype)


def warmup_inputs(spec: ModelSpec) -> tuple[dict[str, np.ndarray], int]:
    """Inputs from the config's first ``model_warmup`` entry, else zeros of batch 1
    with every variable dimension set to 1."""
    rng = np.random.default_rng(0)
    if spec.config.model_warmup:
        warm = spec.config.model_warmup[0]
        rows = max(1, warm.batch_size)
        feed = {}
        for name, entry in warm.inputs.items():
            datatype = from_config_type(model_config_pb2.DataType.Name(entry.data_type))
            shape = ((rows,) if spec.batched else ()) + tuple(entry.dims)
            feed[name] = _array(datatype, shape, entry.random_data, rng)
        return feed, rows
    feed = {}
    for tensor in spec.inputs:
        if tensor.optional:
            continue
        dims = tuple(1 if d == -1 else d for d in tensor.dims)
        shape = ((1,) if spec.batched else ()) + dims
        feed[tensor.name] = _array(tensor.datatype, shape, False, rng)
    return feed, 1
