"""The guard against blocking the event loop: asyncio debug mode reports every
callback slower than a threshold. A deliberate blocking ONNX Runtime call is caught;
the pod serving the same heavy model under concurrent load is not."""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp
import numpy as np
import onnxruntime as ort
import pytest

from inference.server import InferenceServer
from inference.settings import InferenceSettings
from tests.models import heavy, write_model

pytestmark = pytest.mark.integration

THRESHOLD_S = 0.05


def _slow_callbacks(caplog) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "asyncio" and "took" in r.getMessage() and "Executing" in r.getMessage()
    ]


async def test_inference_runs_off_the_event_loop(tmp_path, caplog):
    path = write_model(tmp_path, "heavy", heavy(), None)
    x = np.random.default_rng(0).standard_normal((16, 1024)).astype(np.float32)
    session = ort.InferenceSession(str(path))
    start = time.perf_counter()
    session.run(None, {"x": x})
    one_batch_s = time.perf_counter() - start
    assert one_batch_s > THRESHOLD_S, "the heavy model is too light for this guard"

    loop = asyncio.get_running_loop()
    loop.set_debug(True)
    loop.slow_callback_duration = THRESHOLD_S
    caplog.set_level(logging.WARNING, logger="asyncio")

    # the guard works: a blocking call on the loop is reported
    async def blocking():
        session.run(None, {"x": x})

    await asyncio.create_task(blocking())
    assert _slow_callbacks(caplog), "asyncio debug mode did not report a blocking call"
    caplog.clear()

    server = InferenceServer(
        InferenceSettings(
            model_repository=tmp_path, http_port=0, grpc_port=0, metrics_port=0, intra_op_threads=1
        )
    )
    ports = await server.start_listeners()
    await server.load_models()
    body = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1024], "data": x[0].tolist()}]
    }
    try:
        async with aiohttp.ClientSession() as client:

            async def call():
                url = f"http://127.0.0.1:{ports.http}/v2/models/heavy/infer"
                async with client.post(url, json=body) as response:
                    assert response.status == 200
                    return await response.json()

            results = await asyncio.gather(*(call() for _ in range(12)))
    finally:
        await server.drain()
    assert len(results) == 12
    slow = [m for m in _slow_callbacks(caplog) if "client" not in m]
    assert not slow, slow
