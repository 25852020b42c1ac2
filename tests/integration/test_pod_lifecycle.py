"""Batching, overload, SIGTERM drain and broken repositories, against real pods."""

from __future__ import annotations

import asyncio
import http.client
import json
import signal
import threading
import time

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc.aio as tgrpc_aio

from inference.examples import mlp
from inference.launch import start_pod
from inference.protocol.kserve_pb import infer_outputs, infer_request
from protos.kserve.v2 import grpc_service_pb2 as pb
from servicekit.kserve_grpc import MODEL_INFER
from tests.models import scale, write_model

pytestmark = pytest.mark.integration


def _metric(pod, name: str, **labels) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", pod.metrics_port, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(name + "{") and all(p in line for p in want.split(",")):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} {labels} not in metrics")


def _row(value: float) -> list[float]:
    """Request ``value``'s row: two different numbers, distinct for every request."""
    return [value, value + 0.25]


def _post_scale(port: int, value: float, results: list, index: int) -> None:
    body = json.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": _row(value)}]}
    ).encode()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("POST", "/v2/models/scale/infer", body=body)
        response = conn.getresponse()
        results[index] = (
            response.status,
            json.loads(response.read()),
            response.getheader("Retry-After"),
            time.monotonic(),
        )
        conn.close()
    except OSError as exc:
        results[index] = ("refused", str(exc), None, time.monotonic())


def _fire(port: int, count: int) -> tuple[list, list[threading.Thread]]:
    results: list = [None] * count
    threads = [
        threading.Thread(target=_post_scale, args=(port, float(i), results, i))
        for i in range(count)
    ]
    for thread in threads:
        thread.start()
    return results, threads


#: the least mean batch size (rows) 48 concurrent one-row requests must reach
MIN_MEAN_ROWS = 4


async def test_concurrent_requests_form_batches_and_get_their_own_rows(pod, standard_repo):
    rng = np.random.default_rng(3)
    rows = rng.standard_normal((48, 64)).astype(np.float32)
    before = _metric(pod, "tenfold_inference_batch_size_rows_count", model="mlp")
    rows_before = _metric(pod, "tenfold_inference_batch_size_rows_sum", model="mlp")
    client = tgrpc_aio.InferenceServerClient(pod.grpc)

    async def one(row):
        item = tgrpc_aio.InferInput("features", [1, 64], "FP32")
        item.set_data_from_numpy(row[None, :])
        return (await client.infer("mlp", [item])).as_numpy("score")

    try:
        outputs = await asyncio.gather(*(one(r) for r in rows))
    finally:
        await client.close()
    session = ort.InferenceSession(str(standard_repo / "mlp" / "1" / "model.onnx"))
    expected = session.run(None, {"features": rows})[0]
    np.testing.assert_allclose(np.concatenate(outputs), expected, rtol=1e-5, atol=1e-6)
    batches = _metric(pod, "tenfold_inference_batch_size_rows_count", model="mlp") - before
    rows_run = _metric(pod, "tenfold_inference_batch_size_rows_sum", model="mlp") - rows_before
    assert rows_run == 48  # every row ran exactly once
    # mlp: max_batch_size 64, max_queue_delay 20 ms, one instance. 48 concurrent rows fit
    # one batch; a batch waits 20 ms for more rows and while it computes the next ones
    # queue, so a pod that merges runs them in a handful. The bar is a mean of at least
    # MIN_MEAN_ROWS rows per batch (12 batches; a pod that does not merge runs 48, one
    # that merges only pairs 24): the 4x margin over "a few" absorbs a slow client.
    print(f"48 concurrent requests ran as {batches:.0f} batches")
    assert batches <= 48 / MIN_MEAN_ROWS, f"48 concurrent requests ran as {batches} batches"


OVERLOAD_CONFIG = """
name: "scale"
platform: "onnxruntime_onnx"
max_batch_size: 64
input [ { name: "x" data_type: TYPE_FP32 dims: [ 2 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 2 ] } ]
dynamic_batching {
  max_queue_delay_microseconds: 1500000
  default_queue_policy { max_queue_size: 4 }
}
"""


