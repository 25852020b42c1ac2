"""KServe v2 protobuf messages <-> protocol types."""

from __future__ import annotations

import numpy as np

from inference.protocol.datatypes import (
    array_from_raw,
    array_to_raw,
    element_count,
    numpy_dtype,
)
from inference.protocol.errors import InvalidInput
from inference.protocol.tensors import InferRequest, InferResponse, RequestedOutput, Tensor
from protos.kserve.v2 import grpc_service_pb2 as pb

#: which InferTensorContents field carries each datatype
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def parameter_value(param: pb.InferParameter):
    which = param.WhichOneof("parameter_choice")
    return None if which is None else getattr(param, which)


def _contents_array(tensor, shape: tuple[int, ...]) -> np.ndarray:
    name, datatype = tensor.name, tensor.datatype
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise InvalidInput(f"input '{name}': {datatype} data must be sent in raw_input_contents")
    values = getattr(tensor.contents, field)
    count = element_count(shape)
    if len(values) != count:
        raise InvalidInput(
            f"input '{name}': shape {list(shape)} needs {count} elements, got {len(values)}"
        )
    if datatype == "BYTES":
        out = np.empty(count, dtype=np.object_)
        out[:] = list(values)
        return out.reshape(shape)
    return np.asarray(values, dtype=numpy_dtype(datatype)).reshape(shape)


def decode_request(msg: pb.ModelInferRequest) -> InferRequest:
    raw = msg.raw_input_contents
    if raw and len(raw) != len(msg.inputs):
        raise InvalidInput(
            f"raw_input_contents has {len(raw)} entries for {len(msg.inputs)} inputs"
        )
    if not msg.inputs:
        raise InvalidInput("the request has no inputs")
    inputs = []
    for index, tensor in enumerate(msg.inputs):
        if not tensor.name:
            raise InvalidInput(f"inputs[{index}] has no name")
        numpy_dtype(tensor.datatype)
        if any(d < 0 for d in tensor.shape):
            raise InvalidInput(f"input '{tensor.name}': shape {list(tensor.shape)} is negative")
        shape = tuple(tensor.shape)
        if raw:
            data = array_from_raw(raw[index], tensor.datatype, shape, tensor.name)
        else:
            data = _contents_array(tensor, shape)
        inputs.append(Tensor(tensor.name, tensor.datatype, shape, data))
    outputs = tuple(RequestedOutput(o.name) for o in msg.outputs)
    params = {k: parameter_value(v) for k, v in msg.parameters.items()}
    return InferRequest(
        model_name=msg.model_name,
        model_version=msg.model_version,
        inputs=tuple(inputs),
        outputs=outputs,
        id=msg.id,
        parameters=params,
    )


def encode_response(response: InferResponse) -> pb.ModelInferResponse:
    msg = pb.ModelInferResponse(
        model_name=response.model_name, model_version=response.model_version, id=response.id
    )
    for tensor in response.outputs:
        msg.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=list(tensor.shape))
        msg.raw_output_contents.append(array_to_raw(tensor.data, tensor.datatype))
    return msg
