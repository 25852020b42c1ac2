"""Check that a config matches the ONNX model it describes."""

from __future__ import annotations

from inference.repository.autocomplete import ModelIO, ModelTensorInfo
from inference.repository.errors import RepositoryError
from inference.repository.spec import ModelSpec, TensorSpec


def _check(model: str, kind: str, spec: TensorSpec, info: ModelTensorInfo, batched: bool) -> None:
    if spec.datatype != info.datatype:
        raise RepositoryError(
            model,
            f"{kind} '{spec.name}' is {spec.datatype} in config.pbtxt but {info.datatype} "
            "in the model",
        )
    shape = info.shape
    if batched:
        if not shape or shape[0] not in (None, -1):
            raise RepositoryError(
                model,
                f"max_batch_size > 0 but the model's {kind} '{spec.name}' has a fixed first "
                f"dimension {list(shape)[:1]}; export it with a dynamic batch dimension",
            )
        shape = shape[1:]
    expected = spec.reshape if spec.reshape is not None else spec.dims
    if len(expected) != len(shape):
        raise RepositoryError(
            model,
            f"{kind} '{spec.name}': config dims {list(expected)} have rank {len(expected)} "
            f"but the model's shape {_show(shape)} has rank {len(shape)}",
        )
    for want, have in zip(expected, shape, strict=True):
        if want != -1 and have is not None and want != have:
            raise RepositoryError(
                model,
                f"{kind} '{spec.name}': config dims {list(expected)} do not match the "
                f"model's shape {_show(shape)}",
            )


def _show(shape) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def check_against_model(spec: ModelSpec, io: ModelIO) -> None:
    model_inputs = {t.name: t for t in io.inputs}
    model_outputs = {t.name: t for t in io.outputs}
    for tensor in spec.inputs:
        info = model_inputs.get(tensor.name)
        if info is None:
            raise RepositoryError(
                spec.name,
                f"config input '{tensor.name}' is not an input of the model "
                f"(model inputs: {sorted(model_inputs)})",
            )
        _check(spec.name, "input", tensor, info, spec.batched)
    missing = sorted(set(model_inputs) - {t.name for t in spec.inputs})
    if missing:
        raise RepositoryError(spec.name, f"model inputs {missing} are missing from config.pbtxt")
    for tensor in spec.outputs:
        info = model_outputs.get(tensor.name)
        if info is None:
            raise RepositoryError(
                spec.name,
                f"config output '{tensor.name}' is not an output of the model "
                f"(model outputs: {sorted(model_outputs)})",
            )
        _check(spec.name, "output", tensor, info, spec.batched)
