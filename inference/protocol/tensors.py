"""Transport-free inference request and response types."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True, slots=True)
class Tensor:
    """A named tensor; ``data`` has ``shape`` and the numpy dtype of ``datatype``."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray


@dataclass(frozen=True, slots=True)
class RequestedOutput:
    name: str
    #: return this output in the binary extension (HTTP); ignored by gRPC (always raw)
    binary: bool | None = None


@dataclass(frozen=True, slots=True)
class InferRequest:
    model_name: str
    model_version: str  # "" means the latest ready version
    inputs: tuple[Tensor, ...]
    #: empty means "all outputs"
    outputs: tuple[RequestedOutput, ...] = ()
    id: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class InferResponse:
    model_name: str
    model_version: str
    outputs: tuple[Tensor, ...]
    id: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
