"""Talking KServe v2 gRPC to a pool: encode/decode tensors, map upstream errors."""

from __future__ import annotations

import grpc
import numpy as np

from gateway.pools import Endpoint, Pool, UpstreamError
from inference.protocol import errors
from inference.protocol.datatypes import array_from_raw, array_to_raw, kserve_datatype
from inference.protocol.kserve_grpc import method_path
from protos.kserve.v2 import grpc_service_pb2 as pb

INFER = method_path("ModelInfer")

#: upstream gRPC code -> (error class, retry on another endpoint, endpoint's fault)
_UPSTREAM = {
    grpc.StatusCode.UNAVAILABLE: (errors.ServerUnavailable, True, True),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (errors.Overloaded, True, False),
    grpc.StatusCode.DEADLINE_EXCEEDED: (errors.DeadlineExceeded, False, False),
    grpc.StatusCode.INVALID_ARGUMENT: (errors.InvalidInput, False, False),
    grpc.StatusCode.NOT_FOUND: (errors.ModelNotFound, False, False),
    grpc.StatusCode.CANCELLED: (errors.Cancelled, False, False),
}


def upstream_error(exc: grpc.aio.AioRpcError, pool: str) -> UpstreamError:
    cls, retryable, fault = _UPSTREAM.get(exc.code(), (None, False, True))
    if cls is None:
        return UpstreamError(errors.InternalError(f"pool {pool!r} failed"), False, True)
    return UpstreamError(cls(exc.details() or exc.code().name), retryable, fault)


async def call_raw(
    pool: Pool,
    path: str,
    request: bytes,
    deadline: float,
    metadata: tuple[tuple[str, str], ...] = (),
) -> bytes:
    """Send serialised ``request`` to ``path`` on one endpoint of ``pool``."""

    async def attempt(endpoint: Endpoint, timeout_s: float) -> bytes:
        try:
            return await endpoint.method(path)(request, timeout=timeout_s, metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            raise upstream_error(exc, pool.name) from None

    return await pool.call(attempt, deadline)


def infer_request(
    model: str, inputs: dict[str, np.ndarray], version: str = "", request_id: str = ""
) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, model_version=version, id=request_id)
    for name, array in inputs.items():
        datatype = kserve_datatype(array.dtype)
        request.inputs.add(name=name, datatype=datatype, shape=array.shape)
        request.raw_input_contents.append(array_to_raw(array, datatype))
    return request


def outputs(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    result = {}
    for i, out in enumerate(response.outputs):
        raw = response.raw_output_contents[i]
        result[out.name] = array_from_raw(raw, out.datatype, tuple(out.shape), out.name)
    return result


async def infer(
    pool: Pool,
    model: str,
    inputs: dict[str, np.ndarray],
    deadline: float,
    version: str = "",
    request_id: str = "",
) -> tuple[dict[str, np.ndarray], str]:
    """Run ``model`` on ``inputs`` through ``pool``; returns (outputs, model version)."""
    request = infer_request(model, inputs, version, request_id).SerializeToString()
    raw = await call_raw(pool, INFER, request, deadline)
    response = pb.ModelInferResponse.FromString(raw)
    return outputs(response), response.model_version