@pytest.fixture(scope="module")
def slow_queue_repo(tmp_path_factory):
    repo = tmp_path_factory.mktemp("slow")
    write_model(repo, "scale", scale(2.0), OVERLOAD_CONFIG)
    return repo


def test_overload_rejects_excess_at_once(slow_queue_repo):
    pod = start_pod(slow_queue_repo)
    try:
        results, threads = _fire(pod.http_port, 12)
        for thread in threads:
            thread.join(30)
        ok = [r for r in results if r[0] == 200]
        shed = [r for r in results if r[0] == 503]
        assert len(ok) == 4 and len(shed) == 8, results
        assert all("queue is full" in r[1]["error"] and r[2] == "1" for r in shed)
        # every shed request came back before any admitted one (which waited for the delay)
        assert max(r[3] for r in shed) < min(r[3] for r in ok)
        # each admitted request (they ran as one batch) got its own row, doubled
        for index, (status, body, _, _) in enumerate(results):
            if status == 200:
                assert body["outputs"][0]["data"] == [2.0 * v for v in _row(index)], index
        assert (
            _metric(
                pod, "tenfold_inference_request_failure_total", model="scale", reason="Overloaded"
            )
            == 8
        )
    finally:
        assert pod.stop() == 0


def test_sigterm_drains_in_flight_requests_and_exits_zero(slow_queue_repo):
    pod = start_pod(slow_queue_repo, "--drain-grace-s", "0")
    results, threads = _fire(pod.http_port, 4)
    deadline = time.monotonic() + 10
    while _metric(pod, "tenfold_inference_pending_requests", model="scale") < 4:
        assert time.monotonic() < deadline, "requests never queued"
        time.sleep(0.02)
    pod.proc.send_signal(signal.SIGTERM)
    assert pod.wait_for("draining", timeout=10)
    late: list = [None]
    _post_scale(pod.http_port, 9.0, late, 0)
    for thread in threads:
        thread.join(30)
    assert pod.proc.wait(30) == 0
    assert [r[0] for r in results] == [200] * 4, results
    for index, (_, body, _, _) in enumerate(results):
        assert body["outputs"][0]["data"] == [2.0 * v for v in _row(index)]
    # refused by the dataplane, not by a closing listener: it waits for in-flight work
    status, body, retry_after, _ = late[0]
    assert (status, retry_after) == (503, "1"), late
    assert "shutting down" in body["error"]


def _infer_on(conn: http.client.HTTPConnection) -> tuple[int, str | None]:
    """One ``scale`` inference on ``conn``: (status, its Connection header)."""
    body = json.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1.0, 2.0]}]}
    )
    conn.request("POST", "/v2/models/scale/infer", body=body)
    response = conn.getresponse()
    response.read()
    return response.status, response.getheader("Connection")


# guards README.md, Lifecycle: "ready turns false while the pod still serves for
# drain_grace_s (answers carry Connection: close), then new requests get 503/UNAVAILABLE"
def test_sigterm_keeps_serving_not_ready_for_the_grace_window_then_refuses(tmp_path):
    write_model(tmp_path, "scale", scale(2.0), None)
    pod = start_pod(tmp_path, "--drain-grace-s", "3")
    try:
        conn = http.client.HTTPConnection("127.0.0.1", pod.http_port, timeout=10)
        assert _infer_on(conn) == (200, None)  # a keep-alive connection
        pod.proc.send_signal(signal.SIGTERM)
        assert pod.wait_for("draining", timeout=10)
        signalled = time.monotonic()
        probe = http.client.HTTPConnection("127.0.0.1", pod.http_port, timeout=10)
        probe.request("GET", "/v2/health/ready")
        assert probe.getresponse().status == 503  # balancers take it out...
        assert _infer_on(conn) == (200, "close")  # ...while it still serves, once more
        within = time.monotonic() - signalled
        assert within < 3, f"the checks took {within:.1f} s, longer than the window"
        while True:  # after the window: refused by the dataplane, or the port closed
            late: list = [None]
            _post_scale(pod.http_port, 1.0, late, 0)
            if late[0][0] != 200:
                break
            time.sleep(0.05)
        assert late[0][0] in (503, "refused"), late
        assert time.monotonic() - signalled > 2.5
        assert pod.proc.wait(30) == 0
    finally:
        pod.stop()


