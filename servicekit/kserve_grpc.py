"""The KServe v2 gRPC service under its public name, for servers and clients.

Our generated messages live in the protobuf package ``tenfold.kserve.v2`` so that they
can share a process with tritonclient's own copy (package ``inference``). On the wire
the service must be ``inference.GRPCInferenceService``; this module builds the method
handlers, client method paths and a reflection descriptor pool under that name, all
derived from the generated service descriptor (no hand-written stubs).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from protos.kserve.v2 import grpc_service_pb2, model_config_pb2

SERVICE_NAME = "inference.GRPCInferenceService"
_SERVICE = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]


def method_names() -> list[str]:
    return [m.name for m in _SERVICE.methods]


def method_path(method: str) -> str:
    """``ModelInfer`` -> ``/inference.GRPCInferenceService/ModelInfer``."""
    return f"/{SERVICE_NAME}/{method}"


def _message_class(descriptor) -> type:
    return message_factory.GetMessageClass(descriptor)


def generic_handler(servicer: Any) -> grpc.GenericRpcHandler:
    """Method handlers for every unary method ``servicer`` implements."""
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in _SERVICE.methods:
        impl: Callable | None = getattr(servicer, method.name, None)
        if impl is None:
            continue
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            impl,
            request_deserializer=_message_class(method.input_type).FromString,
            response_serializer=_message_class(method.output_type).SerializeToString,
        )
    return grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)


def client_callables(channel: grpc.aio.Channel) -> dict[str, grpc.aio.UnaryUnaryMultiCallable]:
    """One unary-unary callable per method of the service, on ``channel``."""
    return {
        method.name: channel.unary_unary(
            method_path(method.name),
            request_serializer=_message_class(method.input_type).SerializeToString,
            response_deserializer=_message_class(method.output_type).FromString,
        )
        for method in _SERVICE.methods
    }


def _rename_types(messages, old: str, new: str) -> None:
    for message in messages:
        for fld in message.field:
            if fld.type_name.startswith(old):
                fld.type_name = new + fld.type_name[len(old) :]
        _rename_types(message.nested_type, old, new)


def reflection_pool() -> descriptor_pool.DescriptorPool:
    """A private descriptor pool describing the service under its public package name,
    so server reflection (grpcurl, grpcui) shows ``inference.GRPCInferenceService``."""
    old, new = ".tenfold.kserve.v2.", ".inference."
    pool = descriptor_pool.DescriptorPool()
    for module in (model_config_pb2, grpc_service_pb2):
        proto = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(proto)
        proto.package = "inference"
        _rename_types(proto.message_type, old, new)
        for service in proto.service:
            for method in service.method:
                method.input_type = new + method.input_type[len(old) :]
                method.output_type = new + method.output_type[len(old) :]
        pool.Add(proto)
    return pool


#: the path of the method every client calls most
MODEL_INFER = method_path("ModelInfer")
