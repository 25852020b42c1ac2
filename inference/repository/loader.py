"""Load a Triton-layout repository into ONNX Runtime sessions (blocking: run it in an
executor)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import onnxruntime as ort

from inference.repository import autocomplete
from inference.repository.config import to_spec
from inference.repository.errors import RepositoryError
from inference.repository.model import read_model
from inference.repository.spec import ModelSpec
from inference.repository.validate import check_against_model
from inference.runtime.onnx_model import SessionSettings, describe, open_session


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
    model = read_model(model_dir)
    name = model.name
    versions = model.versions
    threads = model.intra_op_threads
    if threads is not None:  # the config's parameter overrides the pod's thread setting
        settings = replace(settings, intra_op_threads=threads)
    level = model.graph_level
    loaded = []
    for version in versions:
        path = model.model_file(version)
        if not path.is_file():
            raise RepositoryError(name, f"version {version}: model file {path} is missing")
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
        full = autocomplete.complete(name, model.config, io, default_max_batch_size)
        spec = to_spec(model, full)
        check_against_model(spec, io)
        sessions = [first] + [
            open_session(path, settings, level) for _ in range(spec.instance_count - 1)
        ]
        loaded.append(LoadedVersion(spec, version, path, tuple(sessions)))
    return loaded