async def _grpc_call(channel, values: list[float]):
    """(code, details, retry-after metadata, output row) of one ModelInfer of ``scale``."""
    request = infer_request("scale", {"x": np.array([values], np.float32)})
    call = channel.unary_unary(
        MODEL_INFER,
        request_serializer=pb.ModelInferRequest.SerializeToString,
        response_deserializer=pb.ModelInferResponse.FromString,
    )
    try:
        response = await call(request, timeout=30)
    except grpc.aio.AioRpcError as exc:
        metadata = dict(exc.trailing_metadata() or ())
        return exc.code(), exc.details(), metadata.get("retry-after"), None
    return grpc.StatusCode.OK, "", None, infer_outputs(response)["y"][0].tolist()


async def _fill_queue(pod, channel) -> list[asyncio.Task]:
    """Four gRPC requests queued in ``scale`` (max_queue_size 4, 1.5 s batching delay):
    the queue is full, and stays full until the delay is over."""
    admitted = [asyncio.create_task(_grpc_call(channel, _row(i))) for i in range(4)]
    deadline = time.monotonic() + 30
    while (
        await asyncio.to_thread(_metric, pod, "tenfold_inference_pending_requests", model="scale")
        < 4
    ):
        assert time.monotonic() < deadline, "the requests never queued"
        await asyncio.sleep(0.02)
    return admitted


async def _check_admitted(admitted: list[asyncio.Task]) -> None:
    for index, (code, details, _, row) in enumerate(await asyncio.gather(*admitted)):
        assert code == grpc.StatusCode.OK, (code, details)
        assert row == [2.0 * v for v in _row(index)]  # its own row, doubled


# guards README.md, the pod's error table: "overload: queue full, or timed out in the
# queue | 503 + `Retry-After` | RESOURCE_EXHAUSTED", and why: "Overload uses
# RESOURCE_EXHAUSTED over gRPC [...] so a gateway can tell "this pod is full" from "this
# pod is gone" (UNAVAILABLE) when it decides on retries." (UNAVAILABLE for a broken
# model: test_broken_model_reported_not_ready_when_lenient; for draining: below)
async def test_a_full_queue_is_resource_exhausted_over_grpc_and_503_over_http(slow_queue_repo):
    pod = await asyncio.to_thread(start_pod, slow_queue_repo)
    try:
        async with grpc.aio.insecure_channel(pod.grpc) as channel:
            admitted = await _fill_queue(pod, channel)
            code, details, retry_after, _ = await _grpc_call(channel, _row(8))
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (code, details)
            assert "queue is full" in details and retry_after == "1"
            full: list = [None]
            await asyncio.to_thread(_post_scale, pod.http_port, 9.0, full, 0)
            status, body, header, _ = full[0]
            assert status == 503 and header == "1" and "queue is full" in body["error"]
            await _check_admitted(admitted)
    finally:
        assert await asyncio.to_thread(pod.stop) == 0


