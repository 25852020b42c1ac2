"""Promises of docs/gateway.md and the README, each checked against the real gateway
over real pods (and, where a pod must misbehave on purpose, a scripted KServe v2
endpoint in this process in front of a real pod). Each test names the doc line it
guards.

"In flight", "slow" and "failing" are made on purpose (a gate or a scripted endpoint
that holds or fails calls, a pod stopped with SIGTERM), never hoped for: no test here
depends on how fast the machine is."""

from __future__ import annotations

import asyncio
import gc
import http.client
import io
import logging
import os
import re
import signal
import socket
import threading
import time
from collections import Counter
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import psutil
import pytest
import requests
import schemathesis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.auth import hash_key
from gateway.effects import EffectsPipeline
from gateway.launch import gateway_config, start_gateway
from gateway.settings import EffectSettings
from inference.launch import start_pod
from protos.kserve.v2 import grpc_service_pb2 as kpb
from protos.tenfold.v1 import gateway_pb2 as pb
from protos.tenfold.v1 import gateway_pb2_grpc as pb_grpc
from servicekit import kserve_grpc
from servicekit.launcher import free_port, stop_all
from servicekit.ready import read_ready
from tests.gateway.conftest import (
    jpeg,
    metric_total,
    pod_inferences,
    pod_metrics,
    scrape,
    wait_until,
)

pytestmark = [pytest.mark.slow, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
#: a deadline no test here should reach: these tests are about hedging, ejection,
#: drain and health, not latency, so a loaded machine must not turn them into 504s
PATIENT_MS = 120_000
PATIENT_EFFECTS = {"cartoon": {"model": "effects_cartoon", "deadline_ms": PATIENT_MS}}
MODELS = ["feed_user_tower", "feed_ranker", "effects_cartoon"]


def post_effect(gw, image: bytes, size: int = 256, headers: dict | None = None):
    return requests.post(
        f"http://{gw.http}/v1/effects/cartoon?size={size}",
        data=image,
        headers={"content-type": "image/jpeg", **(headers or {})},
        timeout=PATIENT_MS / 1000,
    )


def gateway_metric(gw, name: str, **labels: str) -> float:
    return metric_total(scrape(gw.http), name, **labels)


def refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            return False
    except ConnectionRefusedError:
        return True


def one_pool(*endpoints) -> dict:
    """The ``pools`` setting: one default pool over ``endpoints`` (pods or fakes)."""
    eps = [{"grpc": e.grpc, **({"http": e.http} if e.http else {})} for e in endpoints]
    return {"default": {"endpoints": eps, "models": MODELS}}


# --- a scripted endpoint: forwards, holds or fails inference calls, on demand --------


class Scripted:
    """A KServe v2 gRPC endpoint in this process in front of a real pod. ServerReady
    says ready (so the gateway's health check keeps it in the pool, and only its
    answers to calls can take it out). ``mode``: ``forward`` (to the pod), ``hold``
    (until the caller gives up), or a ``grpc.StatusCode`` to fail every call with."""

    def __init__(self, pod) -> None:
        self.mode: str | grpc.StatusCode = "forward"
        self.changed = threading.Condition()
        self.calls = 0
        self.forwarded = 0
        self.upstream = grpc.insecure_channel(pod.grpc)
        self.forward = self.upstream.unary_unary(kserve_grpc.method_path("ModelInfer"))
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
        handlers = {
            "ServerReady": grpc.unary_unary_rpc_method_handler(self._ready),
            "ModelInfer": grpc.unary_unary_rpc_method_handler(self._infer),
        }
        self.server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler(kserve_grpc.SERVICE_NAME, handlers)]
        )
        self.grpc = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        self.http = None
        self.server.start()

    def _ready(self, raw: bytes, context) -> bytes:
        return kpb.ServerReadyResponse(ready=True).SerializeToString()

    def _infer(self, raw: bytes, context) -> bytes:
        with self.changed:
            self.calls += 1
            mode = self.mode
            self.changed.notify_all()
        if mode == "hold":
            while context.is_active():
                time.sleep(0.02)
            context.abort(grpc.StatusCode.CANCELLED, "scripted: the caller gave up")
        if isinstance(mode, grpc.StatusCode):
            context.abort(mode, f"scripted: {mode.name}")
        answer = self.forward(raw, timeout=context.time_remaining())
        with self.changed:
            self.forwarded += 1
        return answer

    def set(self, mode) -> None:
        with self.changed:
            self.mode = mode

    def stop(self) -> None:
        self.server.stop(grace=None)
        self.upstream.close()


