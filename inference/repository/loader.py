"""Load a Triton-layout repository into ONNX Runtime sessions (blocking: run it in an
executor)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import onnxruntime as ort

from inference.repository import autocomplete
from inference.repository.config import read_config, select_versions, to_spec
from inference.repository.errors import RepositoryError
from inference.repository.spec import ModelSpec
from inference.repository.validate import check_against_model
from inference.runtime.onnx_model import SessionSettings, describe, open_session
from protos.kserve.v2 import model_config_pb2


@dataclass(frozen=True, slots=True)
class LoadedVersion:
    spec: ModelSpec
    version: int
    path: Path
    sessions: tuple[ort.InferenceSession, ...]


def model_dirs(repository: Path) -> Iterator[Path]:
    if not repository.is_dir():
        raise FileNotFoundError(f"model repository {repository} is not a directory")
    for entry in sorted(repository.iterdir()):
        if entry.is_dir() and not entry.name.startswith((".", "_")):
            yield entry


def load_model(
    model_dir: Path, settings: SessionSettings, default_max_batch_size: int
) -> list[LoadedVersion]:
    """Every version of one model the version policy selects, validated and opened."""
    name = model_dir.name
    config = read_config(model_dir)
    versions = select_versions(name, model_dir, config or model_config_pb2.ModelConfig())
    settings = _with_config_threads(name, config, settings)
    loaded = []
    for version in versions:
        filename = (config.default_model_filename if config else "") or "model.onnx"
        path = model_dir / str(version) / filename
        if not path.is_file():
            raise RepositoryError(name, f"version {version}: model file {path} is missing")
        level = None
        if config is not None and config.optimization.HasField("graph"):
            level = config.optimization.graph.level
        try:
            first = open_session(path, settings, level)
        except Exception as exc:  # ORT raises its own exception types
            raise RepositoryError(
                name, f"version {version}: ONNX Runtime cannot load {path.name}: {exc}"
            ) from None
        try:
            io = describe(first)
        except ValueError as exc:
            raise RepositoryError(name, f"version {version}: {exc}") from None
        full = autocomplete.complete(name, config, io, default_max_batch_size)
        spec = to_spec(name, full)
        check_against_model(spec, io)
        sessions = [first] + [
            open_session(path, settings, level) for _ in range(spec.instance_count - 1)
        ]
        loaded.append(LoadedVersion(spec, version, path, tuple(sessions)))
    return loaded


#: Triton's ONNX Runtime backend parameter, written by ``tenfold optimize``'s tuning
THREADS_PARAMETER = "intra_op_thread_count"


def _with_config_threads(name, config, settings: SessionSettings) -> SessionSettings:
    """``parameters { key: "intra_op_thread_count" }`` overrides the pod's thread setting."""
    if config is None or THREADS_PARAMETER not in config.parameters:
        return settings
    text = config.parameters[THREADS_PARAMETER].string_value
    if not text.isdigit():
        raise RepositoryError(
            name, f"parameter {THREADS_PARAMETER} must be a whole number >= 0, not {text!r}"
        )
    return replace(settings, intra_op_threads=int(text))
