"""The transport-free core of an inference pod: health, metadata and inference.

The HTTP and gRPC adapters are thin translations of this class's calls; every error
they can return is a ``TenfoldError`` raised here or in the protocol codecs.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import numpy as np

from inference.metrics import InferenceMetrics, ModelObserver
from inference.protocol.datatypes import KSERVE_TO_NUMPY
from inference.protocol.errors import (
    Cancelled,
    InternalError,
    ModelNotFound,
    ModelNotReady,
    ServerUnavailable,
    TenfoldError,
)
from inference.protocol.tensors import InferRequest, InferResponse, Tensor
from inference.repository.spec import ModelSpec
from inference.runtime.batcher import DynamicBatcher
from inference.validation import model_inputs, queue_timeout_s
from protos.kserve.v2 import model_config_pb2

SERVER_NAME = "tenfold"
EXTENSIONS = ("binary_tensor_data", "model_configuration", "parameters")


@dataclass(slots=True)
class ServedVersion:
    spec: ModelSpec
    version: str
    batcher: DynamicBatcher
    observer: ModelObserver
    ready: bool = False


@dataclass(slots=True)
class ModelEntry:
    name: str
    versions: dict[str, ServedVersion] = field(default_factory=dict)
    #: why the model is not served (broken repository entry), or None
    error: str | None = None
    #: the highest version number, served when a request names no version
    latest: ServedVersion | None = None

    def add(self, served: ServedVersion) -> None:
        self.versions[served.version] = served
        if self.latest is None or int(served.version) > int(self.latest.version):
            self.latest = served


class DataPlane:
    def __init__(self, metrics: InferenceMetrics, server_version: str) -> None:
        self._metrics = metrics
        self._server_version = server_version
        self._models: dict[str, ModelEntry] = {}
        self._loaded = False
        self._draining = False  # not ready: balancers send new work elsewhere
        self._refusing = False  # new inferences are answered UNAVAILABLE
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    # -- registry (used by the server while it starts and stops) ----------------------
    def add_version(self, served: ServedVersion) -> None:
        self._models.setdefault(served.spec.name, ModelEntry(served.spec.name)).add(served)

    def add_failed(self, name: str, reason: str) -> None:
        self._models.setdefault(name, ModelEntry(name)).error = reason

    def mark_ready(self, served: ServedVersion) -> None:
        served.ready = True
        self._metrics.model_ready.labels(model=served.spec.name, version=served.version).set(1)

    def finish_loading(self) -> None:
        self._loaded = True

    def served_versions(self) -> list[ServedVersion]:
        return [v for e in self._models.values() for v in e.versions.values()]

    def failed_models(self) -> dict[str, str]:
        return {n: e.error for n, e in self._models.items() if e.error}

    # -- health ------------------------------------------------------------------------
    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        if not self._loaded or self._draining:
            return False
        return all(v.ready for v in self.served_versions())

    def begin_drain(self) -> None:
        """Not ready from now on; inferences are still served until refuse_new()."""
        self._draining = True

    def refuse_new(self) -> None:
        """New inferences are answered UNAVAILABLE (retry elsewhere)."""
        self._draining = True
        self._refusing = True

    @property
    def draining(self) -> bool:
        return self._draining

    @property
    def in_flight(self) -> int:
        return self._in_flight

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no inference is in flight; False if ``timeout_s`` passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    # -- metadata ----------------------------------------------------------------------
    def server_metadata(self) -> dict:
        return {
            "name": SERVER_NAME,
            "version": self._server_version,
            "extensions": list(EXTENSIONS),
        }

    def _entry(self, name: str) -> ModelEntry:
        entry = self._models.get(name)
        if entry is None:
            raise ModelNotFound(f"unknown model '{name}'")
        return entry

    def resolve(self, name: str, version: str = "") -> ServedVersion:
        entry = self._entry(name)
        if entry.error is not None:
            raise ModelNotReady(f"model '{name}' is not available: {entry.error}")
        if not version:
            served = entry.latest
            if served is None:
                raise ModelNotReady(f"model '{name}' has no loaded version")
            return served
        served = entry.versions.get(version)
        if served is None:
            known = ", ".join(sorted(entry.versions, key=int))
            raise ModelNotFound(f"model '{name}' has no version '{version}' (versions: {known})")
        return served

    def model_ready(self, name: str, version: str = "") -> bool:
        try:
            return self.resolve(name, version).ready and not self._draining
        except ModelNotReady:
            return False

    def model_metadata(self, name: str, version: str = "") -> dict:
        served = self.resolve(name, version)
        spec = served.spec
        lead = [-1] if spec.batched else []
        return {
            "name": spec.name,
            "versions": sorted(self._models[name].versions, key=int),
            "platform": spec.platform,
            "inputs": [
                {"name": t.name, "datatype": t.datatype, "shape": lead + list(t.dims)}
                for t in spec.inputs
            ],
            "outputs": [
                {"name": t.name, "datatype": t.datatype, "shape": lead + list(t.dims)}
                for t in spec.outputs
            ],
        }

    def model_config(self, name: str, version: str = "") -> model_config_pb2.ModelConfig:
        return self.resolve(name, version).spec.config

    def repository_index(self) -> list[dict]:
        index = []
        for name, entry in sorted(self._models.items()):
            if entry.error is not None:
                index.append({"name": name, "state": "UNAVAILABLE", "reason": entry.error})
            for version, served in sorted(entry.versions.items()):
                state = "READY" if served.ready else "LOADING"
                index.append({"name": name, "version": version, "state": state})
        return index

    # -- inference ---------------------------------------------------------------------
    def servable(self, name: str, version: str = "") -> ServedVersion:
        """The version that would serve an inference now, or the error saying why not.

        Adapters call it before decoding a body, so a client learns of an unknown or
        unavailable model before any complaint about its tensors."""
        if self._refusing:
            raise ServerUnavailable("server is shutting down; send the request elsewhere")
        served = self.resolve(name, version)
        if not served.ready:
            raise ModelNotReady(f"model '{served.spec.name}' is still loading")
        return served

    async def infer(self, request: InferRequest, deadline_s: float | None = None) -> InferResponse:
        """Run ``request``; ``deadline_s`` is the caller's remaining time, if it has one
        (a gRPC deadline): a request the queue cannot serve in time is refused at once."""
        served = self.servable(request.model_name, request.model_version)
        start = time.perf_counter()
        self._in_flight += 1
        self._idle.clear()
        try:
            response = await self._infer(served, request, deadline_s)
        except TenfoldError as exc:
            served.observer.failed(type(exc).__name__)
            raise
        except asyncio.CancelledError:
            served.observer.failed(Cancelled.__name__)
            raise
        except Exception as exc:
            served.observer.failed(InternalError.__name__)
            raise InternalError(f"model '{served.spec.name}' failed to run") from exc
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()
        served.observer.finished(time.perf_counter() - start)
        return response

    async def _infer(
        self, served: ServedVersion, request: InferRequest, deadline_s: float | None
    ) -> InferResponse:
        spec = served.spec
        feed, rows = model_inputs(spec, request)
        outputs = await served.batcher.submit(
            feed, rows, queue_timeout_s(request), deadline_s=deadline_s
        )
        wanted = [o.name for o in request.outputs] or [t.name for t in spec.outputs]
        tensors = []
        for name in wanted:
            datatype = spec.output(name).datatype
            value = outputs[name]
            if datatype != "BYTES" and value.dtype != KSERVE_TO_NUMPY[datatype]:
                value = value.astype(KSERVE_TO_NUMPY[datatype])
            elif datatype == "BYTES":
                value = np.asarray(value, dtype=np.object_)
            tensors.append(Tensor(name, datatype, tuple(value.shape), value))
        return InferResponse(
            model_name=spec.name,
            model_version=served.version,
            outputs=tuple(tensors),
            id=request.id,
        )
