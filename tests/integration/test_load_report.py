"""A real pod's inference answers carry its load report (gRPC trailing metadata)."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from inference.protocol.loadreport import parse
from protos.kserve.v2 import grpc_service_pb2 as pb
from servicekit import kserve_grpc

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
