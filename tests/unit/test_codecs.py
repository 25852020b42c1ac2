"""KServe v2 HTTP (JSON + binary) and gRPC codecs, and wire compatibility with
tritonclient's own generated messages."""

from __future__ import annotations

import struct

import numpy as np
import orjson
import pytest
from tritonclient.grpc import service_pb2 as triton_pb

from inference.grpc.codec import decode_request as grpc_decode
from inference.grpc.codec import encode_response as grpc_encode
from inference.protocol.datatypes import deserialize_bytes_tensor, serialize_bytes_tensor
from inference.protocol.errors import InvalidInput
from inference.protocol.kserve_http import (
    HEADER_LENGTH,
    TIMEOUT_MS,
    decode_binary_response,
    decode_request,
    encode_binary_request,
    encode_response,
    timeout_header,
)
from inference.protocol.tensors import InferRequest, InferResponse, RequestedOutput, Tensor
from protos.kserve.v2 import grpc_service_pb2 as pb


def test_json_request_nested_and_flat():
    body = orjson.dumps(
        {
            "id": "r1",
            "inputs": [
                {"name": "a", "datatype": "INT32", "shape": [2, 2], "data": [[1, 2], [3, 4]]},
                {"name": "b", "datatype": "FP16", "shape": [2], "data": [0.5, 1.5]},
                {"name": "c", "datatype": "BOOL", "shape": [1], "data": [True]},
            ],
            "outputs": [{"name": "o", "parameters": {"binary_data": True}}],
            "parameters": {"timeout": 5},
        }
    )
    req = decode_request("m", "2", body, None)
    assert req.model_version == "2" and req.id == "r1" and req.parameters == {"timeout": 5}
    a, b, c = req.inputs
    assert a.data.dtype == np.int32 and a.data.tolist() == [[1, 2], [3, 4]]
    assert b.data.dtype == np.float16 and c.data.dtype == np.bool_
    assert req.outputs == (RequestedOutput("o", True),)


def test_binary_request_in_order():
    x = np.arange(6, dtype=np.float32)
    tags = np.array([b"ab", b""], dtype=np.object_)
    raw_tags = serialize_bytes_tensor(tags)
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": [2, 3],
                    "parameters": {"binary_data_size": x.nbytes},
                },
                {
                    "name": "t",
                    "datatype": "BYTES",
                    "shape": [2],
                    "parameters": {"binary_data_size": len(raw_tags)},
                },
            ]
        }
    )
    req = decode_request("m", "", header + x.tobytes() + raw_tags, len(header))
    np.testing.assert_array_equal(req.inputs[0].data, x.reshape(2, 3))
    assert req.inputs[1].data.tolist() == [b"ab", b""]


_GOOD = b'{"inputs": [{"name": "a", "datatype": "FP32", "shape": [1], "data": [1]}]}'


@pytest.mark.parametrize(
    ("body", "header_length", "needle"),
    [
        (b"[1, 2]", None, "must be a JSON object"),
        (b"\xff\xfe", None, "malformed JSON"),
        (b'{"inputs": [{"datatype": "FP32", "shape": [1], "data": [1]}]}', None, "no 'name'"),
        (b'{"inputs": [{"name": "a", "shape": [1], "data": [1]}]}', None, "no 'datatype'"),
        (
            b'{"inputs": [{"name": "a", "datatype": "FP32", "shape": [-1], "data": [1]}]}',
            None,
            "non-negative integers",
        ),
        (
            b'{"inputs": [{"name": "a", "datatype": "FP32", "shape": [1]}]}',
            None,
            "neither 'data' nor binary_data_size",
        ),
        (
            b'{"inputs": [{"name": "a", "datatype": "INT8", "shape": [1], "data": ["x"]}]}',
            None,
            "not INT8",
        ),
        (
            b'{"inputs": [{"name": "a", "datatype": "BYTES", "shape": [1], "data": [1]}]}',
            None,
            "BYTES data must be strings",
        ),
        (_GOOD + b"xyz", len(_GOOD), "3 bytes of binary data follow the inputs unused"),
        (_GOOD, len(_GOOD) + 1, "body has"),
    ],
)
def test_bad_http_requests(body, header_length, needle):
    with pytest.raises(InvalidInput) as err:
        decode_request("m", "", body, header_length)
    assert needle in err.value.message


def test_http_response_binary_and_json():
    y = np.array([[1.5, 2.5]], dtype=np.float32)
    t = np.array([b"hi"], dtype=np.object_)
    response = InferResponse(
        "m", "1", (Tensor("y", "FP32", (1, 2), y), Tensor("t", "BYTES", (1,), t))
    )
    request = InferRequest("m", "", (), outputs=(RequestedOutput("y", True), RequestedOutput("t")))
    body, headers = encode_response(request, response)
    n = int(headers[HEADER_LENGTH])
    doc = orjson.loads(body[:n])
    assert doc["outputs"][0]["parameters"]["binary_data_size"] == 8
    assert np.frombuffer(body[n:], dtype=np.float32).tolist() == [1.5, 2.5]
    assert doc["outputs"][1]["data"] == ["hi"]
    plain, headers = encode_response(InferRequest("m", "", ()), response)
    assert headers["Content-Type"] == "application/json"
    assert orjson.loads(plain)["outputs"][0]["data"] == [1.5, 2.5]


