"""A real pod's inference answers carry its load report (gRPC trailing metadata, HTTP
headers)."""

from __future__ import annotations

import http.client

import grpc
import numpy as np
import pytest

from inference.protocol.kserve_http import (
    HEADER_LENGTH,
    TIMEOUT_MS,
    decode_binary_response,
    encode_binary_request,
)
from inference.protocol.loadreport import parse
from protos.kserve.v2 import grpc_service_pb2 as pb
from servicekit import kserve_grpc
from servicekit.web import ERROR_CODE

pytestmark = pytest.mark.integration


def test_every_inference_answer_carries_the_pods_load_report(pod):
    request = pb.ModelInferRequest(model_name="scale")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 2])
    request.raw_input_contents.append(np.ones((1, 2), np.float32).tobytes())
    with grpc.insecure_channel(pod.grpc) as channel:
        infer = channel.unary_unary(
            kserve_grpc.method_path("ModelInfer"),
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        _, call = infer.with_call(request, timeout=10)
        report = parse(call.trailing_metadata())
        assert report is not None  # seeded by the warm-up: measured from the first answer
        assert report.row_s > 0 and report.wait_s >= report.row_s
        unknown = pb.ModelInferRequest(model_name="nope")
        with pytest.raises(grpc.RpcError) as err:
            infer(unknown, timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert parse(err.value.trailing_metadata()) is None  # no model, no report


def test_http_answers_carry_the_load_report_and_the_errors_status_name(pod):
    # the gateway's HTTP transport reads both (gateway/upstream/kserve.py): the report
    # balances its pools, the status name tells an overloaded pod (retry elsewhere)
    # from an unavailable one, which HTTP's 503 alone does not
    body, headers = encode_binary_request({"x": np.ones((1, 2), np.float32)})
    conn = http.client.HTTPConnection("127.0.0.1", pod.http_port, timeout=30)
    try:
        conn.request("POST", "/v2/models/scale/infer", body=body, headers=headers)
        answer = conn.getresponse()
        data, got = answer.read(), dict(answer.getheaders())
        assert answer.status == 200, data
        outputs, _ = decode_binary_response(data, int(got[HEADER_LENGTH]))
        assert outputs  # the model's answer, as binary data
        report = parse(got.items())
        assert report is not None and report.row_s > 0 and report.wait_s >= report.row_s
        conn.request("POST", "/v2/models/nope/infer", body=body, headers=headers)
        answer = conn.getresponse()
        answer.read()
        assert (answer.status, answer.getheader(ERROR_CODE)) == (404, "NOT_FOUND")
        assert parse(answer.getheaders()) is None  # no model, no report
        bad = {**headers, TIMEOUT_MS: "soon"}
        conn.request("POST", "/v2/models/scale/infer", body=body, headers=bad)
        answer = conn.getresponse()
        assert answer.status == 400 and TIMEOUT_MS.encode() in answer.read()
        assert answer.getheader(ERROR_CODE) == "INVALID_ARGUMENT"
        assert parse(answer.getheaders()) is not None  # the model exists: its report
    finally:
        conn.close()
