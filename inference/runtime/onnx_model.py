"""ONNX Runtime sessions for one model version: ``count`` instances, run off the loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument as ORT_INVALID_ARGUMENT

from inference.protocol.datatypes import from_ort_type
from inference.protocol.errors import InvalidInput
from inference.repository.autocomplete import ModelIO, ModelTensorInfo
from inference.repository.spec import ModelSpec
from inference.runtime.results import BatchResult

GRAPH_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
#: Triton's ``optimization { graph { level } }``: -1 basic only, 1 extended (and up)
_CONFIG_GRAPH_LEVELS = {-1: "basic", 0: None, 1: "extended", 2: "all"}


@dataclass(frozen=True, slots=True)
class SessionSettings:
    intra_op_threads: int = 0  # 0: ONNX Runtime's default (one per core)
    graph_optimization: str = "all"
    allow_spinning: bool = False
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    memory_pattern: bool = False  # see InferenceSettings.memory_pattern


def _session_options(settings: SessionSettings, config_level: int | None) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = settings.intra_op_threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.enable_mem_pattern = settings.memory_pattern
    level = _CONFIG_GRAPH_LEVELS.get(config_level) if config_level is not None else None
    opts.graph_optimization_level = GRAPH_LEVELS[level or settings.graph_optimization]
    spin = "1" if settings.allow_spinning else "0"
    opts.add_session_config_entry("session.intra_op.allow_spinning", spin)
    opts.add_session_config_entry("session.inter_op.allow_spinning", spin)
    return opts


def _info(arg) -> ModelTensorInfo:
    shape = tuple(d if isinstance(d, int) and d >= 0 else None for d in (arg.shape or ()))
    return ModelTensorInfo(arg.name, from_ort_type(arg.type), shape)


def open_session(
    path: Path, settings: SessionSettings, config_level: int | None = None
) -> ort.InferenceSession:
    return ort.InferenceSession(
        str(path),
        sess_options=_session_options(settings, config_level),
        providers=list(settings.providers),
    )


def describe(session: ort.InferenceSession) -> ModelIO:
    return ModelIO(
        inputs=tuple(_info(a) for a in session.get_inputs()),
        outputs=tuple(_info(a) for a in session.get_outputs()),
    )


class OnnxModel:
    """A pool of ``spec.instance_count`` sessions for one model version.

    ``execute`` merges the parts of a batch, runs one session in ``executor`` and
    splits the outputs back per part. At most ``instance_count`` executions run at
    once; each uses its own session, as Triton's instances do.
    """

    def __init__(
        self, spec: ModelSpec, sessions: Sequence[ort.InferenceSession], executor: Executor
    ):
        self.spec = spec
        self._executor = executor
        self._idle: asyncio.Queue[ort.InferenceSession] = asyncio.Queue()
        for session in sessions:
            self._idle.put_nowait(session)
        self._output_names = [t.name for t in spec.outputs]

    @property
    def instance_count(self) -> int:
        return self.spec.instance_count

    async def execute(
        self, parts: Sequence[dict[str, np.ndarray]], rows: Sequence[int]
    ) -> BatchResult:
        session = await self._idle.get()
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, self._run, session, parts, rows)
        finally:
            self._idle.put_nowait(session)

    def _run(self, session, parts, rows) -> BatchResult:
        spec = self.spec
        feed: dict[str, np.ndarray] = {}
        for tensor in spec.inputs:
            if tensor.name not in parts[0]:
                continue  # optional input left out
            arrays = [p[tensor.name] for p in parts]
            merged = arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=0)
            if tensor.reshape is not None:
                lead = (merged.shape[0],) if spec.batched else ()
                merged = merged.reshape(lead + tensor.reshape)
            feed[tensor.name] = merged
        start, cpu_start = time.perf_counter(), time.thread_time()
        try:
            results = session.run(self._output_names, feed)
        except ORT_INVALID_ARGUMENT as exc:  # e.g. an id past a table (Gather)
            reason = str(exc).split("Status Message: ")[-1].strip()
            raise InvalidInput(
                f"model '{spec.name}': ONNX Runtime refused an input: {reason}"
            ) from None
        compute_s = time.perf_counter() - start
        cpu_s = time.thread_time() - cpu_start
        by_name = {}
        total = sum(rows)
        for tensor, value in zip(spec.outputs, results, strict=True):
            if tensor.reshape is not None and -1 not in tensor.dims:
                lead = (value.shape[0],) if spec.batched else ()
                value = value.reshape(lead + tensor.dims)
            by_name[tensor.name] = value
        if len(parts) == 1:
            return BatchResult([by_name], compute_s, cpu_s)
        bounds = np.cumsum(rows)[:-1]
        split = {name: np.split(value, bounds, axis=0) for name, value in by_name.items()}
        for name, value in by_name.items():
            if value.shape[:1] != (total,):
                raise RuntimeError(
                    f"output '{name}' has shape {list(value.shape)}; expected {total} rows"
                )
        outputs = [{n: split[n][i] for n in split} for i in range(len(parts))]
        return BatchResult(outputs, compute_s, cpu_s)
