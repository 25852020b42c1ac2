"""KServe v2 over HTTP: JSON tensors and the binary tensor data extension <-> protocol
types. Framework-free (numpy, orjson): the pod's aiohttp adapter and any other HTTP
server of the protocol (the naive peer) use it."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from inference.protocol.datatypes import (
    array_from_raw,
    array_to_raw,
    element_count,
    kserve_datatype,
    numpy_dtype,
)
from inference.protocol.errors import InvalidInput
from inference.protocol.jsondoc import json_object
from inference.protocol.tensors import InferRequest, InferResponse, RequestedOutput, Tensor

HEADER_LENGTH = "Inference-Header-Content-Length"
#: the caller's remaining time in milliseconds (a gRPC deadline's HTTP form): a request
#: the model's queue cannot serve in time is refused at once
TIMEOUT_MS = "Tenfold-Timeout-Ms"

#: numpy kinds a JSON array may hold for each target kind (bool, ints, floats)
_ACCEPTED_KINDS = {"b": "b", "i": "iu", "u": "iu", "f": "iuf"}


def _shape(name: str, value: Any) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value
    ):
        raise InvalidInput(f"input '{name}': 'shape' must be a list of non-negative integers")
    return tuple(value)


def _json_array(name: str, datatype: str, data: Any, shape: tuple[int, ...]) -> np.ndarray:
    count = element_count(shape)
    if not isinstance(data, list):
        data = [data]
    if datatype == "BYTES":
        flat = _flatten(name, data)
        if any(not isinstance(x, str) for x in flat):
            raise InvalidInput(f"input '{name}': BYTES data must be strings")
        if len(flat) != count:
            raise InvalidInput(
                f"input '{name}': shape {list(shape)} needs {count} elements, got {len(flat)}"
            )
        out = np.empty(count, dtype=np.object_)
        out[:] = [x.encode("utf-8") for x in flat]
        return out.reshape(shape)
    dtype = numpy_dtype(datatype)
    try:
        raw = np.asarray(data)
    except ValueError:
        raise InvalidInput(f"input '{name}': 'data' is a ragged nested list") from None
    if raw.size != count:
        raise InvalidInput(
            f"input '{name}': shape {list(shape)} needs {count} elements, got {raw.size}"
        )
    if raw.size and raw.dtype.kind not in _ACCEPTED_KINDS[dtype.kind]:
        raise InvalidInput(f"input '{name}': 'data' holds values that are not {datatype}")
    try:
        return raw.astype(dtype).reshape(shape)
    except (ValueError, OverflowError) as exc:
        raise InvalidInput(f"input '{name}': {exc}") from None


def _flatten(name: str, data: list) -> list:
    out: list = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


def _parameters(value: Any, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(f"{where}: 'parameters' must be an object")
    return value


def _split(body: bytes, header_length: int | None) -> tuple[bytes, memoryview]:
    """The JSON header and the binary data after it (``HEADER_LENGTH``; None: all JSON)."""
    if header_length is None:
        return body, memoryview(b"")
    if header_length < 0 or header_length > len(body):
        raise InvalidInput(f"{HEADER_LENGTH} is {header_length} but the body has {len(body)} bytes")
    return body[:header_length], memoryview(body)[header_length:]


def _tensor_data(
    kind: str,
    item: dict,
    name: str,
    datatype: str,
    shape: tuple[int, ...],
    binary: memoryview,
    offset: int,
) -> tuple[np.ndarray, int]:
    """An input's or output's values, as binary data at ``offset`` or as JSON ``data``;
    and the offset of the next tensor's binary data."""
    params = _parameters(item.get("parameters"), f"{kind} '{name}'")
    size = params.get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidInput(f"{kind} '{name}': binary_data_size must be a byte count")
        if offset + size > len(binary):
            raise InvalidInput(
                f"{kind} '{name}': binary data is truncated (needs {size} bytes at offset "
                f"{offset}, body has {len(binary)})"
            )
        return array_from_raw(binary[offset : offset + size], datatype, shape, name), offset + size
    if "data" in item:
        return _json_array(name, datatype, item["data"], shape), offset
    raise InvalidInput(f"{kind} '{name}' has neither 'data' nor binary_data_size")


