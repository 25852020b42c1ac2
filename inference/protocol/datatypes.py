"""KServe v2 tensor datatypes: their numpy dtypes, their Triton config names, and the
length-prefixed encoding of BYTES tensors used by the binary extension and by
``raw_input_contents``."""

from __future__ import annotations

import struct

import numpy as np

from inference.protocol.errors import InvalidInput

#: KServe datatype name -> numpy dtype (little-endian, as on the wire)
KSERVE_TO_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(np.object_),
}

_NUMPY_TO_KSERVE = {dt: name for name, dt in KSERVE_TO_NUMPY.items() if name != "BYTES"}

#: Triton config enum name (TYPE_FP32) <-> KServe datatype name (FP32)
_CONFIG_TO_KSERVE = {f"TYPE_{n}": n for n in KSERVE_TO_NUMPY if n != "BYTES"} | {
    "TYPE_STRING": "BYTES"
}

#: ONNX Runtime type strings -> KServe datatype
_ORT_TO_KSERVE = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


def numpy_dtype(datatype: str) -> np.dtype:
    try:
        return KSERVE_TO_NUMPY[datatype]
    except KeyError:
        raise InvalidInput(
            f"unsupported datatype '{datatype}'; supported: {', '.join(KSERVE_TO_NUMPY)}"
        ) from None


def kserve_datatype(dtype: np.dtype) -> str:
    if dtype.kind in ("O", "S", "U"):
        return "BYTES"
    name = _NUMPY_TO_KSERVE.get(dtype.newbyteorder("<") if dtype.byteorder == ">" else dtype)
    if name is None:
        raise InvalidInput(f"numpy dtype {dtype} has no KServe datatype")
    return name


def from_config_type(config_type: str) -> str:
    """``TYPE_FP32`` -> ``FP32``; raises ValueError for types tenfold cannot serve."""
    try:
        return _CONFIG_TO_KSERVE[config_type]
    except KeyError:
        raise ValueError(f"data type {config_type} is not supported") from None


def to_config_type(datatype: str) -> str:
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"


def from_ort_type(ort_type: str) -> str:
    try:
        return _ORT_TO_KSERVE[ort_type]
    except KeyError:
        raise ValueError(f"ONNX type {ort_type} is not supported") from None


def element_size(datatype: str) -> int:
    """Bytes per element for fixed-size types; 0 for BYTES."""
    return 0 if datatype == "BYTES" else KSERVE_TO_NUMPY[datatype].itemsize


def serialize_bytes_tensor(array: np.ndarray) -> bytes:
    """Flatten a BYTES tensor into 4-byte little-endian length + payload per element."""
    parts: list[bytes] = []
    for item in array.reshape(-1):
        raw = item.encode("utf-8") if isinstance(item, str) else bytes(item)
        parts.append(struct.pack("<I", len(raw)))
        parts.append(raw)
    return b"".join(parts)


def deserialize_bytes_tensor(buf: bytes | memoryview, count: int, name: str) -> np.ndarray:
    """Parse ``count`` length-prefixed elements; the buffer must hold exactly them."""
    view = memoryview(buf)
    items: list[bytes] = []
    offset = 0
    for index in range(count):
        if offset + 4 > len(view):
            raise InvalidInput(f"input '{name}': BYTES data ends after {index} of {count} elements")
        (length,) = struct.unpack_from("<I", view, offset)
        offset += 4
        if offset + length > len(view):
            raise InvalidInput(f"input '{name}': BYTES element {index} is truncated")
        items.append(bytes(view[offset : offset + length]))
        offset += length
    if offset != len(view):
        raise InvalidInput(
            f"input '{name}': {len(view) - offset} bytes left over after {count} BYTES elements"
        )
    out = np.empty(count, dtype=np.object_)
    out[:] = items
    return out


def array_from_raw(raw: bytes | memoryview, datatype: str, shape: tuple[int, ...], name: str):
    """Decode raw little-endian tensor bytes, checking the byte count against the shape."""
    count = element_count(shape)
    if datatype == "BYTES":
        return deserialize_bytes_tensor(raw, count, name).reshape(shape)
    dtype = numpy_dtype(datatype)
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise InvalidInput(
            f"input '{name}': got {len(raw)} bytes of {datatype} data, shape {list(shape)} "
            f"needs {expected}"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def array_to_raw(array: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        return serialize_bytes_tensor(array)
    return np.ascontiguousarray(array, dtype=KSERVE_TO_NUMPY[datatype]).tobytes()


def element_count(shape: tuple[int, ...]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count