@pytest.fixture(scope="module")
def scripted(pods):
    endpoint = Scripted(pods[0])
    yield endpoint
    endpoint.stop()


# --- 1. drain on SIGTERM: keep-alive HTTP and gRPC calls in flight -----------------


def test_sigterm_drains_keepalive_http_and_grpc_in_flight_then_exits_0(quick_repo, gate):
    # guards docs/gateway.md: "SIGTERM/SIGINT drains every worker" and
    # docs/architecture.md: "SIGTERM/SIGINT → `draining` → drain → exit 0" (one worker:
    # a keep-alive connection with a request in flight, and gRPC calls in flight)
    config = gateway_config(quick_repo, [gate], drain_timeout_s=120, effects=PATIENT_EFFECTS)
    gw = start_gateway(config)
    image = jpeg()
    try:
        base = gate.calls
        keepalive = http.client.HTTPConnection("127.0.0.1", gw.http_port, timeout=120)
        keepalive.request("GET", "/healthz")  # the connection has served a request ...
        first = keepalive.getresponse()
        assert first.status == 200 and first.getheader("connection", "").lower() != "close"
        first.read()
        sock = keepalive.sock

        def held_http():  # ... and its next request is held at the gate
            keepalive.request(
                "POST", "/v1/effects/cartoon", body=image, headers={"content-type": "image/jpeg"}
            )
            answer = keepalive.getresponse()
            return answer.status, answer.getheader("content-type"), len(answer.read())

        channel = grpc.insecure_channel(gw.grpc)
        stub = pb_grpc.EffectsStub(channel)
        with futures.ThreadPoolExecutor(4) as pool:
            http_answer = pool.submit(held_http)
            grpc_calls = [
                pool.submit(stub.Apply, pb.ApplyEffectRequest(effect="cartoon", image=image))
                for _ in range(2)
            ]
            gate.wait_calls(base + 3)  # all three are at the gate: in flight, for sure
            assert keepalive.sock is sock  # the same (kept-alive) connection
            gw.proc.send_signal(signal.SIGTERM)
            wait_until(
                lambda: read_ready(gw.ready_file).state == "draining", "draining", timeout=60
            )
            for port in (gw.http_port, gw.grpc_port):
                wait_until(lambda p=port: refused(p), f"port {port} refusing", timeout=60)
            assert not http_answer.done() and not any(c.done() for c in grpc_calls)
            gate.open()
            status, content_type, size = http_answer.result(timeout=120)
            replies = [c.result(timeout=120) for c in grpc_calls]
        channel.close()
        assert (status, content_type) == (200, "image/jpeg") and size > 0
        assert all(r.content_type == "image/jpeg" and r.image for r in replies)
        assert gw.proc.wait(60) == 0
    finally:
        gw.stop()


# --- 2. hedging and outlier ejection against real pods -----------------------------


def test_hedge_answers_from_the_other_pod_when_one_holds(make_gateway, scripted, pods):
    # guards docs/gateway.md (Pools): "Hedging (off by default): `hedge_after_ms` sends
    # a second copy to another endpoint if the first has not answered; the first answer
    # wins; hedges spend the retry budget."
    # a 20 s deadline: a request left at the holding endpoint (no hedge) fails as a 504
    effects = {"cartoon": {"model": "effects_cartoon", "deadline_ms": 20_000}}
    gw = make_gateway(pools=one_pool(scripted, pods[1]), hedge_after_ms=100, effects=effects)
    scripted.set("hold")
    image = jpeg()
    held_before = scripted.calls
    served_before = pod_inferences(pods[1], model="effects_cartoon")
    sent = 0
    try:
        # P2C picks either endpoint: send until the holding one was picked 3 times
        while scripted.calls - held_before < 3:
            assert sent < 200, "the holding endpoint was never picked"
            assert post_effect(gw, image).status_code == 200
            sent += 1
    finally:
        scripted.set("forward")
    held = scripted.calls - held_before
    hedges = gateway_metric(gw, "tenfold_gateway_upstream_retries_total", kind="hedge")
    # every call the holding endpoint got is one copy of a hedged pair: the request went
    # to it first (then was hedged to the pod), or its copy was the hedge of a slow pod
    # call (a hedge cancelled before it arrived counts here and is not in ``held``)
    assert hedges >= held >= 3
    # and every answer came from the other pod (its own counter)
    assert pod_inferences(pods[1], model="effects_cartoon") - served_before == sent