def decode_request(
    model: str, version: str, body: bytes, header_length: int | None
) -> InferRequest:
    header, binary = _split(body, header_length)
    doc = json_object(header, "request body")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInput("'inputs' must be a non-empty list")
    offset = 0
    inputs = []
    for index, item in enumerate(raw_inputs):
        if not isinstance(item, dict):
            raise InvalidInput(f"inputs[{index}] must be an object")
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidInput(f"inputs[{index}] has no 'name'")
        datatype = item.get("datatype")
        if not isinstance(datatype, str):
            raise InvalidInput(f"input '{name}' has no 'datatype'")
        numpy_dtype(datatype)  # unknown datatypes fail here with a clear message
        shape = _shape(name, item.get("shape"))
        data, offset = _tensor_data("input", item, name, datatype, shape, binary, offset)
        inputs.append(Tensor(name, datatype, shape, data))
    if offset != len(binary):
        raise InvalidInput(f"{len(binary) - offset} bytes of binary data follow the inputs unused")
    outputs = []
    for index, item in enumerate(doc.get("outputs") or []):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidInput(f"outputs[{index}] must be an object with a 'name'")
        params = _parameters(item.get("parameters"), f"output '{item['name']}'")
        binary_flag = params.get("binary_data")
        outputs.append(
            RequestedOutput(item["name"], None if binary_flag is None else bool(binary_flag))
        )
    request_id = doc.get("id", "")
    return InferRequest(
        model_name=model,
        model_version=version,
        inputs=tuple(inputs),
        outputs=tuple(outputs),
        id=request_id if isinstance(request_id, str) else str(request_id),
        parameters=_parameters(doc.get("parameters"), "request"),
    )


def _json_data(tensor: Tensor):
    if tensor.datatype == "BYTES":
        return [
            x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x)
            for x in tensor.data.reshape(-1)
        ]
    return np.ascontiguousarray(tensor.data.reshape(-1))


def encode_response(request: InferRequest, response: InferResponse) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers (binary extension where asked for)."""
    default_binary = bool(request.parameters.get("binary_data_output", False))
    asked = {o.name: o.binary for o in request.outputs}
    outputs = []
    chunks: list[bytes] = []
    for tensor in response.outputs:
        binary = asked.get(tensor.name)
        if binary is None:
            binary = default_binary
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.shape),
        }
        if binary:
            raw = array_to_raw(tensor.data, tensor.datatype)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = _json_data(tensor)
        outputs.append(entry)
    doc: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "outputs": outputs,
    }
    if response.id:
        doc["id"] = response.id
    header = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return header, {"Content-Type": "application/json"}
    return b"".join([header, *chunks]), {
        "Content-Type": "application/octet-stream",
        HEADER_LENGTH: str(len(header)),
    }


# -- the client's side: what the gateway sends a pod and reads back -----------------------
def encode_binary_request(
    inputs: dict[str, np.ndarray], request_id: str = ""
) -> tuple[bytes, dict[str, str]]:
    """An inference request with every input as binary data and every output asked for
    as binary data (Triton's binary tensor extension, what ``tritonclient.http`` sends):
    the body and its headers (each attempt adds ``timeout_header``)."""
    tensors = []
    chunks: list[bytes] = []
    for name, array in inputs.items():
        datatype = kserve_datatype(array.dtype)
        raw = array_to_raw(array, datatype)
        tensors.append(
            {
                "name": name,
                "datatype": datatype,
                "shape": list(array.shape),
                "parameters": {"binary_data_size": len(raw)},
            }
        )
        chunks.append(raw)
    doc: dict[str, Any] = {"inputs": tensors, "parameters": {"binary_data_output": True}}
    if request_id:
        doc["id"] = request_id
    header = orjson.dumps(doc)
    headers = {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(header))}
    return b"".join([header, *chunks]), headers


def timeout_header(timeout_s: float) -> dict[str, str]:
    """The caller's remaining time as the header a pod reads (``TIMEOUT_MS``)."""
    return {TIMEOUT_MS: f"{max(0.0, timeout_s) * 1000:.3f}"}


def decode_binary_response(body: bytes, header_length: int | None) -> tuple[dict, str]:
    """A pod's inference answer (JSON or binary outputs) -> ({name: array}, version);
    a malformed one is an ``InvalidInput`` naming what is wrong."""
    header, binary = _split(body, header_length)
    doc = json_object(header, "response body")
    outputs: dict[str, np.ndarray] = {}
    offset = 0
    for index, item in enumerate(doc.get("outputs") or []):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidInput(f"outputs[{index}] must be an object with a 'name'")
        name, datatype = item["name"], item.get("datatype")
        if not isinstance(datatype, str):
            raise InvalidInput(f"output '{name}' has no 'datatype'")
        shape = _shape(name, item.get("shape"))
        outputs[name], offset = _tensor_data("output", item, name, datatype, shape, binary, offset)
    return outputs, str(doc.get("model_version", ""))
