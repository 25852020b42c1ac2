"""Transport-free request/response types, the error hierarchy and the datatype table.

Imports only the standard library, numpy and ``protos`` (see DESIGN.md, layering).
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
