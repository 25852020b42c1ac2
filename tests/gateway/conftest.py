from __future__ import annotations

import io
import signal
import threading
import time
from concurrent import futures
from contextlib import contextmanager

import grpc
import numpy as np
import pytest
import requests
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from gateway.launch import gateway_config, start_gateway
from inference.launch import start_pod
from protos.kserve.v2 import grpc_service_pb2 as kpb
from servicekit import kserve_grpc
from servicekit.launcher import stop_all


def jpeg(width: int = 64, height: int = 64) -> bytes:
    """A seeded noise JPEG (noise: it does not compress away)."""
    out = io.BytesIO()
    pixels = np.random.default_rng(1).integers(0, 255, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(out, format="JPEG")
    return out.getvalue()


def wait_until(condition, what: str, timeout: float = 60.0, every: float = 0.05):
    """Poll ``condition`` until it returns something true; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} after {timeout} s")
        time.sleep(every)


@pytest.fixture(scope="module")
def pods(quick_repo):
    started = [start_pod(quick_repo), start_pod(quick_repo)]
    yield started
    stop_all(started)


@pytest.fixture(scope="module")
def make_gateway(quick_repo, pods):
    """Start gateways over the module's pods with extra settings; all stopped at the end."""
    started = []

    def make(**overrides):
        gateway = start_gateway(gateway_config(quick_repo, pods, **overrides))
        started.append(gateway)
        return gateway

    yield make
    stop_all(started)


@pytest.fixture(scope="module")
def gateway(make_gateway):
    return make_gateway()


# --- reading Prometheus metrics --------------------------------------------------------


def metric_total(text: str, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels`` (0 if none)."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def scrape(address: str) -> str:
    """The exposition text at ``http://address/metrics``."""
    answer = requests.get(f"http://{address}/metrics", timeout=10)
    answer.raise_for_status()
    return answer.text


def pod_metrics(pod) -> str:
    return scrape(f"127.0.0.1:{pod.metrics_port}")


def pod_inferences(pod, **labels: str) -> float:
    """Inference requests a pod has finished, succeeded or failed (its own counters)."""
    text = pod_metrics(pod)
    return metric_total(text, "tenfold_inference_request_success_total", **labels) + (
        metric_total(text, "tenfold_inference_request_failure_total", **labels)
    )


# --- freezing pods: a deterministic "slow upstream" -----------------------------------


@contextmanager
def paused(*services):
    """SIGSTOP the given pods (their sockets stay open: calls sent to them hang) and
    SIGCONT them on the way out, whatever happens in between."""
    for service in services:
        service.proc.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        for service in services:
            if service.proc.poll() is None:
                service.proc.send_signal(signal.SIGCONT)


# --- a gate in front of a pod: holds inference calls until opened ------------------


class Gate:
    """A KServe v2 gRPC endpoint (in this process) in front of a real pod.

    ServerReady says ready. Every ModelInfer is recorded with the time it had left (its
    gRPC deadline, as the gateway set it) and held while the gate is closed; once the
    gate is open it is forwarded to the pod and the pod's answer goes back. A call whose
    caller gives up while held is dropped. So tests make "in flight" and "slow
    upstream" happen on purpose, with no timing luck. ``grpc``: its address; no HTTP."""

    def __init__(self, pod) -> None:
        self.remaining: list[float | None] = []
        self.received = threading.Condition()
        self.opened = threading.Event()
        self.upstream = grpc.insecure_channel(pod.grpc)
        self.forward = self.upstream.unary_unary(kserve_grpc.method_path("ModelInfer"))
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=64))
        handlers = {
            "ServerReady": grpc.unary_unary_rpc_method_handler(self._ready),
            "ModelInfer": grpc.unary_unary_rpc_method_handler(self._infer),
        }
        self.server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler(kserve_grpc.SERVICE_NAME, handlers)]
        )
        port = self.server.add_insecure_port("127.0.0.1:0")
        self.grpc = f"127.0.0.1:{port}"
        self.http = None
        self.server.start()

    def _ready(self, raw: bytes, context) -> bytes:
        return kpb.ServerReadyResponse(ready=True).SerializeToString()

    def _infer(self, raw: bytes, context) -> bytes:
        with self.received:
            self.remaining.append(context.time_remaining())
            self.received.notify_all()
        while not self.opened.wait(0.02):
            if not context.is_active():  # the caller gave up
                context.abort(grpc.StatusCode.CANCELLED, "gate: the caller gave up")
        try:
            return self.forward(raw, timeout=context.time_remaining())
        except grpc.RpcError as exc:
            context.abort(exc.code(), exc.details())

    @property
    def calls(self) -> int:
        with self.received:
            return len(self.remaining)

    def wait_calls(self, count: int, timeout: float = 60) -> list[float | None]:
        """Block until ``count`` calls have arrived in all; the deadline each had left."""
        with self.received:
            if not self.received.wait_for(lambda: len(self.remaining) >= count, timeout):
                raise TimeoutError(f"{len(self.remaining)} calls, not {count}, in {timeout} s")
            return list(self.remaining)

    def open(self) -> None:
        self.opened.set()

    def close(self) -> None:
        self.opened.clear()

    def stop(self) -> None:
        self.server.stop(grace=None)
        self.upstream.close()


@pytest.fixture
def gate(pods):
    """A closed gate in front of the module's first pod."""
    gate = Gate(pods[0])
    yield gate
    gate.stop()
