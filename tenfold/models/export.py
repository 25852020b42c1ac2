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
    """Max abs difference between PyTorch and ONNX Runtime on ``inputs``, over the
    floating-point outputs (integer outputs such as TopK indices may legitimately
    swap near-ties; check them with :func:`topk_overlap`)."""
    with torch.inference_mode():
        expected = module(*(torch.as_tensor(v) for v in inputs.values()))
    if isinstance(expected, torch.Tensor):
        expected = (expected,)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, inputs)
    return float(
        max(
            np.abs(e.numpy() - g).max()
            for e, g in zip(expected, got, strict=True)
            if np.issubdtype(g.dtype, np.floating)
        )
    )


def topk_overlap(module: torch.nn.Module, path: Path, inputs: dict[str, np.ndarray], output: int):
    """Mean fraction of the ``output``-th (TopK indices) rows that PyTorch and ONNX
    Runtime agree on as sets."""
    with torch.inference_mode():
        expected = module(*(torch.as_tensor(v) for v in inputs.values()))[output].numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, inputs)[output]
    return float(
        np.mean([len(np.intersect1d(e, g)) / len(e) for e, g in zip(expected, got, strict=True)])
    )


def level_agreement(module: torch.nn.Module, path: Path, inputs: dict[str, np.ndarray]) -> dict:
    """How far ONNX Runtime's uint8 outputs are from PyTorch's, in levels: the largest
    difference and the share of levels equal (rounding may differ by one where the
    float result sits at a rounding boundary)."""
    with torch.inference_mode():
        expected = module(*(torch.as_tensor(v) for v in inputs.values()))
    if isinstance(expected, torch.Tensor):
        expected = (expected,)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, inputs)
    diff = np.concatenate(
        [
            np.abs(g.astype(np.int16) - e.numpy().astype(np.int16)).ravel()
            for e, g in zip(expected, got, strict=True)
            if g.dtype == np.uint8
        ]
    )
    return {"max_level_diff": int(diff.max()), "share_equal": float((diff == 0).mean())}
