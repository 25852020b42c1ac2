"""tritonclient (HTTP and gRPC, sync and aio) against a real pod on loopback."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.grpc.aio as tgrpc_aio
import tritonclient.http as thttp
import tritonclient.http.aio as thttp_aio

pytestmark = pytest.mark.integration


def _direct(repo, model: str, feed: dict, version: int = 1) -> list[np.ndarray]:
    session = ort.InferenceSession(str(repo / model / str(version) / "model.onnx"))
    return session.run(None, feed)


def _multi_inputs(module, binary: bool):
    x = np.arange(8, dtype=np.float32).reshape(2, 4) / 3
    ids = np.array([[1, 2, 3], [10, 20, 30]], dtype=np.int64)
    tag = np.array([[b"hello"], [b"w\xc3\xb6rld"]], dtype=np.object_)
    inputs = [
        module.InferInput("x", [2, 4], "FP32"),
        module.InferInput("ids", [2, 3], "INT64"),
        module.InferInput("tag", [2, 1], "BYTES"),
    ]
    for item, value in zip(inputs, (x, ids, tag), strict=True):
        if module is thttp or module is thttp_aio:
            item.set_data_from_numpy(value, binary_data=binary)
        else:
            item.set_data_from_numpy(value)
    return inputs, (x, ids, tag)


def _check_multi(result, values):
    x, ids, tag = values
    np.testing.assert_array_equal(result.as_numpy("y"), x * 2)
    np.testing.assert_array_equal(result.as_numpy("total"), ids.sum(axis=1, keepdims=True))
    # JSON carries BYTES as text, which tritonclient hands back as str
    tags = [v.encode() if isinstance(v, str) else v for v in result.as_numpy("tag_out").ravel()]
    assert tags == tag.ravel().tolist() == [b"hello", "wörld".encode()]


def test_server_and_model_metadata_http(pod):
    client = thttp.InferenceServerClient(pod.http)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("mlp")
    meta = client.get_server_metadata()
    assert meta["name"] == "tenfold" and "binary_tensor_data" in meta["extensions"]
    model = client.get_model_metadata("multi_io")
    assert model["platform"] == "onnxruntime_onnx"
    assert [(t["name"], t["datatype"], t["shape"]) for t in model["inputs"]] == [
        ("x", "FP32", [-1, 4]),
        ("ids", "INT64", [-1, 3]),
        ("tag", "BYTES", [-1, 1]),
    ]
    config = client.get_model_config("mlp")
    assert config["max_batch_size"] == 64
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == "20000"


def test_server_and_model_metadata_grpc(pod):
    client = tgrpc.InferenceServerClient(pod.grpc)
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_model_metadata("multi_io")
    assert [o.name for o in meta.outputs] == ["y", "total", "tag_out"]
    assert list(meta.outputs[1].shape) == [-1, 1]
    config = client.get_model_config("multi_io").config
    assert config.max_batch_size == 8 and [i.name for i in config.input] == ["x", "ids", "tag"]
    assert client.get_server_metadata().name == "tenfold"


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_http_infer_multi_io(pod, binary):
    client = thttp.InferenceServerClient(pod.http)
    inputs, values = _multi_inputs(thttp, binary)
    outputs = [thttp.InferRequestedOutput(n, binary_data=binary) for n in ("y", "total", "tag_out")]
    _check_multi(client.infer("multi_io", inputs, outputs=outputs), values)


def test_grpc_infer_multi_io(pod):
    client = tgrpc.InferenceServerClient(pod.grpc)
    inputs, values = _multi_inputs(tgrpc, True)
    _check_multi(client.infer("multi_io", inputs), values)


def test_mlp_matches_onnxruntime_directly(pod, standard_repo):
    features = np.random.default_rng(7).standard_normal((5, 64)).astype(np.float32)
    (expected,) = _direct(standard_repo, "mlp", {"features": features})
    http = thttp.InferenceServerClient(pod.http)
    item = thttp.InferInput("features", [5, 64], "FP32")
    item.set_data_from_numpy(features)
    np.testing.assert_allclose(http.infer("mlp", [item]).as_numpy("score"), expected, rtol=1e-6)
    grpc_client = tgrpc.InferenceServerClient(pod.grpc)
    item = tgrpc.InferInput("features", [5, 64], "FP32")
    item.set_data_from_numpy(features)
    np.testing.assert_allclose(
        grpc_client.infer("mlp", [item]).as_numpy("score"), expected, rtol=1e-6
    )


async def test_aio_clients(pod):
    features = np.ones((2, 64), dtype=np.float32)
    async with thttp_aio.InferenceServerClient(pod.http) as http:
        assert await http.is_server_ready()
        item = thttp_aio.InferInput("features", [2, 64], "FP32")
        item.set_data_from_numpy(features)
        http_out = (await http.infer("mlp", [item])).as_numpy("score")
    grpc_client = tgrpc_aio.InferenceServerClient(pod.grpc)
    try:
        assert await grpc_client.is_model_ready("mlp")
        item = tgrpc_aio.InferInput("features", [2, 64], "FP32")
        item.set_data_from_numpy(features)
        grpc_out = (await grpc_client.infer("mlp", [item])).as_numpy("score")
        inputs, values = _multi_inputs(tgrpc_aio, True)
        _check_multi(await grpc_client.infer("multi_io", inputs), values)
    finally:
        await grpc_client.close()
    np.testing.assert_array_equal(http_out, grpc_out)
    assert http_out.shape == (2, 1)


def test_versions_and_autocompleted_config(pod):
    client = tgrpc.InferenceServerClient(pod.grpc)
    x = np.array([[1.0, 2.0]], dtype=np.float32)

    def run(model, version=""):
        item = tgrpc.InferInput("x", [1, 2], "FP32")
        item.set_data_from_numpy(x)
        return client.infer(model, [item], model_version=version).as_numpy("y")

    # version_policy all: both versions served; no version means the latest
    np.testing.assert_array_equal(run("scale", "1"), x * 1)
    np.testing.assert_array_equal(run("scale", "2"), x * 3)
    np.testing.assert_array_equal(run("scale"), x * 3)
    assert list(client.get_model_metadata("scale").versions) == ["1", "2"]
    # the model without config.pbtxt was completed from the ONNX model
    np.testing.assert_array_equal(run("auto"), x * 5)
    config = client.get_model_config("auto").config
    assert config.max_batch_size == 4 and config.HasField("dynamic_batching")
    assert [i.name for i in config.input] == ["x"] and list(config.input[0].dims) == [2]


def test_grpc_health_and_reflection(pod):
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    with grpc.insecure_channel(pod.grpc) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        status = stub.Check(health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService"))
        assert status.status == health_pb2.HealthCheckResponse.SERVING
        database = ProtoReflectionDescriptorDatabase(channel)
        services = list(database.get_services())
        assert "inference.GRPCInferenceService" in services
        assert "grpc.health.v1.Health" in services
        file = database.FindFileContainingSymbol("inference.GRPCInferenceService")
        methods = {m.name for s in file.service for m in s.method}
        assert {"ModelInfer", "ModelMetadata", "ServerLive"} <= methods
