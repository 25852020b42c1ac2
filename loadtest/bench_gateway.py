"""What the gateway adds, and what the whole stack serves, on this machine.

    tenfold loadtest bench gateway --repository var/model-repository \
        [--duration 10] [--out docs/results/bench_gateway.json]

1. Added latency: the same KServe v2 request (the user tower, one user; JSON over
   HTTP, and raw tensors over gRPC) sent open-loop at the same rate straight to the
   pod and through the gateway's pass-through, alternating, at half of the gateway
   path's closed-loop capacity (c=32).
2. Throughput of the whole stack (gateway + pod) for the feed and the effects
   (the shipped photos of loadtest/photos at 640 px long side in, 256x256 JPEG out),
   closed loop.

Everything is measured with ``loadtest.openloop`` (open_loop / closed_loop and the HDR
recorder).

One pod (ONNX Runtime, 1 intra-op thread), one gateway worker and the load generator
(one Python process) share the machine's cores; nothing is pinned.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
from pathlib import Path

import aiohttp
import grpc
import numpy as np

from gateway.launch import gateway_config, start_gateway
from inference.launch import start_pod
from inference.protocol.kserve_pb import infer_request
from loadtest.openloop import closed_loop, open_loop
from loadtest.photos import uploads
from loadtest.targets import LoadTestError
from servicekit.kserve_grpc import MODEL_INFER as INFER

TOWER_REQUEST = {
    "inputs": [
        {"name": "user_ctx", "datatype": "INT64", "shape": [1, 4], "data": [43, 20, 1, 0]},
        {"name": "history", "datatype": "INT64", "shape": [1, 20], "data": [5, 9, 12] + [0] * 17},
    ]
}
#: long side of the effects uploads, pixels
PHOTO_SIZE = 640


async def measure(pod, gateway, duration: float) -> dict:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        def infer_at(address: str):
            url = f"http://{address}/v2/models/feed_user_tower/infer"

            async def send() -> int:
                async with session.post(url, json=TOWER_REQUEST) as resp:
                    await resp.read()
                    return resp.status

            return send

        channels = [grpc.aio.insecure_channel(a) for a in (pod.grpc, gateway.grpc)]
        raw = infer_request(
            "feed_user_tower",
            {
                "user_ctx": np.array([[43, 20, 1, 0]], np.int64),
                "history": np.array([[5, 9, 12] + [0] * 17], np.int64),
            },
        ).SerializeToString()

        def grpc_at(channel):
            call = channel.unary_unary(INFER)

            async def send() -> str:
                await call(raw)
                return "OK"

            return send

        paths = {
            "http": (infer_at(pod.http), infer_at(gateway.http)),
            "grpc": (grpc_at(channels[0]), grpc_at(channels[1])),
        }
        capacity, latency, added, rates = {}, {}, {}, {}
        for proto, (direct, via) in paths.items():
            await closed_loop(via, 8, 1.0)  # warm up connections and caches
            await closed_loop(direct, 8, 1.0)
            capacity[proto] = {
                "direct": round((await closed_loop(direct, 32, duration / 2)).rate),
                "via_gateway": round((await closed_loop(via, 32, duration / 2)).rate),
            }
            rate = rates[proto] = round(capacity[proto]["via_gateway"] / 2, -1)
            rounds = []
            for _ in range(2):  # alternate, so drift hits both paths alike
                for name, send in (("direct", direct), ("gateway", via)):
                    rounds.append((name, await open_loop(send, rate, duration / 2)))
            latency[proto] = {}
            for name in ("direct", "gateway"):
                merged = [r for n, r in rounds if n == name]
                for other in merged[1:]:
                    merged[0].merge(other)
                latency[proto][name] = merged[0].summary()
            added[proto] = {
                p: round(
                    latency[proto]["gateway"][f"{p}_ms"] - latency[proto]["direct"][f"{p}_ms"], 3
                )
                for p in ("p50", "p90", "p99")
            }
        for channel in channels:
            await channel.close()

        async def feed() -> int:
            body = {"user_id": int(np.random.randint(0, 50_000)), "count": 20}
            async with session.post(f"http://{gateway.http}/v1/feed", json=body) as resp:
                await resp.read()
                return resp.status

        photos = uploads((PHOTO_SIZE,))
        next_photo = itertools.cycle(jpeg for _, jpeg in photos)

        async def effect() -> int:
            async with session.post(
                f"http://{gateway.http}/v1/effects/cartoon?size=256",
                data=next(next_photo),
                headers={"content-type": "image/jpeg"},
            ) as resp:
                await resp.read()
                return resp.status

        feed_closed = await closed_loop(feed, 16, duration)
        effect_closed = await closed_loop(effect, 8, duration)
        feed_lat = await open_loop(feed, max(1.0, round(feed_closed.rate / 2)), duration)
        return {
            "user_tower_capacity_rps": capacity,
            "open_loop_rate": rates,
            "latency": latency,
            "added_ms": added,
            "feed": {
                "closed_loop_c16_rps": round(feed_closed.rate, 1),
                "statuses": dict(feed_closed.statuses),
                "open_loop_at_half": feed_lat.summary(),
            },
            "effects_256": {
                "closed_loop_c8_rps": round(effect_closed.rate, 1),
                "statuses": dict(effect_closed.statuses),
                "closed_loop_c8_latency": effect_closed.total.latency_summary(),
                "photos": [label for label, _ in photos],
            },
        }


def benchmark(repository: Path, duration: float = 10.0, out: Path | None = None) -> dict:
    """Start one pod and the gateway on ``repository``, measure, print and write JSON."""
    if not (repository / "feed_user_tower" / "feed_assets.json").exists():
        raise LoadTestError(f"{repository} has no default models: run tenfold models build")
    pod = start_pod(repository, intra_op_threads=1)
    gateway = start_gateway(gateway_config(repository, [pod]))
    try:
        result = asyncio.run(measure(pod, gateway, duration))
    finally:
        gateway.stop()
        pod.stop()
    result["setup"] = {
        "cores": os.cpu_count(),
        "pods": 1,
        "pod_intra_op_threads": 1,
        "gateway_workers": 1,
        "generator": "one Python process (aiohttp, loadtest.openloop), same machine, "
        "nothing pinned",
        "duration_s": duration,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    return result
