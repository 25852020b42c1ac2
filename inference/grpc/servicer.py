"""The KServe v2 gRPC service of an inference pod, over the DataPlane."""

from __future__ import annotations

import logging

import grpc

from inference.dataplane import DataPlane
from inference.grpc.codec import decode_request, encode_response
from protos.kserve.v2 import grpc_service_pb2 as pb
from servicekit.grpcstatus import abort

log = logging.getLogger("tenfold.inference.grpc")


async def _abort(context: grpc.aio.ServicerContext, exc: Exception):
    await abort(context, exc, log)


class InferenceServicer:
    """Method names match the service; see servicekit.kserve_grpc."""

    def __init__(self, dataplane: DataPlane) -> None:
        self._dp = dataplane

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=self._dp.live())

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self._dp.ready())

    async def ModelReady(self, request, context):
        try:
            return pb.ModelReadyResponse(ready=self._dp.model_ready(request.name, request.version))
        except Exception as exc:
            await _abort(context, exc)

    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(**self._dp.server_metadata())

    async def ModelMetadata(self, request, context):
        try:
            meta = self._dp.model_metadata(request.name, request.version)
        except Exception as exc:
            await _abort(context, exc)
        response = pb.ModelMetadataResponse(
            name=meta["name"], versions=meta["versions"], platform=meta["platform"]
        )
        for entry in meta["inputs"]:
            response.inputs.add(**entry)
        for entry in meta["outputs"]:
            response.outputs.add(**entry)
        return response

    async def ModelConfig(self, request, context):
        try:
            return pb.ModelConfigResponse(
                config=self._dp.model_config(request.name, request.version)
            )
        except Exception as exc:
            await _abort(context, exc)

    async def ModelInfer(self, request, context):
        served = None
        try:
            served = self._dp.servable(request.model_name, request.model_version)
            response = await self._dp.infer(decode_request(request), context.time_remaining())
        except Exception as exc:
            await abort(context, exc, log, _load(served))
        context.set_trailing_metadata(_load(served))
        return encode_response(response)


def _load(served) -> tuple[tuple[str, str], ...]:
    """The load report of the model version that was asked (none if it was unknown)."""
    report = None if served is None else served.batcher.load_report()
    return () if report is None else report.metadata()
