"""The passes. Each turns one ONNX file into another; the pipeline judges the result.

Order (see docs/optimizers.md): cleanup first, so every later pass sees a simplified,
shape-inferred graph; int8 next, because ONNX Runtime's quantizers recognise standard
ONNX operators (MatMul, Gemm, Conv), not the fused contrib operators its optimiser
emits; ONNX Runtime's offline optimisation then fuses the quantised graph (QDQ pairs
into QLinearConv, MatMulInteger into DynamicQuantizeMatMul) and is saved, so a pod
does not redo it; fp16 replaces int8 and the offline CPU optimisation on GPU targets;
tuning comes last and measures the file that will be served.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnxruntime as ort

from optimizers.errors import OptimizeError
from optimizers.judges import Judge
from optimizers.settings import QuantSettings


@dataclass(frozen=True)
class PassContext:
    judge: Judge
    quant: QuantSettings
    target: str
    #: a scratch directory for intermediate files
    work: Path


#: src, dst, context -> a few words on what was done (for the manifest)
PassFn = Callable[[Path, Path, PassContext], str]


def cleanup(src: Path, dst: Path, ctx: PassContext) -> str:
    """Shape inference, constant folding, dead-node and redundancy removal (onnxslim)."""
    import onnxslim

    model = onnx.load(str(src))
    before = len(model.graph.node)
    slim = onnxslim.slim(model)
    onnx.save(slim, str(dst))
    return f"onnxslim: {before} -> {len(slim.graph.node)} nodes"


_CALIBRATION = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}


class _Reader:
    """ONNX Runtime's CalibrationDataReader protocol over a list of feeds."""

    def __init__(self, feeds):
        self._it = iter(feeds)

    def get_next(self):
        return next(self._it, None)

    def rewind(self):  # pragma: no cover - only some calibrators call it
        pass


def int8(src: Path, dst: Path, ctx: PassContext) -> str:
    """Dynamic int8 (weights int8, activations quantised per call) for MatMul/Gemm
    models; static QDQ with calibration on training-distribution data for CNNs."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    q = ctx.quant
    pre = ctx.work / f"{dst.stem}.pre.onnx"
    # shape inference + basic fusions the quantizer expects (symbolic shapes are skipped:
    # dynamic height/width defeat them, and onnxslim already inferred what it could)
    quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    if ctx.judge.kind == "image":
        with contextlib.redirect_stdout(io.StringIO()):  # the calibrators print progress
            _static(pre, dst, ctx)
        return (
            f"static QDQ u8 activations / s8 weights, {q.calibration} calibration on "
            f"{len(ctx.judge.calibration())} images, per_channel={q.per_channel}"
        )
    batched = batched_weight_matmuls(onnx.load(str(pre))) if q.per_channel else []
    quantize_dynamic(
        str(pre),
        str(dst),
        op_types_to_quantize=["MatMul", "Gemm"],
        per_channel=q.per_channel,
        reduce_range=q.reduce_range,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=batched,
    )
    detail = f"dynamic s8 weights on MatMul/Gemm, per_channel={q.per_channel}"
    if batched:
        detail += f"; {len(batched)} batched-weight MatMul(s) left float"
    return detail


def batched_weight_matmuls(model: onnx.ModelProto) -> list[str]:
    """The MatMul nodes whose weight (an initializer) has more than two dimensions, one
    matrix per expert or head. The dynamic quantizer gives them per-channel zero points
    that ONNX Runtime's MatMulInteger refuses at run time ("B zero point is not
    valid"), so per-channel int8 leaves them float."""
    ranks = {init.name: len(init.dims) for init in model.graph.initializer}
    return [
        node.name
        for node in model.graph.node
        if node.op_type == "MatMul" and node.name and ranks.get(node.input[1], 0) > 2
    ]


#: the op types static int8 quantises (convolutions and matrix products)
STATIC_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")


def _static(pre: Path, dst: Path, ctx: PassContext) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    q = ctx.quant
    quantize_static(
        str(pre),
        str(dst),
        _Reader(ctx.judge.calibration()),
        quant_format=QuantFormat.QDQ,
        per_channel=q.per_channel,
        reduce_range=q.reduce_range,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        # the weighted ops only: elementwise pixel maths (a skip's exp, a clamp, the
        # uint8 wrapper's scaling) stays float, where a tensor-wide int8 scale would
        # flatten its small values (measured: exp(-change) quantised fell to 2.4 dB)
        op_types_to_quantize=list(STATIC_OPS),
        calibrate_method=getattr(CalibrationMethod, _CALIBRATION[q.calibration]),
        extra_options={"CalibPercentile": q.percentile},
    )


def ort_offline(src: Path, dst: Path, ctx: PassContext) -> str:
    """ONNX Runtime's graph optimiser at level ALL (fusions and the CPU's blocked
    layouts), saved so pods load the optimised graph as is."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.optimized_model_filepath = str(dst)
    ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"])
    return "ORT_ENABLE_ALL on CPUExecutionProvider (layout specific to this CPU's ISA)"


def fp16(src: Path, dst: Path, ctx: PassContext) -> str:
    """fp16 weights and activations with fp32 inputs/outputs (GPU targets)."""
    from onnxconverter_common import float16

    model = float16.convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(dst))
    return "onnxconverter-common float16, fp32 inputs and outputs kept"


#: the model-changing passes per target ("tune" is not a file pass)
PLAN: dict[str, tuple[tuple[str, PassFn], ...]] = {
    "cpu": (("cleanup", cleanup), ("int8", int8), ("ort", ort_offline)),
    "gpu": (("cleanup", cleanup), ("fp16", fp16)),
}


def plan(target: str, wanted: tuple[str, ...]) -> list[tuple[str, PassFn]]:
    steps = [(name, fn) for name, fn in PLAN[target] if name in wanted]
    skipped = [p for p in wanted if p != "tune" and p not in dict(PLAN[target])]
    if skipped and not steps:
        raise OptimizeError(f"passes {skipped} do not apply to target '{target}'")
    return steps
