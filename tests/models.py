"""ONNX models for tests, built with onnx.helper (no torch)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from inference.examples import mlp


def _save(model: onnx.ModelProto, path: Path) -> Path:
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path


def multi_io() -> onnx.ModelProto:
    """x FP32[b,4] -> y = 2x; ids INT64[b,3] -> total = sum(ids); tag BYTES[b,1] -> tag_out."""
    two = numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two")
    axes = numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")
    nodes = [
        helper.make_node("Mul", ["x", "two"], ["y"]),
        helper.make_node("ReduceSum", ["ids", "axes"], ["total"], keepdims=1),
        helper.make_node("Identity", ["tag"], ["tag_out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "multi_io",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 4]),
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["b", 3]),
            helper.make_tensor_value_info("tag", TensorProto.STRING, ["b", 1]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 4]),
            helper.make_tensor_value_info("total", TensorProto.INT64, ["b", 1]),
            helper.make_tensor_value_info("tag_out", TensorProto.STRING, ["b", 1]),
        ],
        [two, axes],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def scale(factor: float) -> onnx.ModelProto:
    """x FP32[b,2] -> y = factor * x (versions differ by factor)."""
    k = numpy_helper.from_array(np.array(factor, dtype=np.float32), "k")
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "k"], ["y"])],
        "scale",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 2])],
        [k],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def heavy(width: int = 1024, layers: int = 12, expand: int = 64) -> onnx.ModelProto:
    """x FP32[b,width] -> y FP32[b,width]: each row is repeated ``expand`` times through
    a MatMul chain, so one row costs tens of milliseconds on this machine."""
    rng = np.random.default_rng(1)
    inits = [
        numpy_helper.from_array(np.array([1, expand], dtype=np.int64), "repeats"),
        numpy_helper.from_array(np.array([-1, width], dtype=np.int64), "flat"),
        numpy_helper.from_array(np.array([-1, expand, width], dtype=np.int64), "grouped"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
    ]
    nodes = [
        helper.make_node("Tile", ["x", "repeats"], ["tiled"]),
        helper.make_node("Reshape", ["tiled", "flat"], ["h"]),
    ]
    current = "h"
    for i in range(layers):
        w = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [current, f"w{i}"], [f"h{i}"]))
        current = f"h{i}"
    nodes += [
        helper.make_node("Reshape", [current, "grouped"], ["g"]),
        helper.make_node("ReduceMean", ["g", "axis1"], ["y"], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "heavy",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", width])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


#: a model "m" of the ``scale`` graph: [n, 2] FP32 in and out, batches up to 8
SCALE = """
name: "m"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ 2 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 2 ] } ]
"""


MLP_CONFIG = """
name: "mlp"
platform: "onnxruntime_onnx"
max_batch_size: 64
input [ { name: "features" data_type: TYPE_FP32 dims: [ 64 ] } ]
output [ { name: "score" data_type: TYPE_FP32 dims: [ 1 ] } ]
dynamic_batching { max_queue_delay_microseconds: 20000 }
"""

MULTI_IO_CONFIG = """
name: "multi_io"
backend: "onnxruntime"
max_batch_size: 8
input [
  { name: "x" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "ids" data_type: TYPE_INT64 dims: [ 3 ] },
  { name: "tag" data_type: TYPE_STRING dims: [ 1 ] }
]
output [
  { name: "y" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "total" data_type: TYPE_INT64 dims: [ 1 ] },
  { name: "tag_out" data_type: TYPE_STRING dims: [ 1 ] }
]
dynamic_batching { }
"""

SCALE_CONFIG = """
name: "scale"
platform: "onnxruntime_onnx"
max_batch_size: 4
version_policy: { all { } }
input [ { name: "x" data_type: TYPE_FP32 dims: [ 2 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 2 ] } ]
"""


def write_model(
    repo: Path, name: str, model: onnx.ModelProto, config: str | None, version: int = 1
) -> Path:
    if config is not None:
        (repo / name).mkdir(parents=True, exist_ok=True)
        (repo / name / "config.pbtxt").write_text(config)
    return _save(model, repo / name / str(version) / "model.onnx")


def standard_repository(repo: Path) -> Path:
    write_model(repo, "mlp", mlp(), MLP_CONFIG)
    write_model(repo, "multi_io", multi_io(), MULTI_IO_CONFIG)
    write_model(repo, "scale", scale(1.0), SCALE_CONFIG, version=1)
    write_model(repo, "scale", scale(3.0), None, version=2)
    # no config.pbtxt: auto-completed from the model
    write_model(repo, "auto", scale(5.0), None)
    return repo
