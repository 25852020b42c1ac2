"""Failure and overload through the real gateway and pods: a pod killed mid-run,
admission control under a burst, API keys and rate limits, A/B arms."""

from __future__ import annotations

import asyncio
import io
import signal
import socket
import time

import aiohttp
import grpc
import numpy as np
import pytest
import requests
from PIL import Image

from gateway.auth import hash_key
from gateway.launch import gateway_config, start_gateway
from inference.launch import start_pod
from protos.tenfold.v1 import gateway_pb2 as pb
from protos.tenfold.v1 import gateway_pb2_grpc as pb_grpc

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def jpeg() -> bytes:
    out = io.BytesIO()
    pixels = np.random.default_rng(1).integers(0, 255, (300, 300, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(out, format="JPEG")
    return out.getvalue()


async def feed_load(base: str, total: int, concurrency: int, on_progress) -> list[int]:
    """``total`` feed requests, ``concurrency`` at a time; the status of each."""
    statuses: list[int] = []
    counter = iter(range(total))
    async with aiohttp.ClientSession() as session:

        async def worker() -> None:
            for i in counter:
                async with session.post(
                    f"{base}/v1/feed", json={"user_id": i % 500, "count": 10}
                ) as resp:
                    await resp.read()
                    statuses.append(resp.status)
                on_progress(len(statuses))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return statuses


def test_pod_killed_mid_run_loses_no_request(quick_repo):
    pods = [start_pod(quick_repo), start_pod(quick_repo)]
    gateway = start_gateway(gateway_config(quick_repo, pods))
    try:
        victim = pods[0]

        def kill_at_100(done: int) -> None:
            if done == 100 and victim.proc.poll() is None:
                victim.proc.send_signal(signal.SIGKILL)

        statuses = asyncio.run(feed_load(f"http://{gateway.http}", 400, 8, kill_at_100))
        assert victim.proc.poll() is not None  # it really died mid-run
        assert statuses.count(200) == 400, sorted(set(statuses))
        metrics = requests.get(f"http://{gateway.http}/metrics", timeout=5).text
        retries = [
            float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith("tenfold_gateway_upstream_retries_total")
        ]
        assert sum(retries) >= 1
        time.sleep(1.5)  # the health check sees it gone
        ready = requests.get(f"http://{gateway.http}/readyz", timeout=5).json()
        assert ready["pools"]["default"] == 1
    finally:
        gateway.stop()
        for pod in pods:
            pod.stop()


async def effects_burst(gw, image: bytes, n: int):
    async with aiohttp.ClientSession() as session:

        async def one():
            async with session.post(
                f"http://{gw.http}/v1/effects/cartoon?size=512",
                data=image,
                headers={"content-type": "image/jpeg"},
            ) as resp:
                await resp.read()
                return resp.status, resp.headers.get("Retry-After")

        return await asyncio.gather(*(one() for _ in range(n)))


async def effects_burst_grpc(gw, image: bytes, n: int):
    async with grpc.aio.insecure_channel(gw.grpc) as channel:
        stub = pb_grpc.EffectsStub(channel)

        async def one():
            try:
                await stub.Apply(pb.ApplyEffectRequest(effect="cartoon", image=image, size=512))
                return grpc.StatusCode.OK, None
            except grpc.aio.AioRpcError as exc:
                return exc.code(), dict(exc.trailing_metadata() or ()).get("retry-after")

        return await asyncio.gather(*(one() for _ in range(n)))


def test_burst_is_shed_with_429_while_admitted_requests_succeed(make_gateway):
    gw = make_gateway(max_inflight=2, max_queue=2, queue_timeout_ms=20)
    image = jpeg()
    results = asyncio.run(effects_burst(gw, image, 24))
    statuses = [s for s, _ in results]
    assert set(statuses) <= {200, 429}, statuses
    assert 2 <= statuses.count(200) and statuses.count(429) >= 10
    assert all(ra is not None and int(ra) >= 1 for s, ra in results if s == 429)

    answers = asyncio.run(effects_burst_grpc(gw, image, 24))
    codes = [code for code, _ in answers]
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, codes
    # Retry-After travels over gRPC too, as trailing metadata, by the same rule as HTTP
    shed_hints = [hint for code, hint in answers if code == grpc.StatusCode.RESOURCE_EXHAUSTED]
    assert shed_hints and all(hint is not None and int(hint) >= 1 for hint in shed_hints)
    assert codes.count(grpc.StatusCode.OK) >= 2
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) >= 10
    shed = requests.get(f"http://{gw.http}/metrics", timeout=5).text
    assert 'tenfold_gateway_shed_total{reason="admission",route="effects"}' in shed


def test_api_keys_routes_and_rate_limits(make_gateway):
    gw = make_gateway(
        tenants=[
            {"name": "feed-app", "key_sha256": hash_key("feed-key"), "routes": ["feed"]},
            {"name": "tiny", "key_sha256": hash_key("tiny-key"), "rate_per_s": 0.5, "burst": 2},
        ]
    )
    gw.wait_for(r"ready, pools")  # the notice would come before this line
    assert "loopback" not in gw.output()  # keys configured: no loopback-only notice

    def post(headers):
        return requests.post(
            f"http://{gw.http}/v1/feed", json={"user_id": 1}, headers=headers, timeout=10
        )

    assert post({}).status_code == 401
    assert post({"Authorization": "Bearer wrong"}).status_code == 401
    assert post({"Authorization": "Bearer feed-key"}).status_code == 200
    assert post({"x-api-key": "feed-key"}).status_code == 200
    denied = requests.post(
        f"http://{gw.http}/v1/effects/cartoon",
        data=jpeg(),
        headers={"x-api-key": "feed-key", "content-type": "image/jpeg"},
        timeout=10,
    )
    assert denied.status_code == 403 and "feed-app" in denied.json()["error"]
    tiny = [post({"x-api-key": "tiny-key"}) for _ in range(4)]
    assert [r.status_code for r in tiny] == [200, 200, 429, 429]
    assert int(tiny[2].headers["Retry-After"]) >= 1
    with grpc.insecure_channel(gw.grpc) as channel:
        stub = pb_grpc.FeedStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.GetFeed(pb.FeedRequest(user_id="1"), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        ok = stub.GetFeed(
            pb.FeedRequest(user_id="1"), metadata=(("x-api-key", "feed-key"),), timeout=10
        )
        assert len(ok.items) == 20


def test_ab_arm_is_stable_per_user_and_carried(make_gateway):
    gw = make_gateway(experiments=[{"name": "ranker_v1b", "percent": 50, "ranker_version": "1"}])

    def arm(user) -> str:
        answer = requests.post(
            f"http://{gw.http}/v1/feed", json={"user_id": user, "count": 5}, timeout=10
        )
        assert answer.headers["x-experiment"] == answer.json()["experiment"]
        return answer.json()["experiment"]

    first = {u: arm(u) for u in range(40)}
    assert {u: arm(u) for u in range(40)} == first
    assert set(first.values()) == {"ranker_v1b:variant", "ranker_v1b:control"}
    assert 8 <= sum(v.endswith("variant") for v in first.values()) <= 32
    metrics = requests.get(f"http://{gw.http}/metrics", timeout=5).text
    assert 'arm="ranker_v1b:variant"' in metrics and 'arm="ranker_v1b:control"' in metrics


def worker_processes(pid: int) -> list[int]:
    """Child processes of ``pid`` (multiprocessing's resource tracker left out)."""
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        kids = [int(c) for c in f.read().split()]
    out = []
    for kid in kids:
        with open(f"/proc/{kid}/cmdline", "rb") as f:
            if b"resource_tracker" not in f.read():
                out.append(kid)
    return out


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def slow_effects_then_sigterm(gw, n: int) -> list[int]:
    image = jpeg()
    async with aiohttp.ClientSession() as session:

        async def one() -> int:
            async with session.post(
                f"http://{gw.http}/v1/effects/cartoon?size=512",
                data=image,
                headers={"content-type": "image/jpeg"},
            ) as resp:
                await resp.read()
                return resp.status

        tasks = [asyncio.create_task(one()) for _ in range(n)]
        await asyncio.sleep(0.15)
        gw.proc.send_signal(signal.SIGTERM)
        return await asyncio.gather(*tasks)


def test_two_workers_share_the_ports_aggregate_metrics_and_drain(quick_repo, pods):
    gw = start_gateway(
        gateway_config(quick_repo, pods, workers=2), port=free_port(), grpc_port=free_port()
    )
    try:
        assert gw.wait_for(r"workers=2", timeout=10)
        workers = worker_processes(gw.proc.pid)
        assert len(workers) == 2 and all(alive(w) for w in workers)
        for i in range(20):  # a fresh connection each time: the kernel spreads them
            with requests.Session() as session:
                answer = session.post(f"http://{gw.http}/v1/feed", json={"user_id": i})
                assert answer.status_code == 200
        text = requests.get(f"http://{gw.http}/metrics", timeout=5).text
        served = sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith('tenfold_gateway_requests_total{arm="",code="200",route="feed"}')
        )
        assert served == 20  # every worker's count, merged
        statuses = asyncio.run(slow_effects_then_sigterm(gw, 6))
        assert statuses == [200] * 6  # in flight at SIGTERM: all finished
        assert gw.proc.wait(30) == 0
        assert not any(alive(w) for w in workers)
    finally:
        gw.stop()
