"""The KServe v2 gRPC client of a pool: raw calls (pass-through) and numpy inference."""

from __future__ import annotations

import grpc
import numpy as np

from gateway.upstream.errors import from_status
from gateway.upstream.pools import Endpoint, Pool, PoolRegistry
from inference.protocol.kserve_pb import infer_outputs, infer_request
from protos.kserve.v2 import grpc_service_pb2 as pb
from servicekit.kserve_grpc import MODEL_INFER


async def call_raw(
    pool: Pool,
    path: str,
    request: bytes,
    deadline: float,
    metadata: tuple[tuple[str, str], ...] = (),
) -> bytes:
    """Send serialised ``request`` to ``path`` on one endpoint of ``pool``."""

    async def attempt(endpoint: Endpoint, timeout_s: float) -> bytes:
        call = endpoint.method(path)(request, timeout=timeout_s, metadata=metadata)
        try:
            raw = await call
        except grpc.aio.AioRpcError as exc:
            pool.reported(endpoint, exc.trailing_metadata())
            raise from_status(exc.code().name, exc.details(), pool.name) from None
        pool.reported(endpoint, await call.trailing_metadata())
        return raw

    return await pool.call(attempt, deadline)


class PoolClient:
    """Model inference through one named pool (what the feed and effects pipelines use);
    the pool is looked up per call, so a missing one answers 503 like any other route."""

    def __init__(self, pools: PoolRegistry, name: str) -> None:
        self.pools = pools
        self.name = name

    async def infer(
        self,
        model: str,
        inputs: dict[str, np.ndarray],
        deadline: float,
        version: str = "",
        request_id: str = "",
    ) -> tuple[dict[str, np.ndarray], str]:
        """Run ``model`` on ``inputs``; returns (outputs, model version)."""
        request = infer_request(model, inputs, version, request_id).SerializeToString()
        raw = await call_raw(self.pools.get(self.name), MODEL_INFER, request, deadline)
        response = pb.ModelInferResponse.FromString(raw)
        return infer_outputs(response), response.model_version
