"""One inference pod at concurrency 1, 16 and 64 over gRPC and HTTP, side by side in
one run with the same model executed in-process by ONNX Runtime at the batch sizes
the pod's batcher formed (the limit).

    tenfold loadtest bench pod [--duration 8] [--out docs/results/bench_pod.json]

The model is a ranking MLP (256-512-256-128-1, seeded weights), one
row per request. The pod runs in its own process; the load generator (one Python
process, ``loadtest.openloop.closed_loop``: each of N workers sends its next request
when the previous one answers; latencies in the HDR recorder) shares the machine's
cores with it. The mean batch comes from the pod's ``tenfold_inference_batch_size_rows``
histogram (scraped before and after each cell). The in-process figure runs alone.
"""

from __future__ import annotations

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
from prometheus_client.parser import text_string_to_metric_families

from inference.examples import mlp
from inference.launch import start_pod
from inference.protocol.kserve_http import encode_binary_request
from loadtest.openloop import ClosedLoopResult, closed_loop
from protos.kserve.v2 import grpc_service_pb2 as pb
from servicekit import kserve_grpc

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


#: the pod's histogram of rows per executed batch
BATCH_ROWS = "tenfold_inference_batch_size_rows"
MODEL = "ranker"
WARMUP_S = 0.5


def scrape(metrics_port: int) -> str:
    """The pod's Prometheus exposition."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
        return r.read().decode()


def batch_stats(exposition: str, model: str = MODEL) -> tuple[float, float]:
    """(sum, count) of ``model``'s batch-size histogram, all versions, from /metrics text."""
    total = count = 0.0
    found = False
    for family in text_string_to_metric_families(exposition):
        if family.name != BATCH_ROWS:
            continue
        found = True
        for sample in family.samples:
            if sample.labels.get("model") != model:
                continue
            if sample.name == f"{BATCH_ROWS}_sum":
                total += sample.value
            elif sample.name == f"{BATCH_ROWS}_count":
                count += sample.value
    if not found:
        raise RuntimeError(f"the pod's metrics have no {BATCH_ROWS} histogram")
    return total, count


async def run_grpc(
    port: int, row: np.ndarray, concurrency: int, duration: float
) -> ClosedLoopResult:
    request = pb.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="features", datatype="FP32", shape=list(row.shape))
    request.raw_input_contents.append(row.tobytes())
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        infer = kserve_grpc.client_callables(channel)["ModelInfer"]

        async def send() -> str:
            try:
                await infer(request)
            except grpc.aio.AioRpcError as exc:
                return exc.code().name
            return "OK"

        await closed_loop(send, concurrency, WARMUP_S)  # warm the connection
        return await closed_loop(send, concurrency, duration)


async def run_http(
    port: int, row: np.ndarray, concurrency: int, duration: float
) -> ClosedLoopResult:
    body, headers = encode_binary_request({"features": row})
    url = f"http://127.0.0.1:{port}/v2/models/{MODEL}/infer"
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def send() -> int:
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
                return response.status

        await closed_loop(send, concurrency, WARMUP_S)
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


def summarize(result: ClosedLoopResult) -> dict:
    """OK answers per second and the latency percentiles, from the HDR recorder."""
    latency = result.total.latency_summary()
    return {
        "requests": result.total.completed,
        "rps": result.rate,
        "p50_ms": latency["p50_ms"],
        "p90_ms": latency["p90_ms"],
        "p99_ms": latency["p99_ms"],
        "max_ms": latency["max_ms"],
        "errors": result.total.errors,
    }


def measure(transport, runner, port, metrics_port, block, concurrency, duration) -> dict:
    before = batch_stats(scrape(metrics_port))
    result = asyncio.run(runner(port, block, concurrency, duration))
    after = batch_stats(scrape(metrics_port))
    mean_batch = (after[0] - before[0]) / max(1.0, after[1] - before[1])
    cell = {
        "transport": transport,
        "rows_per_request": block.shape[0],
        "concurrency": concurrency,
        **summarize(result),
        "mean_batch": mean_batch,
    }
    cell["rows_per_s"] = cell["rps"] * block.shape[0]
    errors = f"  errors {cell['errors']}" if cell["errors"] else ""
    print(
        f"{transport:4} rows={block.shape[0]:<3} c={concurrency:<3} {cell['rps']:8.0f} req/s "
        f"{cell['rows_per_s']:9.0f} rows/s  p50 {cell['p50_ms']:6.2f} ms  "
        f"p99 {cell['p99_ms']:6.2f} ms  mean batch {mean_batch:5.1f} rows{errors}",
        flush=True,
    )
    return cell


COLUMNS = (
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
FORMATS = {
    "rps": ".0f",
    "rows_per_s": ".0f",
    "p50_ms": ".2f",
    "p99_ms": ".2f",
    "mean_batch": ".1f",
    "in_process_rows_per_s": ".0f",
    "ratio_to_in_process": ".2f",
}


def table(results: dict) -> str:
    lines = [
        "| instances | transport | rows/request | concurrency | req/s | rows/s | p50 ms | p99 ms "
        "| mean batch (rows) | in-process rows/s at that batch | pod / in-process |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in results["cells"]:
        lines.append("| " + " | ".join(format(c[k], FORMATS.get(k, "")) for k in COLUMNS) + " |")
    return "\n".join(lines)


def benchmark(
    duration: float = 8.0,
    threads: int = 1,
    concurrency: tuple[int, ...] = (1, 16, 64),
    rows: tuple[int, ...] = (1, 64),
    instances: tuple[int, ...] = (1, 2),
    out: Path | None = None,
    limit_s: float = 3.0,
) -> dict:
    """Every cell (instances x rows x transport x concurrency), then the in-process limit
    at each mean batch; prints the table and writes JSON to ``out`` when given."""
    results = {
        "model": "MLP " + "-".join(map(str, DIMS)),
        "threads": threads,
        "duration_s": duration,
        "generator": "loadtest.openloop.closed_loop (one process), HDR recorder",
        "cells": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        for count in instances:
            path = write_repo(Path(tmp), count)
            pod = start_pod(Path(tmp), intra_op_threads=threads)
            ports = {"grpc": pod.grpc_port, "http": pod.http_port, "metrics": pod.metrics_port}
            try:
                rng = np.random.default_rng(0)
                for n_rows in rows:
                    block = rng.standard_normal((n_rows, DIMS[0])).astype(np.float32)
                    for transport, runner, port in (
                        ("grpc", run_grpc, ports["grpc"]),
                        ("http", run_http, ports["http"]),
                    ):
                        for workers in concurrency:
                            cell = measure(
                                transport, runner, port, ports["metrics"], block, workers, duration
                            )
                            results["cells"].append({"instances": count, **cell})
            finally:
                pod.stop()
        limits: dict[int, float] = {}  # measured once per batch size
        for cell in results["cells"]:
            batch = max(1, round(cell["mean_batch"]))
            if batch not in limits:
                limits[batch] = in_process_rows_per_s(path, batch, threads, limit_s)
            cell["in_process_rows_per_s"] = limits[batch]
            cell["ratio_to_in_process"] = cell["rows_per_s"] / limits[batch]
    print()
    print(table(results))
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2))
        print(f"\nwrote {out}")
    return results
