"""Triton-layout model repositories: ``<repo>/<model>/config.pbtxt`` and
``<repo>/<model>/<version>/model.onnx``."""

from inference.repository.errors import RepositoryError
from inference.repository.spec import BatchingPolicy, ModelSpec, TensorSpec

__all__ = ["BatchingPolicy", "ModelSpec", "RepositoryError", "TensorSpec"]
