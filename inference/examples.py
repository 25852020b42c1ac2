"""A small demo repository (``tenfold inference example-repo DIR``): a
ranking-style MLP (64 features -> 128 -> 64 -> 1, sigmoid) with seeded weights,
written with onnx.helper, so serving needs no torch."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

DEMO_MODEL = "ranker_demo"
DEMO_CONFIG = """\
name: "ranker_demo"
platform: "onnxruntime_onnx"
max_batch_size: 256
input [ { name: "features" data_type: TYPE_FP32 dims: [ 64 ] } ]
output [ { name: "score" data_type: TYPE_FP32 dims: [ 1 ] } ]
dynamic_batching {
  max_queue_delay_microseconds: 500
  default_queue_policy { max_queue_size: 2048 }
}
instance_group [ { count: 1 kind: KIND_CPU } ]
"""


def mlp(dims: tuple[int, ...] = (64, 128, 64, 1), seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    current = "features"
    for i, (d_in, d_out) in enumerate(itertools.pairwise(dims)):
        w = (rng.standard_normal((d_in, d_out)) / np.sqrt(d_in)).astype(np.float32)
        b = (rng.standard_normal(d_out) * 0.01).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        out = f"h{i}"
        nodes.append(helper.make_node("Gemm", [current, f"w{i}", f"b{i}"], [out]))
        last = i == len(dims) - 2
        act = f"a{i}" if not last else "score"
        nodes.append(helper.make_node("Sigmoid" if last else "Relu", [out], [act]))
        current = act
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", dims[0]])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch", dims[-1]])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_example_repository(out: Path) -> list[Path]:
    model_dir = out / DEMO_MODEL
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    config = model_dir / "config.pbtxt"
    config.write_text(DEMO_CONFIG)
    path = model_dir / "1" / "model.onnx"
    onnx.save(mlp(), path)
    return [config, path]