# guards README.md, the pod's error table: "pod draining, model not ready or broken |
# 503 + `Retry-After` | UNAVAILABLE"; docs/gateway.md retries "on connection failure,
# UNAVAILABLE or RESOURCE_EXHAUSTED from a pod" (not on CANCELLED). The gRPC server
# stops only once in-flight work is done, so a call on an open channel meets the
# dataplane's UNAVAILABLE, never grpc core's CANCELLED of a closing server.
async def test_a_draining_pod_answers_new_grpc_calls_unavailable(slow_queue_repo):
    pod = await asyncio.to_thread(start_pod, slow_queue_repo, "--drain-grace-s", "0")
    try:
        async with grpc.aio.insecure_channel(pod.grpc) as channel:
            admitted = await _fill_queue(pod, channel)  # keeps the pod draining ~1.5 s
            pod.proc.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(pod.wait_for, "draining", 10)
            code, details, retry_after, _ = await _grpc_call(channel, _row(10))
            print(f"draining pod answered {code.name} {details!r} retry-after={retry_after}")
            await _check_admitted(admitted)
        assert await asyncio.to_thread(pod.proc.wait, 30) == 0
    finally:
        await asyncio.to_thread(pod.stop)
    assert code == grpc.StatusCode.UNAVAILABLE, (code, details)
    assert retry_after == "1" and "shutting down" in details, (retry_after, details)


def _broken_repo(root):
    write_model(root, "good", scale(2.0), None)
    wrong = OVERLOAD_CONFIG.replace('"scale"', '"broken"').replace('name: "x"', 'name: "input0"')
    write_model(root, "broken", scale(1.0), wrong)
    return root


def test_broken_model_refuses_start_when_strict(tmp_path):
    pod = start_pod(_broken_repo(tmp_path), wait_ready=False)
    assert pod.proc.wait(60) == 1
    output = pod.output()
    assert "model 'broken'" in output and "config input 'input0' is not an input" in output


def test_broken_model_reported_not_ready_when_lenient(tmp_path):
    pod = start_pod(_broken_repo(tmp_path), "--no-strict-model-load")
    try:
        assert pod.wait_for(r"model 'broken' NOT served", timeout=10)

        def get(method, path, body=None):
            conn = http.client.HTTPConnection("127.0.0.1", pod.http_port, timeout=10)
            conn.request(method, path, body=body)
            response = conn.getresponse()
            result = response.status, response.read()
            conn.close()
            return result

        assert get("GET", "/v2/models/broken/ready")[0] == 503
        status, body = get("POST", "/v2/models/broken/infer", b'{"inputs": []}')
        assert status == 503 and "input0" in json.loads(body)["error"]
        assert get("GET", "/v2/health/ready")[0] == 200
        assert get("GET", "/v2/models/good/ready")[0] == 200
        code, details, retry_after = asyncio.run(_grpc_infer_status(pod, "broken"))
        # UNAVAILABLE with Retry-After as trailing metadata, the same rule as over HTTP
        assert code == grpc.StatusCode.UNAVAILABLE and "input0" in details
        assert retry_after == "1"
    finally:
        assert pod.stop() == 0


async def _grpc_infer_status(pod, model: str):
    request = infer_request(model, {"x": np.ones((1, 2), np.float32)}).SerializeToString()
    async with grpc.aio.insecure_channel(pod.grpc) as channel:
        try:
            await channel.unary_unary(MODEL_INFER)(request, timeout=10)
        except grpc.aio.AioRpcError as exc:
            metadata = dict(exc.trailing_metadata() or ())
            return exc.code(), exc.details(), metadata.get("retry-after")
    return grpc.StatusCode.OK, "", None


def test_mlp_example_repository_serves(tmp_path):
    from inference.examples import write_example_repository

    write_example_repository(tmp_path)
    pod = start_pod(tmp_path)
    try:
        body = json.dumps(
            {
                "inputs": [
                    {"name": "features", "datatype": "FP32", "shape": [1, 64], "data": [0.5] * 64}
                ]
            }
        ).encode()
        conn = http.client.HTTPConnection("127.0.0.1", pod.http_port, timeout=10)
        conn.request("POST", "/v2/models/ranker_demo/infer", body=body)
        out = json.loads(conn.getresponse().read())
        session = ort.InferenceSession(mlp().SerializeToString())
        expected = session.run(None, {"features": np.full((1, 64), 0.5, np.float32)})[0]
        assert out["outputs"][0]["data"] == pytest.approx(expected.ravel().tolist(), rel=1e-6)
    finally:
        assert pod.stop() == 0
