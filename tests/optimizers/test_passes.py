"""The optimizer's passes on small real graphs, run by ONNX Runtime (no model build)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from optimizers.judges import Judge
from optimizers.passes import PassContext, batched_weight_matmuls, int8
from optimizers.settings import ParitySettings, QuantSettings


def _experts_graph(path) -> dict[str, np.ndarray]:
    """x [b, 8] @ w_first [8, 16], split into 2 experts of 8, each expert's own [8, 4]
    matrix as one batched MatMul with w_experts [2, 8, 4]: the list ranker's layout."""
    rng = np.random.default_rng(0)
    weights = {
        "w_first": rng.standard_normal((8, 16)).astype(np.float32),
        "w_experts": rng.standard_normal((2, 8, 4)).astype(np.float32),
        "shape": np.array([-1, 2, 8], np.int64),
    }
    nodes = [
        helper.make_node("MatMul", ["x", "w_first"], ["h"], name="first"),
        helper.make_node("Reshape", ["h", "shape"], ["h3"], name="split"),
        helper.make_node("Transpose", ["h3"], ["per_expert"], perm=[1, 0, 2], name="t"),
        helper.make_node("MatMul", ["per_expert", "w_experts"], ["y"], name="experts"),
    ]
    graph = helper.make_graph(
        nodes,
        "experts",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, "b", 4])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return weights


def test_per_channel_int8_leaves_batched_weight_matmuls_float_and_the_result_runs(tmp_path):
    src, dst = tmp_path / "src.onnx", tmp_path / "dst.onnx"
    weights = _experts_graph(src)
    assert batched_weight_matmuls(onnx.load(str(src))) == ["experts"]
    judge = Judge(spec=None, data={}, parity=ParitySettings())
    ctx = PassContext(judge, QuantSettings(per_channel=True), "cpu", tmp_path)
    detail = int8(src, dst, ctx)
    assert "1 batched-weight MatMul(s) left float" in detail
    ops = [node.op_type for node in onnx.load(str(dst)).graph.node]
    assert ops.count("MatMulInteger") == 1  # the 2-D weight is quantised
    assert ops.count("MatMul") == 1  # the batched one is not
    # ONNX Runtime runs it (quantised, the batched MatMul failed at run time) and the
    # answer is the float one up to int8 rounding of the first layer
    x = np.random.default_rng(1).standard_normal((5, 8)).astype(np.float32)
    (got,) = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    h = (x @ weights["w_first"]).reshape(5, 2, 8).transpose(1, 0, 2)
    want = h @ weights["w_experts"]
    assert got.shape == (2, 5, 4)
    np.testing.assert_allclose(got, want, atol=0.05 * np.abs(want).max())
    assert not np.array_equal(got, want)  # and it was quantised


def test_per_tensor_int8_quantises_every_matmul(tmp_path):
    src, dst = tmp_path / "src.onnx", tmp_path / "dst.onnx"
    _experts_graph(src)
    judge = Judge(spec=None, data={}, parity=ParitySettings())
    detail = int8(src, dst, PassContext(judge, QuantSettings(per_channel=False), "cpu", tmp_path))
    assert "left float" not in detail
    ops = [node.op_type for node in onnx.load(str(dst)).graph.node]
    assert ops.count("MatMulInteger") == 2 and "MatMul" not in ops
    x = np.ones((3, 8), np.float32)
    (got,) = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    assert got.shape == (2, 3, 4)
