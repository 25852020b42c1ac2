"""The gateway's upstream side: pools of KServe v2 endpoints (balancing, retry budget,
hedging, ejection, health checks), the KServe gRPC client and the HTTP pass-through
client, behind the small interfaces the core and the pipelines depend on.

Built in one place (``build_upstreams``); ``Upstream.update`` is how config, the mesh
control plane and the autoscaler change a pool's endpoints at run time.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import numpy as np

from gateway.settings import EndpointSettings
from gateway.upstream.passthrough import HttpRequest


class ModelClient(Protocol):
    """Inference on one pool's models (what the feed and effects pipelines call)."""

    async def infer(
        self,
        model: str,
        inputs: dict[str, np.ndarray],
        deadline: float,
        version: str = "",
        request_id: str = "",
    ) -> tuple[dict[str, np.ndarray], str]: ...


class Upstream(Protocol):
    """Everything the core asks of the upstream side."""

    def client(self, pool: str) -> ModelClient: ...

    async def infer_raw(
        self, model: str, method_path: str, request: bytes, deadline: float
    ) -> bytes:
        """KServe v2 gRPC pass-through: ``request`` to the model's pool, unchanged."""

    async def http(self, model: str, request: HttpRequest, deadline: float):
        """KServe v2 HTTP pass-through to an endpoint of the model's pool: the
        endpoint's (status, kept headers, body)."""

    def ready(self) -> dict[str, int]:
        """Ready endpoints per pool."""

    def pool_for_model(self, model: str) -> str:
        """The pool that serves ``model`` (ModelNotFound if none)."""

    def update(self, pool: str, endpoints: Iterable[EndpointSettings]) -> None: ...

    async def start(self) -> None: ...

    async def check_health(self) -> None: ...

    async def close(self) -> None: ...