def test_the_clients_binary_request_is_what_the_pod_decodes():
    image = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    ids = np.array([[7, -1]], dtype=np.int64)
    body, headers = encode_binary_request({"image": image, "ids": ids}, "req-9")
    assert timeout_header(0.25) == {TIMEOUT_MS: "250.000"}
    req = decode_request("m", "3", body, int(headers[HEADER_LENGTH]))
    assert (req.model_version, req.id) == ("3", "req-9")
    assert req.parameters == {"binary_data_output": True}
    (a, b) = req.inputs
    assert (a.name, a.datatype, a.shape) == ("image", "UINT8", (2, 4, 4, 3))
    assert np.array_equal(a.data, image) and b.datatype == "INT64"
    assert np.array_equal(b.data, ids)
    _, plain = encode_binary_request({"x": ids})
    assert TIMEOUT_MS not in plain


def test_the_pods_answer_decodes_back_to_its_arrays_binary_or_json():
    y = np.array([[1.5, 2.5]], dtype=np.float32)
    t = np.array([b"hi", b""], dtype=np.object_)
    response = InferResponse(
        "m", "4", (Tensor("y", "FP32", (1, 2), y), Tensor("t", "BYTES", (2,), t))
    )
    asked = InferRequest("m", "", (), parameters={"binary_data_output": True})
    body, headers = encode_response(asked, response)
    outputs, version = decode_binary_response(body, int(headers[HEADER_LENGTH]))
    assert version == "4" and np.array_equal(outputs["y"], y)
    assert outputs["t"].tolist() == [b"hi", b""]
    plain, headers = encode_response(InferRequest("m", "", ()), response)  # JSON data
    assert HEADER_LENGTH not in headers
    outputs, _ = decode_binary_response(plain, None)
    assert outputs["y"].dtype == np.float32 and outputs["y"].tolist() == [[1.5, 2.5]]
    assert outputs["t"].tolist() == [b"hi", b""]
    n = int(encode_response(asked, response)[1][HEADER_LENGTH])
    with pytest.raises(InvalidInput, match="truncated"):
        decode_binary_response(body[:-3], n)
    with pytest.raises(InvalidInput, match=HEADER_LENGTH):
        decode_binary_response(body, len(body) + 1)


def test_bytes_tensor_round_trip_and_truncation():
    values = np.array([b"", b"x" * 300, "é".encode()], dtype=np.object_)
    raw = serialize_bytes_tensor(values)
    assert deserialize_bytes_tensor(raw, 3, "t").tolist() == values.tolist()
    with pytest.raises(InvalidInput, match="ends after 2 of 3"):
        deserialize_bytes_tensor(raw[: 4 + 4 + 300], 3, "t")
    with pytest.raises(InvalidInput, match="left over"):
        deserialize_bytes_tensor(raw + struct.pack("<I", 0), 3, "t")


def test_grpc_contents_and_raw():
    msg = pb.ModelInferRequest(model_name="m")
    tensor = msg.inputs.add(name="a", datatype="INT64", shape=[2])
    tensor.contents.int64_contents.extend([7, 8])
    req = grpc_decode(msg)
    assert req.inputs[0].data.tolist() == [7, 8]
    tensor.contents.int64_contents.append(9)
    with pytest.raises(InvalidInput, match="needs 2 elements, got 3"):
        grpc_decode(msg)
    fp16 = pb.ModelInferRequest(model_name="m")
    fp16.inputs.add(name="h", datatype="FP16", shape=[1])
    with pytest.raises(InvalidInput, match="raw_input_contents"):
        grpc_decode(fp16)


def test_wire_compatible_with_tritonclient_messages():
    """tritonclient's generated request parses as ours, and our response as theirs."""
    theirs = triton_pb.ModelInferRequest(model_name="m", model_version="3", id="x")
    item = theirs.inputs.add(name="a", datatype="FP32", shape=[1, 2])
    item.parameters["p"].int64_param = 4
    theirs.raw_input_contents.append(np.array([1, 2], dtype=np.float32).tobytes())
    theirs.parameters["timeout"].int64_param = 10
    ours = pb.ModelInferRequest.FromString(theirs.SerializeToString())
    req = grpc_decode(ours)
    assert (req.model_name, req.model_version, req.id) == ("m", "3", "x")
    assert req.inputs[0].data.tolist() == [[1.0, 2.0]] and req.parameters == {"timeout": 10}
    y = np.array([[3.0]], dtype=np.float64)
    encoded = grpc_encode(InferResponse("m", "3", (Tensor("y", "FP64", (1, 1), y),), id="x"))
    back = triton_pb.ModelInferResponse.FromString(encoded.SerializeToString())
    assert back.outputs[0].name == "y" and list(back.outputs[0].shape) == [1, 1]
    assert np.frombuffer(back.raw_output_contents[0], dtype=np.float64).tolist() == [3.0]
