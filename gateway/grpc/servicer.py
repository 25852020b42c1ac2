"""The gateway's gRPC adapter (grpc.aio): Feed, Effects and the KServe v2 pass-through,
translation only, over GatewayCore."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

import grpc
from google.protobuf.message import DecodeError
from pydantic import ValidationError

from gateway.auth import key_from_headers
from gateway.core import GatewayCore
from gateway.events.schema import EventsBody
from gateway.feed import FeedBody
from inference.protocol.errors import InvalidInput
from protos.kserve.v2 import grpc_service_pb2 as kpb
from protos.tenfold.v1 import gateway_pb2 as pb
from protos.tenfold.v1 import gateway_pb2_grpc as pb_grpc
from servicekit import kserve_grpc
from servicekit.grpcstatus import abort
from servicekit.validation import validation_message

log = logging.getLogger("tenfold.gateway.grpc")


async def _abort(context: grpc.aio.ServicerContext, exc: BaseException) -> None:
    await abort(context, exc, log)


def _metadata(context) -> dict[str, str]:
    """The call's text metadata (binary ``-bin`` entries left out)."""
    return {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}


@asynccontextmanager
async def _admitted(core: GatewayCore, context, route: str, effect: str | None = None):
    """Admit the call through the core and map every error once."""
    metadata = _metadata(context)
    remaining = context.time_remaining()
    try:
        async with core.admit(
            route, key_from_headers(metadata), remaining, metadata.get("x-request-id"), effect
        ) as call:
            yield call
    except (grpc.aio.AbortError, grpc.aio.UsageError):
        raise
    except Exception as exc:  # TenfoldError -> its status; anything else logged, INTERNAL
        await _abort(context, exc)


class FeedServicer(pb_grpc.FeedServicer):
    def __init__(self, core: GatewayCore) -> None:
        self.core = core

    async def GetFeed(self, request: pb.FeedRequest, context) -> pb.FeedResponse:
        async with _admitted(self.core, context, "feed") as call:
            try:
                ctx = request.context
                context = {"device": ctx.device, "network": ctx.network}
                if ctx.HasField("hour"):
                    context["hour"] = ctx.hour
                body = FeedBody(
                    user_id=request.user_id,
                    count=request.count or 20,
                    context={k: v for k, v in context.items() if v != ""},
                    history=list(request.history),
                    seen=list(request.seen),
                )
            except ValidationError as exc:
                raise InvalidInput(validation_message(exc, first_only=True)) from None
            answer = await self.core.feed(body, call)
            return pb.FeedResponse(
                items=[
                    pb.FeedItem(item_id=i.item_id, score=i.score, source=i.source)
                    for i in answer.items
                ],
                model_version=answer.model_version,
                experiment=answer.experiment,
                request_id=answer.request_id,
                history_source=answer.history_source,
                state=answer.state,
            )


class EventsServicer(pb_grpc.EventsServicer):
    def __init__(self, core: GatewayCore) -> None:
        self.core = core

    async def Publish(self, request: pb.PublishEventsRequest, context):
        async with _admitted(self.core, context, "events") as call:
            try:
                events = []
                for e in request.events:
                    event = {"user_id": e.user_id, "item_id": e.item_id, "type": e.type}
                    if e.HasField("watch_ms"):
                        event["watch_ms"] = e.watch_ms
                    if e.HasField("ts"):
                        event["ts"] = e.ts
                    events.append(event)
                body = EventsBody(events=events)
            except ValidationError as exc:
                raise InvalidInput(validation_message(exc, first_only=True)) from None
            answer = await self.core.publish_events(body, call)
            return pb.PublishEventsResponse(
                accepted=answer.accepted, ids=answer.ids, request_id=answer.request_id
            )

    async def EraseUserState(self, request: pb.EraseUserStateRequest, context):
        async with _admitted(self.core, context, "events") as call:
            erased = await self.core.erase_user(request.user_id, call)
            return pb.EraseUserStateResponse(erased=erased, request_id=call.request_id)


