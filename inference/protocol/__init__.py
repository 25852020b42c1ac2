"""Transport-free request/response types, the error hierarchy and its status table, the
datatype table, and the KServe v2 codecs (HTTP JSON/binary, gRPC messages).

Imports only the standard library, numpy, orjson and ``protos`` (docs/architecture.md,
"Packages and layering"; checked by import-linter).
"""

from inference.protocol.errors import (
    Cancelled,
    InternalError,
    InvalidInput,
    ModelNotFound,
    ModelNotReady,
    Overloaded,
    PayloadTooLarge,
    ServerUnavailable,
    TenfoldError,
    UnsupportedMediaType,
)
from inference.protocol.tensors import InferRequest, InferResponse, RequestedOutput, Tensor

__all__ = [
    "Cancelled",
    "InferRequest",
    "InferResponse",
    "InternalError",
    "InvalidInput",
    "ModelNotFound",
    "ModelNotReady",
    "Overloaded",
    "PayloadTooLarge",
    "RequestedOutput",
    "ServerUnavailable",
    "TenfoldError",
    "Tensor",
    "UnsupportedMediaType",
]
