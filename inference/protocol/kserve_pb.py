"""KServe v2 gRPC messages from and to numpy arrays (``raw_*_contents``), for any client
of a pod: the gateway, the load generator, tests."""

from __future__ import annotations

import numpy as np

from inference.protocol.datatypes import array_from_raw, array_to_raw, kserve_datatype
from protos.kserve.v2 import grpc_service_pb2 as pb


def infer_request(
    model: str, inputs: dict[str, np.ndarray], version: str = "", request_id: str = ""
) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, model_version=version, id=request_id)
    for name, array in inputs.items():
        datatype = kserve_datatype(array.dtype)
        request.inputs.add(name=name, datatype=datatype, shape=array.shape)
        request.raw_input_contents.append(array_to_raw(array, datatype))
    return request


def infer_outputs(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    result = {}
    for i, out in enumerate(response.outputs):
        raw = response.raw_output_contents[i]
        result[out.name] = array_from_raw(raw, out.datatype, tuple(out.shape), out.name)
    return result
