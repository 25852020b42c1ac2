"""The model to optimise: its directory, config and latest version, checked the way a
pod would check them, so a bad entry is refused before any pass runs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx

from inference.repository.errors import RepositoryError
from inference.repository.loader import load_model
from inference.repository.spec import ModelSpec
from inference.runtime.onnx_model import SessionSettings
from optimizers.errors import OptimizeError


@dataclass(frozen=True, slots=True)
class ModelTarget:
    name: str
    directory: Path
    spec: ModelSpec
    version: int
    #: the latest version's model file: the pipeline's input
    path: Path


def model_names(repository: Path) -> list[str]:
    return sorted(
        p.name for p in repository.iterdir() if p.is_dir() and (p / "config.pbtxt").exists()
    )


def open_target(repository: Path, name: str) -> ModelTarget:
    if not repository.is_dir():
        raise OptimizeError(f"model repository {repository} is not a directory")
    directory = repository / name
    if not directory.is_dir():
        known = ", ".join(model_names(repository)) or "none"
        raise OptimizeError(f"model '{name}' is not in {repository} (models there: {known})")
    try:
        version = load_model(directory, SessionSettings(graph_optimization="disable"), 0)[-1]
    except RepositoryError as exc:
        raise OptimizeError(str(exc)) from None
    try:
        onnx.checker.check_model(str(version.path))
    except onnx.checker.ValidationError as exc:
        raise OptimizeError(
            f"model '{name}': {version.path} is not a valid ONNX model: {exc}"
        ) from None
    return ModelTarget(name, directory, version.spec, version.version, version.path)
