"""The KServe v2 clients of a pool: raw gRPC calls (pass-through) and numpy inference,
over gRPC or over HTTP with the binary tensor extension (``PoolSettings.transport``)."""

from __future__ import annotations

from typing import Literal

import aiohttp
import grpc
import numpy as np
import orjson
from aiohttp import ClientTimeout

from gateway.upstream.errors import from_status, timed_out, unreachable
from gateway.upstream.passthrough import HttpPassthrough
from gateway.upstream.pools import Endpoint, Pool, PoolRegistry
from inference.protocol.errors import InternalError, InvalidInput
from inference.protocol.kserve_http import (
    HEADER_LENGTH,
    decode_binary_response,
    encode_binary_request,
    timeout_header,
)
from inference.protocol.kserve_pb import infer_outputs, infer_request
from protos.kserve.v2 import grpc_service_pb2 as pb
from servicekit.kserve_grpc import MODEL_INFER
from servicekit.web import ERROR_CODE

Transport = Literal["grpc", "http"]

#: an HTTP status -> the status name it stands for, when an answer does not say
#: (``ERROR_CODE``: a server other than ours, or a proxy's own answer)
_CODE_FOR_STATUS = {
    400: "INVALID_ARGUMENT",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


async def call_raw(
    pool: Pool,
    path: str,
    request: bytes,
    deadline: float,
    metadata: tuple[tuple[str, str], ...] = (),
) -> bytes:
    """Send serialised ``request`` to ``path`` on one endpoint of ``pool``."""

    async def attempt(endpoint: Endpoint, timeout_s: float) -> bytes:
        return await _grpc_attempt(pool, endpoint, path, request, timeout_s, metadata)

    return await pool.call(attempt, deadline)


async def _grpc_attempt(
    pool: Pool,
    endpoint: Endpoint,
    path: str,
    request: bytes,
    timeout_s: float,
    metadata: tuple[tuple[str, str], ...] = (),
) -> bytes:
    call = endpoint.method(path)(request, timeout=timeout_s, metadata=metadata)
    try:
        raw = await call
    except grpc.aio.AioRpcError as exc:
        pool.reported(endpoint, exc.trailing_metadata())
        raise from_status(exc.code().name, exc.details(), pool.name) from None
    pool.reported(endpoint, await call.trailing_metadata())
    return raw


class PoolClient:
    """Model inference through one named pool (what the feed and effects pipelines use);
    the pool is looked up per call, so a missing one answers 503 like any other route.

    ``transport`` "http" sends each call to the endpoint's KServe v2 HTTP address with
    the binary tensor extension (an endpoint without one, or whose HTTP address refuses
    the connection, is called over gRPC): on this
    machine a grpc.aio round trip of 196 KB each way cost ~0.8 ms of CPU on its two
    sides, aiohttp's ~0.26 (docs/benchmarks.md)."""

    def __init__(
        self,
        pools: PoolRegistry,
        name: str,
        http: HttpPassthrough | None = None,
        transport: Transport = "grpc",
    ) -> None:
        self.pools = pools
        self.name = name
        self.http = http
        self.transport: Transport = transport if http is not None else "grpc"

    async def infer(
        self,
        model: str,
        inputs: dict[str, np.ndarray],
        deadline: float,
        version: str = "",
        request_id: str = "",
    ) -> tuple[dict[str, np.ndarray], str]:
        """Run ``model`` on ``inputs``; returns (outputs, model version)."""
        pool = self.pools.get(self.name)
        # each encoded once, when an attempt first needs it (retries and hedges reuse it)
        grpc_request: bytes | None = None
        http_request: tuple[bytes, dict[str, str]] | None = None

        async def attempt(endpoint: Endpoint, timeout_s: float):
            nonlocal grpc_request, http_request
            if self.transport == "http" and endpoint.settings.http:
                if http_request is None:
                    http_request = encode_binary_request(inputs, request_id)
                try:
                    return await self._http_attempt(
                        pool, endpoint, model, version, http_request, timeout_s
                    )
                except aiohttp.ClientConnectorError:
                    # nothing was sent: the HTTP address does not answer (a pod restarted
                    # on its gRPC address, which health checks and identifies it, with
                    # another HTTP port): this attempt goes over gRPC
                    pass
            if grpc_request is None:
                grpc_request = infer_request(model, inputs, version, request_id).SerializeToString()
            raw = await _grpc_attempt(pool, endpoint, MODEL_INFER, grpc_request, timeout_s)
            response = pb.ModelInferResponse.FromString(raw)
            return infer_outputs(response), response.model_version

        return await pool.call(attempt, deadline)

    async def _http_attempt(
        self,
        pool: Pool,
        endpoint: Endpoint,
        model: str,
        version: str,
        request: tuple[bytes, dict[str, str]],
        timeout_s: float,
    ) -> tuple[dict[str, np.ndarray], str]:
        assert self.http is not None
        versioned = f"/versions/{version}" if version else ""
        url = f"http://{endpoint.settings.http}/v2/models/{model}{versioned}/infer"
        body, headers = request[0], {**request[1], **timeout_header(timeout_s)}
        try:
            async with self.http.session.post(
                url, data=body, headers=headers, timeout=ClientTimeout(total=timeout_s)
            ) as resp:
                data = await resp.read()
                pool.reported(endpoint, resp.headers.items())
                status, header_length = resp.status, resp.headers.get(HEADER_LENGTH)
                code = resp.headers.get(ERROR_CODE)
        except aiohttp.ClientConnectorError:
            raise  # not connected: the caller falls back to gRPC
        except (aiohttp.ClientConnectionError, ConnectionError) as exc:
            raise unreachable(pool.name, exc) from None
        except TimeoutError:
            raise timed_out() from None
        if status != 200:
            code = code or _CODE_FOR_STATUS.get(status, "INTERNAL")
            raise from_status(code, _message(data, status), pool.name)
        try:
            return decode_binary_response(
                data, int(header_length) if header_length is not None else None
            )
        except (InvalidInput, ValueError) as exc:
            raise InternalError(f"pool {pool.name!r}: a malformed answer ({exc})") from None


def _message(data: bytes, status: int) -> str:
    """The ``error`` of a JSON error answer, or what the status says."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("error"), str):
        return doc["error"]
    return f"HTTP {status}"
