"""One inference pod at concurrency 1, 16 and 64 over gRPC and HTTP, side by side in
one run with the same model executed in-process by ONNX Runtime at the batch sizes
the pod's batcher formed (the limit).

    python -m loadtest.bench_pod [--duration 8] [--out docs/results/bench_pod.json]

The model is the ranking MLP of BASELINE.md (256-512-256-128-1, seeded weights), one
row per request. The pod runs in its own process; the load generator (one Python
process, closed loop: each of N workers sends its next request when the previous one
answers) shares the machine's cores with it. The in-process figure runs alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import urllib.request
from pathlib import Path

import aiohttp
import grpc
import numpy as np
import onnx
import onnxruntime as ort

from inference.examples import mlp
from inference.process import start_pod
from inference.protocol import kserve_grpc
from protos.kserve.v2 import grpc_service_pb2 as pb

DIMS = (256, 512, 256, 128, 1)
CONFIG = """
name: "ranker"
platform: "onnxruntime_onnx"
max_batch_size: 128
input [ { name: "features" data_type: TYPE_FP32 dims: [ 256 ] } ]
output [ { name: "score" data_type: TYPE_FP32 dims: [ 1 ] } ]
dynamic_batching { max_queue_delay_microseconds: 200 }
instance_group [ { count: INSTANCES kind: KIND_CPU } ]
"""


def write_repo(root: Path, instances: int = 1) -> Path:
    (root / "ranker" / "1").mkdir(parents=True, exist_ok=True)
    (root / "ranker" / "config.pbtxt").write_text(CONFIG.replace("INSTANCES", str(instances)))
    onnx.save(mlp(DIMS, seed=0), root / "ranker" / "1" / "model.onnx")
    return root / "ranker" / "1" / "model.onnx"


def batch_stats(metrics_port: int) -> tuple[float, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics").read().decode()
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith("tenfold_inference_batch_size_rows_sum{"):
            total = float(line.split()[-1])
        if line.startswith("tenfold_inference_batch_size_rows_count{"):
            count = float(line.split()[-1])
    return total, count


async def closed_loop(send, concurrency: int, duration: float) -> list[float]:
    latencies: list[float] = []
    stop_at = time.perf_counter() + duration

    async def worker():
        while time.perf_counter() < stop_at:
            start = time.perf_counter()
            await send()
            latencies.append(time.perf_counter() - start)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


async def run_grpc(port: int, row: np.ndarray, concurrency: int, duration: float) -> list[float]:
    request = pb.ModelInferRequest(model_name="ranker")
    request.inputs.add(name="features", datatype="FP32", shape=list(row.shape))
    request.raw_input_contents.append(row.tobytes())
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        infer = kserve_grpc.client_callables(channel)["ModelInfer"]

        async def send():
            await infer(request)

        await closed_loop(send, concurrency, 0.5)  # warm the connection
        return await closed_loop(send, concurrency, duration)


async def run_http(port: int, row: np.ndarray, concurrency: int, duration: float) -> list[float]:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "features",
                    "datatype": "FP32",
                    "shape": list(row.shape),
                    "parameters": {"binary_data_size": row.nbytes},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    body = header + row.tobytes()
    headers = {
        "Inference-Header-Content-Length": str(len(header)),
        "Content-Type": "application/octet-stream",
    }
    url = f"http://127.0.0.1:{port}/v2/models/ranker/infer"
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def send():
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"HTTP {response.status}")

        await closed_loop(send, concurrency, 0.5)
        return await closed_loop(send, concurrency, duration)


def in_process_rows_per_s(path: Path, batch: int, threads: int, duration: float) -> float:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((batch, DIMS[0])).astype(np.float32)
    for _ in range(20):
        session.run(None, {"features": x})
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < duration:
        session.run(None, {"features": x})
        runs += 1
    return runs * batch / (time.perf_counter() - start)


def summarize(latencies: list[float], duration: float) -> dict:
    arr = np.asarray(latencies) * 1000
    return {
        "requests": len(latencies),
        "rps": len(latencies) / duration,
        "p50_ms": float(np.percentile(arr, 50)),
        "p99_ms": float(np.percentile(arr, 99)),
    }


def measure(transport, runner, port, metrics_port, block, concurrency, duration) -> dict:
    before = batch_stats(metrics_port)
    latencies = asyncio.run(runner(port, block, concurrency, duration))
    after = batch_stats(metrics_port)
    mean_batch = (after[0] - before[0]) / max(1.0, after[1] - before[1])
    cell = {
        "transport": transport,
        "rows_per_request": block.shape[0],
        "concurrency": concurrency,
        **summarize(latencies, duration),
        "mean_batch": mean_batch,
    }
    cell["rows_per_s"] = cell["rps"] * block.shape[0]
    print(
        f"{transport:4} rows={block.shape[0]:<3} c={concurrency:<3} {cell['rps']:8.0f} req/s "
        f"{cell['rows_per_s']:9.0f} rows/s  p50 {cell['p50_ms']:6.2f} ms  "
        f"p99 {cell['p99_ms']:6.2f} ms  mean batch {mean_batch:5.1f} rows",
        flush=True,
    )
    return cell


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per cell")
    parser.add_argument(
        "--threads", type=int, default=1, help="ORT intra-op threads (pod and in-process)"
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument(
        "--rows",
        type=int,
        nargs="+",
        default=[1, 64],
        help="rows per request (1: one item; 64: a page of candidates)",
    )
    parser.add_argument(
        "--instances",
        type=int,
        nargs="+",
        default=[1, 2],
        help="instance_group count of the pod (ONNX Runtime sessions)",
    )
    parser.add_argument("--out", type=Path, default=None, help="write JSON results here")
    args = parser.parse_args()
    results = {
        "model": "MLP " + "-".join(map(str, DIMS)),
        "threads": args.threads,
        "duration_s": args.duration,
        "cells": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        for instances in args.instances:
            path = write_repo(Path(tmp), instances)
            pod = start_pod(Path(tmp), intra_op_threads=args.threads)
            ports = {"grpc": pod.grpc_port, "http": pod.http_port, "metrics": pod.metrics_port}
            try:
                rng = np.random.default_rng(0)
                for rows in args.rows:
                    block = rng.standard_normal((rows, DIMS[0])).astype(np.float32)
                    for transport, runner, port in (
                        ("grpc", run_grpc, ports["grpc"]),
                        ("http", run_http, ports["http"]),
                    ):
                        for concurrency in args.concurrency:
                            cell = measure(
                                transport,
                                runner,
                                port,
                                ports["metrics"],
                                block,
                                concurrency,
                                args.duration,
                            )
                            results["cells"].append({"instances": instances, **cell})
            finally:
                pod.stop()
        limits: dict[int, float] = {}  # measured once per batch size
        for cell in results["cells"]:
            batch = max(1, round(cell["mean_batch"]))
            if batch not in limits:
                limits[batch] = in_process_rows_per_s(path, batch, args.threads, 3.0)
            cell["in_process_rows_per_s"] = limits[batch]
            cell["ratio_to_in_process"] = cell["rows_per_s"] / limits[batch]
    print()
    print(
        "| instances | transport | rows/request | concurrency | req/s | rows/s | p50 ms | p99 ms "
        "| mean batch (rows) | in-process rows/s at that batch | pod / in-process |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    columns = (
        "instances",
        "transport",
        "rows_per_request",
        "concurrency",
        "rps",
        "rows_per_s",
        "p50_ms",
        "p99_ms",
        "mean_batch",
        "in_process_rows_per_s",
        "ratio_to_in_process",
    )
    formats = {
        "rps": ".0f",
        "rows_per_s": ".0f",
        "p50_ms": ".2f",
        "p99_ms": ".2f",
        "mean_batch": ".1f",
        "in_process_rows_per_s": ".0f",
        "ratio_to_in_process": ".2f",
    }
    for c in results["cells"]:
        print("| " + " | ".join(format(c[k], formats.get(k, "")) for k in columns) + " |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