def test_failing_endpoint_is_ejected_and_comes_back(make_gateway, scripted, pods):
    # guards docs/gateway.md (Pools): "Outlier ejection: `eject_after_failures` (3)
    # consecutive endpoint faults eject the endpoint for `eject_base_s` (2 s), doubling
    # up to `eject_max_s` (30 s); after the period one probe request is let through,
    # and its result decides." and "Retries: on connection failure, UNAVAILABLE ...
    # the call goes to another endpoint"
    gw = make_gateway(
        pools=one_pool(scripted, pods[1]),
        eject_after_failures=3,
        eject_base_s=0.5,
        eject_max_s=2,
        retry_budget_min_per_s=100,
        effects=PATIENT_EFFECTS,
    )
    image = jpeg()
    scripted.set(grpc.StatusCode.UNAVAILABLE)
    calls_before = scripted.calls
    try:
        sent = 0
        while gateway_metric(gw, "tenfold_gateway_upstream_ejections_total", pool="default") < 2:
            assert sent < 300, "never ejected twice"
            assert post_effect(gw, image).status_code == 200  # retried on the healthy pod
            sent += 1
        ejections = gateway_metric(gw, "tenfold_gateway_upstream_ejections_total")
        failed = scripted.calls - calls_before
        # 3 faults eject it; after that only single probes reach it, each one failing
        # and ejecting it again: calls == 3 + (ejections - 1), whatever the timing
        assert failed == 3 + (ejections - 1)
        faults = gateway_metric(
            gw, "tenfold_gateway_upstream_duration_seconds_count", outcome="upstream_fault"
        )
        assert faults == failed
        # it recovers: the next probe succeeds and it takes traffic again
        scripted.set("forward")
        forwarded = scripted.forwarded
        sent = 0
        while scripted.forwarded - forwarded < 3:
            assert sent < 300, "the recovered endpoint never came back"
            assert post_effect(gw, image).status_code == 200
            sent += 1
        assert gateway_metric(gw, "tenfold_gateway_upstream_ejections_total") == ejections
    finally:
        scripted.set("forward")


def test_resource_exhausted_is_retried_and_never_ejects(make_gateway, scripted, pods):
    # guards docs/gateway.md (Pools): "Retries: on connection failure, UNAVAILABLE or
    # RESOURCE_EXHAUSTED from a pod, the call goes to another endpoint" and README:
    # "Overload uses RESOURCE_EXHAUSTED over gRPC so a gateway can tell 'this pod is
    # full' from 'this pod is gone'": a full pod is retried elsewhere, not ejected
    gw = make_gateway(
        pools=one_pool(scripted, pods[1]),
        eject_after_failures=2,
        retry_budget_min_per_s=100,
        effects=PATIENT_EFFECTS,
    )
    image = jpeg()
    scripted.set(grpc.StatusCode.RESOURCE_EXHAUSTED)
    before = scripted.calls
    try:
        sent = 0
        while scripted.calls - before < 6:  # three times the ejection threshold
            assert sent < 300, "the full endpoint was never picked"
            assert post_effect(gw, image).status_code == 200
            sent += 1
    finally:
        scripted.set("forward")
    full = scripted.calls - before
    assert gateway_metric(gw, "tenfold_gateway_upstream_ejections_total") == 0
    assert gateway_metric(gw, "tenfold_gateway_upstream_retries_total", kind="retry") == full
    assert gateway_metric(gw, "tenfold_gateway_requests_total", route="effects", code="200") == (
        sent
    )


