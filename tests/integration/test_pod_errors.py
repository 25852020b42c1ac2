"""Every bad input gets its documented status and a message naming the problem."""

from __future__ import annotations

import http.client
import json
import struct

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
from tritonclient.utils import InferenceServerException

from inference.launch import start_pod

pytestmark = pytest.mark.integration


def request(pod, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", pod.http_port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def post(pod, path: str, body: bytes, headers: dict | None = None):
    return request(pod, "POST", path, body, headers)


def infer_json(pod, doc, model="multi_io", path=None):
    status, body = post(pod, path or f"/v2/models/{model}/infer", json.dumps(doc).encode())
    return status, json.loads(body)["error"] if status != 200 else json.loads(body)


GOOD = [
    {"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]},
    {"name": "ids", "datatype": "INT64", "shape": [1, 3], "data": [1, 2, 3]},
    {"name": "tag", "datatype": "BYTES", "shape": [1, 1], "data": ["a"]},
]


def with_input(index: int, **change):
    inputs = [dict(t) for t in GOOD]
    inputs[index].update(change)
    return {"inputs": inputs}


@pytest.mark.parametrize(
    ("doc", "status", "needle"),
    [
        ({"inputs": GOOD}, 200, None),
        (
            {"inputs": [*GOOD, {"name": "nope", "datatype": "FP32", "shape": [1], "data": [1]}]},
            400,
            "unknown input 'nope'",
        ),
        ({"inputs": GOOD[:2]}, 400, "['tag']"),
        (with_input(1, datatype="INT32"), 400, "input 'ids' has datatype INT32"),
        (with_input(0, shape=[1, 5], data=[1, 2, 3, 4, 5]), 400, "input 'x' has shape [1, 5]"),
        (with_input(0, data=[1, 2, 3]), 400, "input 'x': shape [1, 4] needs 4 elements, got 3"),
        (with_input(0, shape=[9, 4], data=[0] * 36), 400, "carries 9 rows"),
        (with_input(1, data=[1.5, 2, 3]), 400, "not INT64"),
        (with_input(0, datatype="FP128"), 400, "unsupported datatype 'FP128'"),
        (with_input(0, data=[[1, 2], [3]]), 400, "ragged"),
        ({"inputs": []}, 400, "'inputs' must be a non-empty list"),
        ({"inputs": GOOD, "outputs": [{"name": "zzz"}]}, 400, "unknown output 'zzz'"),
    ],
)
def test_bad_json_inputs(pod, doc, status, needle):
    got_status, body = infer_json(pod, doc)
    assert got_status == status, body
    if needle:
        assert needle in body


def test_unknown_model_and_version(pod):
    status, message = infer_json(pod, {"inputs": GOOD}, model="ghost")
    assert status == 404 and "unknown model 'ghost'" in message
    status, message = infer_json(pod, {"inputs": GOOD}, path="/v2/models/scale/versions/7/infer")
    assert status == 404 and "no version '7'" in message
    status, _ = request(pod, "GET", "/v2/models/ghost")
    assert status == 404


def test_malformed_json(pod):
    status, body = post(pod, "/v2/models/multi_io/infer", b'{"inputs": [')
    assert status == 400 and "malformed JSON" in json.loads(body)["error"]


def _binary_request(raw: bytes, size: int) -> tuple[bytes, dict]:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "features",
                    "datatype": "FP32",
                    "shape": [1, 64],
                    "parameters": {"binary_data_size": size},
                },
            ]
        }
    ).encode()
    return header + raw, {
        "Inference-Header-Content-Length": str(len(header)),
        "Content-Type": "application/octet-stream",
    }


def test_binary_body(pod):
    raw = np.ones(64, dtype=np.float32).tobytes()
    status, _ = post(pod, "/v2/models/mlp/infer", *_binary_request(raw, 256))
    assert status == 200
    status, body = post(pod, "/v2/models/mlp/infer", *_binary_request(raw[:100], 256))
    assert status == 400 and "truncated" in json.loads(body)["error"]
    status, body = post(pod, "/v2/models/mlp/infer", *_binary_request(raw[:100], 100))
    assert status == 400 and "needs 256" in json.loads(body)["error"]
    body, headers = _binary_request(raw, 256)
    headers["Inference-Header-Content-Length"] = str(len(body) + 10)
    status, out = post(pod, "/v2/models/mlp/infer", body, headers)
    assert status == 400 and "Inference-Header-Content-Length" in json.loads(out)["error"]


def test_truncated_bytes_tensor(pod):
    raw_tag = struct.pack("<I", 10) + b"abc"
    header = json.dumps(
        {
            "inputs": [
                GOOD[0],
                GOOD[1],
                {
                    "name": "tag",
                    "datatype": "BYTES",
                    "shape": [1, 1],
                    "parameters": {"binary_data_size": len(raw_tag)},
                },
            ]
        }
    ).encode()
    status, body = post(
        pod,
        "/v2/models/multi_io/infer",
        header + raw_tag,
        {"Inference-Header-Content-Length": str(len(header))},
    )
    assert (
        status == 400 and "input 'tag': BYTES element 0 is truncated" in json.loads(body)["error"]
    )


def test_grpc_errors(pod):
    client = tgrpc.InferenceServerClient(pod.grpc)
    item = tgrpc.InferInput("x", [1, 3], "FP32")
    item.set_data_from_numpy(np.zeros((1, 3), dtype=np.float32))
    with pytest.raises(InferenceServerException) as err:
        client.infer("scale", [item])
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "input 'x' has shape [1, 3]" in err.value.message()
    with pytest.raises(InferenceServerException) as err:
        client.infer("ghost", [item])
    assert err.value.status() == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException) as err:
        client.get_model_metadata("scale", model_version="9")
    assert err.value.status() == "StatusCode.NOT_FOUND"


def test_grpc_raw_contents_count_mismatch(pod):
    from protos.kserve.v2 import grpc_service_pb2 as pb
    from servicekit import kserve_grpc

    request = pb.ModelInferRequest(model_name="scale")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 2])
    request.raw_input_contents.append(b"\0" * 7)
    with grpc.insecure_channel(pod.grpc) as channel:
        infer = channel.unary_unary(
            kserve_grpc.method_path("ModelInfer"),
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        with pytest.raises(grpc.RpcError) as err:
            infer(request)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "got 7 bytes of FP32 data" in err.value.details()


def test_body_over_cap_is_413(standard_repo):
    pod = start_pod(standard_repo, env={"TENFOLD_INFERENCE_MAX_REQUEST_BYTES": "4096"})
    try:
        big = json.dumps(
            {
                "inputs": [
                    {"name": "x", "datatype": "FP32", "shape": [1, 2000], "data": [0.5] * 2000}
                ]
            }
        ).encode()
        status, body = post(pod, "/v2/models/scale/infer", big)
        assert status == 413 and "too large" in json.loads(body)["error"]
        client = tgrpc.InferenceServerClient(pod.grpc)
        item = tgrpc.InferInput("x", [4, 2000], "FP32")
        item.set_data_from_numpy(np.zeros((4, 2000), dtype=np.float32))
        with pytest.raises(InferenceServerException) as err:
            client.infer("scale", [item])
        assert err.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
        # the pod keeps serving after rejecting
        ok, _ = infer_json(
            pod,
            {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]},
            model="scale",
        )
        assert ok == 200
    finally:
        assert pod.stop() == 0
