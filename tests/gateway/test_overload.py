"""Overload at small scale (issue 19): a gateway over one pod whose model costs ~20 ms
of CPU a request, offered three times what it can serve, open loop. Before the adaptive
concurrency limit the excess queued until its deadline: at 1.26x capacity goodput fell
to 0 and every answer was a 504. The full-scale figures are ``make bench-overload``."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import numpy as np
import pytest

from gateway.launch import gateway_config, start_gateway
from gateway.settings import GatewaySettings
from inference.launch import start_pod
from tests.models import heavy, write_model

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WIDTH = 512
NO_BATCHING = """
name: "heavy"
platform: "onnxruntime_onnx"
max_batch_size: 0
input [ { name: "x" data_type: TYPE_FP32 dims: [ 1, 512 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 1, 512 ] } ]
"""
BODY = {"inputs": [{"name": "x", "shape": [1, WIDTH], "datatype": "FP32", "data": [0.5] * WIDTH}]}
SHED = (429, 503)


@pytest.fixture(scope="module")
def heavy_gateway(tmp_path_factory):
    repo = tmp_path_factory.mktemp("heavy")
    write_model(repo, "heavy", heavy(width=WIDTH, layers=4, expand=1280), NO_BATCHING)
    pod = start_pod(repo)
    try:
        pool = {"endpoints": [{"grpc": pod.grpc, "http": pod.http}], "models": ["heavy"]}
        config = gateway_config(
            repo, [pod], pools={"default": pool}, feed={"assets_dir": None}, drain_grace_s=0
        )
        gateway = start_gateway(config)
        try:
            yield f"http://{gateway.http}/v2/models/heavy/infer"
        finally:
            gateway.stop()
    finally:
        pod.stop()


async def _post(session: aiohttp.ClientSession, url: str) -> tuple[int, float]:
    started = time.perf_counter()
    async with session.post(url, json=BODY) as answer:
        await answer.read()
        return answer.status, time.perf_counter() - started


async def _closed_loop(url: str, clients: int, seconds: float) -> list[tuple[int, float]]:
    done: list[tuple[int, float]] = []
    end = time.monotonic() + seconds

    async def client(session: aiohttp.ClientSession) -> None:
        while time.monotonic() < end:
            done.append(await _post(session, url))

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(client(session) for _ in range(clients)))
    return done


async def _open_loop(url: str, rate: float, seconds: float) -> list[tuple[int, float]]:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        start, tasks = time.monotonic(), []
        for i in range(int(rate * seconds)):
            await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
            tasks.append(asyncio.create_task(_post(session, url)))
        return await asyncio.gather(*tasks)


def _ms(values: list[float], q: float) -> float:
    return float(np.percentile(values, q) * 1000) if values else 0.0


async def test_three_times_capacity_open_loop_is_shed_fast_and_goodput_holds(heavy_gateway):
    url = heavy_gateway
    unloaded = [lat for status, lat in await _closed_loop(url, 1, 1.5) if status == 200]
    closed = await _closed_loop(url, 4, 3.0)  # also lets the limit measure its floor
    capacity = sum(1 for status, _ in closed if status == 200) / 3.0
    seconds = 4.0
    answers = await _open_loop(url, 3 * capacity, seconds)
    ok = [lat for status, lat in answers if status == 200]
    shed = [lat for status, lat in answers if status in SHED]
    other = sorted({status for status, _ in answers} - {200, *SHED})
    goodput = len(ok) / seconds
    print(
        f"unloaded p50 {_ms(unloaded, 50):.1f} ms; capacity {capacity:.1f}/s; "
        f"at {3 * capacity:.0f}/s: goodput {goodput:.1f}/s ({goodput / capacity:.0%}), "
        f"shed {len(shed)} p50/p99 {_ms(shed, 50):.1f}/{_ms(shed, 99):.1f} ms, "
        f"admitted p50/p99 {_ms(ok, 50):.1f}/{_ms(ok, 99):.1f} ms, other {other}"
    )
    assert not other, f"answers other than 200 and shedding: {other}"
    assert shed, "three times capacity and nothing shed"
    # the excess is refused at once, not after waiting for a slot or its deadline
    # (the 2 s pass-through deadline: before the limit, the excess took it whole)
    assert _ms(shed, 50) < 50
    assert goodput >= 0.6 * capacity
    # and the admitted are answered well within the deadline that the excess used to take
    # whole (p99 measured 0.2-1.1 s: 1.1 s in a fresh-clone CI run on 2 shared cores)
    deadline_ms = GatewaySettings().infer_deadline_ms
    assert _ms(ok, 99) < 0.75 * deadline_ms
