"""The servers tenfold is benchmarked against, configured from the same repository."""

from __future__ import annotations

from pathlib import Path

from inference.repository.model import ModelDir, read_model


def served_model(directory: Path) -> ModelDir:
    """The model as a pod reads it; the peers mirror its config.pbtxt, so one is needed."""
    model = read_model(directory)
    if not model.has_config:
        raise FileNotFoundError(f"{directory} has no config.pbtxt")
    return model


def threads(model: ModelDir) -> int:
    """ONNX Runtime threads per instance the config asks for (1 when it does not say)."""
    asked = model.intra_op_threads
    return 1 if asked is None else asked