# --- 3. every documented metric name, with its labels ------------------------------


def documented_gateway_metrics() -> dict[str, set[str]]:
    """``name{label, ...}`` in docs/gateway.md's Metrics section."""
    text = (ROOT / "docs/gateway.md").read_text(encoding="utf-8")
    section = text.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    found = re.findall(r"`(tenfold_gateway_\w+)\{([^}]*)\}`", section)
    return {name: {label.strip() for label in labels.split(",")} for name, labels in found}


def documented_pod_metrics() -> dict[str, set[str]]:
    """The README's pod metrics: all labelled ``model`` and ``version``, some with more."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    paragraph = text.split("**Metrics** on the metrics port", 1)[1].split("\n\n", 1)[0]
    common = set(re.findall(r"labelled `(\w+)` and `(\w+)`", paragraph)[0])
    found = re.findall(r"`(tenfold_inference_\w+)`(\s*\(with `(\w+)`\))?", paragraph)
    return {name: common | ({extra} if extra else set()) for name, _, extra in found}


SUFFIXES = ("", "_total", "_count", "_sum", "_bucket", "_created")


def exposed(texts: list[str], documented: str) -> list[set[str]]:
    """Label-name sets of every sample of the documented metric in the scrapes."""
    names = {documented.removesuffix("_total") + s for s in SUFFIXES} | {documented}
    return [
        set(sample.labels) - {"le"}
        for text in texts
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name in names
    ]


#: documented gateway metrics that only a gateway with an event store exposes
EVENT_STORE_METRICS = ("tenfold_gateway_events_accepted_total", "tenfold_gateway_state_reads_total")


def test_every_documented_metric_is_exposed_with_its_labels(make_gateway, scripted, pods, gate):
    # guards docs/gateway.md (Metrics): "`tenfold_gateway_arrivals_total{route}` ...
    # `tenfold_gateway_requests_total{route, code,
    # arm}`, ... `tenfold_gateway_upstream_duration_seconds{pool, outcome}`" and README
    # (pod): "**Metrics** on the metrics port at `/metrics`, labelled `model` and
    # `version`: ..." -- parsed from the docs, so a renamed metric or label fails here
    gateway_doc, pod_doc = documented_gateway_metrics(), documented_pod_metrics()
    assert len(gateway_doc) == 12 and len(pod_doc) == 9  # the parser found the lists
    # the event store's metrics need a Redis: tests/events checks them
    gateway_doc = {k: v for k, v in gateway_doc.items() if k not in EVENT_STORE_METRICS}
    image = jpeg()
    # traffic that makes every labelled series appear: answers, a hedge, a retry, an
    # ejection (scripted endpoint), a shed request (a gate holding the only slot)
    gw = make_gateway(
        pools=one_pool(scripted, pods[1]),
        hedge_after_ms=100,
        eject_after_failures=1,
        retry_budget_min_per_s=100,
        effects=PATIENT_EFFECTS,
    )

    def sent_until(metric: str, **labels: str) -> None:
        for _ in range(300):
            assert post_effect(gw, image).status_code == 200
            if gateway_metric(gw, metric, **labels):
                return
        raise AssertionError(f"no {metric} {labels} after 300 requests")

    try:
        scripted.set("hold")
        sent_until("tenfold_gateway_upstream_retries_total", kind="hedge")
        scripted.set(grpc.StatusCode.UNAVAILABLE)
        sent_until("tenfold_gateway_upstream_ejections_total")
    finally:
        scripted.set("forward")
    for _ in range(25):  # the adaptive limit's floor is measured over 25 answers
        assert post_effect(gw, image).status_code == 200
    shed_gw = make_gateway(
        pools=one_pool(gate), max_inflight=1, max_queue=0, effects=PATIENT_EFFECTS
    )
    with futures.ThreadPoolExecutor(1) as pool:
        base = gate.calls
        held = pool.submit(post_effect, shed_gw, image)
        gate.wait_calls(base + 1)
        shed = post_effect(shed_gw, image)
        assert shed.status_code == 429 and int(shed.headers["Retry-After"]) >= 1
        assert shed.headers["Tenfold-Error-Code"] == "RESOURCE_EXHAUSTED"
        gate.open()
        assert held.result(timeout=120).status_code == 200
    # a failed inference on a pod: an unknown input
    bad = kpb.ModelInferRequest(model_name="feed_ranker")
    bad.inputs.add(name="nope", datatype="INT64", shape=[1, 1]).contents.int64_contents.append(1)
    with grpc.insecure_channel(pods[1].grpc) as channel:
        with pytest.raises(grpc.RpcError):
            channel.unary_unary(kserve_grpc.MODEL_INFER)(bad.SerializeToString(), timeout=30)

    gateway_texts = [scrape(gw.http), scrape(shed_gw.http)]
    pod_texts = [pod_metrics(p) for p in pods]
    problems = []
    for docs, texts in ((gateway_doc, gateway_texts), (pod_doc, pod_texts)):
        for name, labels in docs.items():
            seen = exposed(texts, name)
            if not seen:
                problems.append(f"{name}: not exposed")
            elif any(s != labels for s in seen):
                problems.append(
                    f"{name}: labels {sorted(map(sorted, seen))[0]} != {sorted(labels)}"
                )
    assert not problems, problems


# --- 4. the OpenAPI document against real answers (schemathesis) -------------------


@schemathesis.check
def no_internal_error(ctx, response, case):
    """A 500 is never a documented answer (503/504 are: the status check covers them)."""
    if response.status_code == 500:
        raise AssertionError(f"500 internal error: {response.text[:200]}")


CHECKS = [
    no_internal_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def test_answers_conform_to_the_openapi_document(gateway):
    # guards docs/gateway.md: "## HTTP API (`/openapi.json` has the full OpenAPI 3.1
    # description, kept true by a test)" -- generated requests, valid and invalid, and
    # every answer's status, content type and body checked against the document
    schema = schemathesis.openapi.from_url(f"http://{gateway.http}/openapi.json")
    failures, answered, statuses = [], 0, Counter()
    for result in schema.get_all_operations():
        operation = result.ok()
        # invalid input exists only where a value is constrained (a path segment that
        # any string fits has none)
        has_input = any((operation.query, operation.headers, operation.body))
        modes = [GenerationMode.POSITIVE] + ([GenerationMode.NEGATIVE] if has_input else [])
        for mode in modes:

            @given(case=operation.as_strategy(mode))
            @settings(
                max_examples=int(os.environ.get("TENFOLD_FUZZ_CASES_PER_OPERATION", "15")),
                derandomize=True,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def check(case):
                nonlocal answered
                response = case.call_and_validate(checks=CHECKS)
                statuses[response.status_code] += 1
                answered += 1

            try:
                check()
            except Exception as exc:  # collect, so one run reports every operation
                failures.append(f"{operation.label} ({mode.value}): {exc}")
    print(f"schemathesis: {answered} cases, statuses {dict(sorted(statuses.items()))}")
    assert not failures, "\n\n".join(failures)
    assert answered >= 100  # the document really was exercised


# --- 5. loopback only without API keys ---------------------------------------------


def listening_addresses(pid: int) -> set[str]:
    """The addresses the process listens on (IPv4-mapped IPv6 written as IPv4)."""
    return {
        c.laddr.ip.removeprefix("::ffff:")
        for c in psutil.Process(pid).net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN
    }


def test_loopback_only_without_tenants_even_when_asked_for_all(quick_repo, pods):
    # guards docs/gateway.md (Auth): "With no tenants configured the gateway binds only
    # to 127.0.0.1 and says so." (settings.py: host "forced to loopback without keys")
    # (stopped here, each without a drain grace: its drain is not what this is about)
    gw = start_gateway(gateway_config(quick_repo, pods, drain_grace_s=0), "--host", "0.0.0.0")
    try:
        assert listening_addresses(gw.pid) == {"127.0.0.1"}
        assert read_ready(gw.ready_file).host == "127.0.0.1"
        assert "listening on loopback only (127.0.0.1)" in gw.output()
    finally:
        gw.stop()
    # with API keys it binds what was asked
    tenants = [{"name": "app", "key_sha256": hash_key("k")}]
    config = gateway_config(quick_repo, pods, tenants=tenants, drain_grace_s=0)
    gw = start_gateway(config, "--host", "0.0.0.0")
    try:
        assert listening_addresses(gw.pid) <= {"0.0.0.0", "::"}  # every interface
        assert read_ready(gw.ready_file).host == "0.0.0.0"
        assert "loopback only" not in gw.output()
    finally:
        gw.stop()


# --- 6. no healthy endpoint: 503 + Retry-After / UNAVAILABLE, health follows --------


def health_status(channel, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status


def test_no_healthy_endpoint_then_back(quick_repo):
    # guards docs/gateway.md (Bad input): "no healthy endpoint | 503 + Retry-After |
    # UNAVAILABLE", (Pools) "an endpoint that is not ready takes no traffic, and
    # `/readyz` and gRPC health follow" and (gRPC API) "standard health checking
    # (SERVING when every pool has a healthy endpoint)"
    grpc_port = free_port()
    pod = start_pod(quick_repo, "--grpc-port", str(grpc_port))
    gw = start_gateway(gateway_config(quick_repo, [pod]))
    channel = grpc.insecure_channel(gw.grpc)
    serving, not_serving = (
        health_pb2.HealthCheckResponse.SERVING,
        (health_pb2.HealthCheckResponse.NOT_SERVING),
    )
    feed_body = {"user_id": 3, "count": 2}
    try:
        assert health_status(channel) == serving
        assert pod.stop() == 0  # the only pod is gone
        wait_until(lambda: health_status(channel) == not_serving, "NOT_SERVING", 60)
        for service in ("", "tenfold.v1.Feed", "tenfold.v1.Effects"):
            assert health_status(channel, service) == not_serving
        ready = requests.get(f"http://{gw.http}/readyz", timeout=10)
        assert ready.status_code == 503 and ready.json()["pools"] == {"default": 0}
        answer = requests.post(f"http://{gw.http}/v1/feed", json=feed_body, timeout=30)
        assert answer.status_code == 503 and int(answer.headers["Retry-After"]) >= 1
        stub = pb_grpc.FeedStub(channel)
        with pytest.raises(grpc.RpcError) as failed:
            stub.GetFeed(pb.FeedRequest(user_id="3", count=2), timeout=30)
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        trailers = dict(failed.value.trailing_metadata() or ())
        assert trailers.get("retry-after") == answer.headers["Retry-After"]
        # a pod on the same address again: the gateway follows it back
        pod = start_pod(quick_repo, "--grpc-port", str(grpc_port))
        wait_until(lambda: health_status(channel) == serving, "SERVING again", 60)
        assert requests.post(f"http://{gw.http}/v1/feed", json=feed_body, timeout=30).ok
        assert stub.GetFeed(pb.FeedRequest(user_id="3", count=2), timeout=30).items
    finally:
        channel.close()
        stop_all([gw, pod])


# --- 7. x-request-id ----------------------------------------------------------------


def test_request_id_is_echoed_else_generated(gateway):
    # guards docs/gateway.md (HTTP API): "`x-request-id` (echoed, else generated)"
    base = f"http://{gateway.http}"
    body = {"user_id": 5, "count": 2}
    sent = requests.post(f"{base}/v1/feed", json=body, headers={"x-request-id": "rid-feed-1"})
    assert sent.status_code == 200
    assert sent.headers["x-request-id"] == "rid-feed-1" == sent.json()["request_id"]
    generated = [requests.post(f"{base}/v1/feed", json=body) for _ in range(2)]
    ids = [g.headers["x-request-id"] for g in generated]
    assert all(ids) and ids[0] != ids[1]
    assert [g.json()["request_id"] for g in generated] == ids
    effect = post_effect(gateway, jpeg(), headers={"x-request-id": "rid-effect-1"})
    assert effect.status_code == 200 and effect.headers["x-request-id"] == "rid-effect-1"
    assert post_effect(gateway, jpeg()).headers["x-request-id"]
    # over gRPC the id travels in the metadata and comes back in the answer
    with grpc.insecure_channel(gateway.grpc) as channel:
        feed, effects = pb_grpc.FeedStub(channel), pb_grpc.EffectsStub(channel)
        request = pb.FeedRequest(user_id="5", count=2)
        tagged = (("x-request-id", "rid-grpc-1"),)
        assert feed.GetFeed(request, metadata=tagged, timeout=30).request_id == "rid-grpc-1"
        assert feed.GetFeed(request, timeout=30).request_id
        apply = pb.ApplyEffectRequest(effect="cartoon", image=jpeg())
        assert effects.Apply(apply, metadata=tagged, timeout=30).request_id == "rid-grpc-1"


# --- 8. CPU work off the gateway's event loop ---------------------------------------


class Identity:
    """A ModelClient that answers the image it is given (no pod: only the gateway's
    own decode / resize / encode remain)."""

    async def infer(self, model, inputs, deadline, version="", request_id=""):
        return {"out": inputs["image"]}, "1"


def large_photo() -> bytes:
    y, x = np.mgrid[0:3000, 0:4000]
    pixels = np.stack([(x // 7) % 256, (y // 5) % 256, ((x + y) // 9) % 256], -1)
    out = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(out, format="JPEG", quality=95)
    return out.getvalue()


def test_effects_decode_and_encode_stay_off_the_event_loop():
    # guards docs/gateway.md (Effects): "Decode and encode run in the executor." and
    # docs/architecture.md: "gateway decodes and resizes (off the event loop)". Like the
    # pod's guard (asyncio debug mode reports every callback slower than a threshold),
    # with the threshold calibrated here: a quarter of the fastest decode or encode of
    # the same image measured on this machine, now -- so a loaded machine raises both.
    from gateway.effects import decode, encode

    photo, side = large_photo(), 2048
    decode_s = min(timed(decode, photo, 25_000_000, side) for _ in range(2))
    pixels = decode(photo, 25_000_000, side)[0]
    encode_s = min(timed(encode, pixels, "png") for _ in range(2))
    threshold = min(decode_s, encode_s) / 4
    effects = {"big": EffectSettings(model="m", sizes=[side])}
    pipeline = EffectsPipeline(effects, Identity(), 25_000_000)

    slow: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "took" in record.getMessage():
                slow.append(record.getMessage())

    async def main():
        asyncio.get_running_loop().slow_callback_duration = threshold
        deadline = time.monotonic() + 600
        return [await pipeline.apply("big", photo, side, "png", deadline) for _ in range(2)]

    handler = Collect()
    logging.getLogger("asyncio").addHandler(handler)
    # a garbage collection of this test process's heap (grown by the whole suite) can
    # land in any callback; it is not the work the guard looks for, so none runs here
    gc.collect()
    gc.disable()
    try:
        rendered = asyncio.run(main(), debug=True)
    finally:
        gc.enable()
        logging.getLogger("asyncio").removeHandler(handler)
    assert all((r.width, r.height) == (side, side) for r in rendered)
    assert not slow, f"callbacks over {threshold * 1000:.0f} ms on the loop: {slow[:3]}"


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def test_internal_errors_answer_500_with_the_reason_and_never_eject(make_gateway, scripted, pods):
    # guards docs/gateway.md (Pools): endpoint faults are "connection failures and
    # UNAVAILABLE; not INTERNAL, which one request's input can cause" (issue 19: three
    # bad pass-through calls used to eject the pod and take the feed down)
    gw = make_gateway(
        pools=one_pool(scripted, pods[1]),
        eject_after_failures=2,
        retry_budget_min_per_s=100,
        effects=PATIENT_EFFECTS,
    )
    image = jpeg()
    scripted.set(grpc.StatusCode.INTERNAL)
    before = scripted.calls
    try:
        failed = 0
        while scripted.calls - before < 6:  # three times the ejection threshold
            assert failed + 1 < 300, "the failing endpoint was never picked"
            answer = post_effect(gw, image)
            if answer.status_code != 200:
                assert answer.status_code == 500, answer.text
                assert "scripted: INTERNAL" in answer.text, answer.text  # the pod's reason
                failed += 1
    finally:
        scripted.set("forward")
    assert failed == scripted.calls - before  # not retried: one failed answer per call
    assert gateway_metric(gw, "tenfold_gateway_upstream_ejections_total") == 0
