"""Export PyTorch modules to ONNX with a dynamic batch dimension, and check parity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch


def export(
    module: torch.nn.Module,
    inputs: dict[str, np.ndarray],
    outputs: list[str],
    path: Path,
    dynamic: dict[str, dict[int, str]] | None = None,
) -> None:
    """Export with a dynamic batch dimension (or the axes given in ``dynamic``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    args = tuple(torch.as_tensor(v) for v in inputs.values())
    axes = dynamic or {name: {0: "batch"} for name in [*inputs, *outputs]}
    torch.onnx.export(
        module,
        args,
        str(path),
        input_names=list(inputs),
        output_names=outputs,
        dynamic_axes=axes,
        opset_version=17,
        dynamo=False,
    )


def parity(module: torch.nn.Module, path: Path, inputs: dict[str, np.ndarray]) -> float:
    """Max abs difference between PyTorch and ONNX Runtime on ``inputs``."""
    with torch.inference_mode():
        expected = module(*(torch.as_tensor(v) for v in inputs.values()))
    if isinstance(expected, torch.Tensor):
        expected = (expected,)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, inputs)
    return float(max(np.abs(e.numpy() - g).max() for e, g in zip(expected, got, strict=True)))