class EffectsServicer(pb_grpc.EffectsServicer):
    def __init__(self, core: GatewayCore) -> None:
        self.core = core

    async def List(self, request, context) -> pb.ListEffectsResponse:
        try:
            self.core.auth.identify(key_from_headers(_metadata(context)))
        except Exception as exc:
            await _abort(context, exc)
        return pb.ListEffectsResponse(
            effects=[pb.EffectInfo(**e) for e in self.core.effects.listing()]
        )

    async def Apply(self, request: pb.ApplyEffectRequest, context) -> pb.ApplyEffectResponse:
        async with _admitted(self.core, context, "effects", request.effect) as call:
            rendered = await self.core.apply_effect(
                request.effect,
                request.image,
                request.size or None,
                request.output_format or "jpeg",
                call,
            )
            return pb.ApplyEffectResponse(
                image=rendered.data,
                content_type=rendered.content_type,
                width=rendered.width,
                height=rendered.height,
                request_id=call.request_id,
            )


#: pass-through methods and how to find the model name in their request
_BY_MODEL = {
    "ModelInfer": (kpb.ModelInferRequest, "model_name"),
    "ModelMetadata": (kpb.ModelMetadataRequest, "name"),
    "ModelReady": (kpb.ModelReadyRequest, "name"),
    "ModelConfig": (kpb.ModelConfigRequest, "name"),
}


def kserve_passthrough(core: GatewayCore) -> grpc.GenericRpcHandler:
    """KServe v2 over gRPC: model methods go, bytes unchanged, to the model's pool;
    server health and metadata are answered by the gateway."""

    def forward(method: str, request_type, field: str):
        path = kserve_grpc.method_path(method)

        async def handler(raw: bytes, context) -> bytes:
            try:
                model = getattr(request_type.FromString(raw), field)
            except Exception:
                await _abort(context, InvalidInput("request: not a valid protobuf message"))
            async with _admitted(core, context, "infer") as call:
                return await core.infer_raw(model, path, raw, call)

        return grpc.unary_unary_rpc_method_handler(handler)

    async def live(raw: bytes, context) -> bytes:
        return kpb.ServerLiveResponse(live=True).SerializeToString()

    async def ready(raw: bytes, context) -> bytes:
        return kpb.ServerReadyResponse(ready=core.is_ready()).SerializeToString()

    async def metadata(raw: bytes, context) -> bytes:
        return kpb.ServerMetadataResponse(
            name="tenfold-gateway", version="0.1.0"
        ).SerializeToString()

    handlers = {m: forward(m, t, f) for m, (t, f) in _BY_MODEL.items()}
    handlers["ServerLive"] = grpc.unary_unary_rpc_method_handler(live)
    handlers["ServerReady"] = grpc.unary_unary_rpc_method_handler(ready)
    handlers["ServerMetadata"] = grpc.unary_unary_rpc_method_handler(metadata)
    return grpc.method_handlers_generic_handler(kserve_grpc.SERVICE_NAME, handlers)


def parsing_handler(service: str, servicer: object) -> grpc.GenericRpcHandler:
    """The unary methods of ``service`` (in tenfold.v1) on ``servicer``, taking the raw
    request bytes and parsing them in the handler: a body that does not parse is the
    caller's error, INVALID_ARGUMENT naming the message (grpc's own deserializer would
    answer UNKNOWN with an internal type name)."""
    descriptor = pb.DESCRIPTOR.services_by_name[service]
    handlers = {}
    for method in descriptor.methods:
        request_type = getattr(pb, method.input_type.name)
        response_type = getattr(pb, method.output_type.name)
        bound = getattr(servicer, method.name)

        async def call(raw: bytes, context, bound=bound, request_type=request_type):
            try:
                request = request_type.FromString(raw)
            except DecodeError:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"the request is not a valid {request_type.DESCRIPTOR.full_name}",
                )
            return await bound(request, context)

        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            call, response_serializer=response_type.SerializeToString
        )
    return grpc.method_handlers_generic_handler(descriptor.full_name, handlers)
