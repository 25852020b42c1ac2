"""Check an inference request against a model's spec, before it is queued."""

from __future__ import annotations

import numpy as np

from inference.protocol.errors import InvalidInput
from inference.protocol.tensors import InferRequest
from inference.repository.spec import ModelSpec


def _bytes_to_str(array: np.ndarray, name: str) -> np.ndarray:
    """ONNX Runtime string tensors take Python str; the wire carries bytes."""
    flat = array.reshape(-1)
    out = np.empty(flat.shape[0], dtype=np.object_)
    for i, item in enumerate(flat):
        if isinstance(item, bytes | bytearray | memoryview):
            try:
                out[i] = bytes(item).decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidInput(f"input '{name}': element {i} is not valid UTF-8") from None
        else:
            out[i] = str(item)
    return out.reshape(array.shape)


def _check_range(name: str, data: np.ndarray, ranges: tuple[tuple[int, int], ...]) -> None:
    """Refuse values outside the declared range (ONNX Runtime's Gather would fail the
    whole batch on a too-large id, and silently wrap a negative one)."""
    if not data.size:
        return
    lo = np.array([r[0] for r in ranges], dtype=np.int64)
    hi = np.array([r[1] for r in ranges], dtype=np.int64)
    if len(ranges) == 1:
        lo, hi = lo[0], hi[0]
    bad = (data < lo) | (data > hi)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        low, high = ranges[where[-1] if len(ranges) > 1 else 0]
        raise InvalidInput(
            f"input '{name}': value {int(data[where])} at index {list(where)} is outside "
            f"[{low}, {high}]"
        )


def model_inputs(spec: ModelSpec, request: InferRequest) -> tuple[dict[str, np.ndarray], int]:
    """The arrays to feed the model, and the number of rows the request carries."""
    feed: dict[str, np.ndarray] = {}
    rows: int | None = None
    for tensor in request.inputs:
        expected = spec.input(tensor.name)
        if expected is None:
            known = ", ".join(t.name for t in spec.inputs)
            raise InvalidInput(
                f"unknown input '{tensor.name}' for model '{spec.name}' (inputs: {known})"
            )
        if tensor.name in feed:
            raise InvalidInput(f"input '{tensor.name}' is given more than once")
        if tensor.datatype != expected.datatype:
            raise InvalidInput(
                f"input '{tensor.name}' has datatype {tensor.datatype}; model '{spec.name}' "
                f"expects {expected.datatype}"
            )
        shape = tensor.shape
        dims = list(expected.dims)
        if spec.batched:
            want = [-1, *dims]
            if len(shape) != len(dims) + 1 or not expected.accepts(shape[1:]):
                raise InvalidInput(
                    f"input '{tensor.name}' has shape {list(shape)}; model '{spec.name}' "
                    f"expects {want} (first dimension is the batch)"
                )
            batch = shape[0]
            if batch < 1 or batch > spec.max_batch_size:
                raise InvalidInput(
                    f"input '{tensor.name}' carries {batch} rows; model '{spec.name}' takes "
                    f"1 to {spec.max_batch_size} per request"
                )
            if rows is not None and batch != rows:
                raise InvalidInput(
                    f"inputs disagree on the batch size: '{tensor.name}' has {batch}, others {rows}"
                )
            rows = batch
        elif not expected.accepts(shape):
            raise InvalidInput(
                f"input '{tensor.name}' has shape {list(shape)}; model '{spec.name}' expects {dims}"
            )
        data = tensor.data
        if expected.datatype == "BYTES":
            data = _bytes_to_str(data, tensor.name)
        elif expected.value_range is not None:
            _check_range(tensor.name, data, expected.value_range)
        feed[tensor.name] = data
    missing = [t.name for t in spec.inputs if t.name not in feed and not t.optional]
    if missing:
        raise InvalidInput(f"model '{spec.name}' needs inputs {missing}, which are missing")
    for requested in request.outputs:
        if spec.output(requested.name) is None:
            known = ", ".join(t.name for t in spec.outputs)
            raise InvalidInput(
                f"unknown output '{requested.name}' for model '{spec.name}' (outputs: {known})"
            )
    return feed, rows or 1


def queue_timeout_s(request: InferRequest) -> float | None:
    """Triton's ``timeout`` request parameter (microseconds), in seconds."""
    value = request.parameters.get("timeout")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise InvalidInput("parameter 'timeout' must be a non-negative number of microseconds")
    return float(value) / 1e6
