"""tenfold side by side with its peers, one run, one machine, the same load.

    make bench-peers        # = tenfold loadtest bench peers --repository var/model-repository \
                            #       --triton-venv .venv-triton --out docs/results/bench_peers.json

For the ranker (a feed's ranking call: ``--rows`` candidates per request) and the
effects CNN (one 256x256 image per request), against:

- ``tenfold``: the gateway (KServe v2 pass-through) in front of one pod (ONNX Runtime,
  dynamic batching, the repository's tuned config);
- ``tenfold pod``: the same pod without the gateway (what the gateway costs);
- ``native PyTorch``: loadtest/peers/naive_torch.py, the PyTorch module once per
  request in an aiohttp handler, no batching;
- ``Triton``: tritonserver 2.x from the nvidia-pytriton wheel, Python backend running
  ONNX Runtime on the same ONNX file, dynamic batcher configured as the pod;
- ``limit``: the same ONNX file run in-process by ONNX Runtime at its best batch size
  (no server, no network): the most requests a second the model allows.

Every server gets the same threads (the pod's tuned instances x threads; PyTorch 2
threads) and sees the same requests: KServe v2 over HTTP with binary tensors, sent
open-loop by ``tenfold loadtest`` (one generator process on the same 2 cores). Each
server first answers one request whose outputs must equal in-process ORT's; then a
ladder of rates finds the highest that keeps p99 under the budget, and a fixed rate
gives p50/p99.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tritonclient.http as th

from gateway.launch import gateway_config, start_gateway
from inference.launch import start_pod
from inference.protocol.datatypes import kserve_datatype
from loadtest.peers import served_model, threads, triton
from loadtest.recorder import percentile_ms
from loadtest.runner import RunPlan, highest_rate_met, run
from loadtest.scenarios import ScenarioSpec, infer_inputs
from loadtest.targets import LoadTestError, Target
from servicekit.launcher import launch


@dataclass(frozen=True)
class Workload:
    name: str
    model: str
    rows: int  # rows (candidates, images) per request
    image_size: int
    p99_budget_ms: float
    fixed_rate: float
    ladder: tuple[float, ...]
    limit_batches: tuple[int, ...]
    tolerance: float

    def spec(self) -> ScenarioSpec:
        """The ``infer`` scenario every server is loaded with."""
        return ScenarioSpec(
            "infer", model=self.model, batch=self.rows, image_size=self.image_size or 256
        )


GENERATOR = "tenfold loadtest, 1 process, open loop, same machine, nothing pinned"


def setup(started: float, **fields) -> dict:
    """The ``setup`` block of a benchmark's results: the machine, the generator, the
    benchmark's own ``fields`` and the wall time since ``started`` (``time.time()``)."""
    return {
        "cores": os.cpu_count(),
        "generator": GENERATOR,
        **fields,
        "wall_s": round(time.time() - started),
    }


def publish(results: dict, text: str, out: Path | None) -> None:
    """Print the tables; with ``out``, write the results as JSON and the tables as .md."""
    print(text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1) + "\n")
        out.with_suffix(".md").write_text(text.lstrip() + "\n")


def ladder(start: float, factor: float, top: float) -> tuple[float, ...]:
    rates = [start]
    while rates[-1] * factor <= top:
        rates.append(round(rates[-1] * factor, 1))
    return tuple(rates)


def workloads(rows: int) -> list[Workload]:
    return [
        Workload(
            "ranker",
            "feed_ranker",
            rows,
            0,
            25.0,
            100.0,
            ladder(50, 1.4, 5000),
            (rows, 2 * rows, 4 * rows, 8 * rows),
            1e-4,
        ),
        Workload(
            "effects CNN",
            "effects_cartoon",
            1,
            256,
            500.0,
            2.0,
            ladder(1, 1.4, 100),
            (1, 2, 4, 8),
            1.0,  # uint8 levels: PyTorch and ONNX Runtime may round a pixel a level apart
        ),
    ]


def sample(work: Workload, metadata: list[dict], seed: int = 1) -> dict[str, np.ndarray]:
    return infer_inputs(metadata, work.spec(), np.random.default_rng(seed))


def limit(repo: Path, work: Workload, feeds: dict[str, np.ndarray], seconds: float) -> dict:
    """In-process ORT: best rows/s over batch sizes, with the pod's instances x threads."""
    from optimizers import bench

    model = served_model(repo / work.model)
    instances, per_instance = model.instance_count, threads(model)
    onnx = model.served_file.resolve()
    sessions = [bench.session(onnx, per_instance, "all") for _ in range(instances)]
    per_batch = {}
    for batch in work.limit_batches:
        reps = -(-batch // work.rows)
        big = {k: np.concatenate([v] * reps)[:batch] for k, v in feeds.items()}
        per_batch[batch] = bench.measure_parallel(sessions, big, batch, seconds)
    best = max(per_batch, key=per_batch.get)
    outputs = sessions[0].run(None, feeds)
    names = [o.name for o in sessions[0].get_outputs()]
    return {
        "rows_per_s_by_batch": {str(b): round(r) for b, r in per_batch.items()},
        "best_batch": best,
        "requests_per_s": round(per_batch[best] / work.rows, 1),
        "sessions": f"{instances} x {per_instance} threads",
        "reference": dict(zip(names, outputs, strict=True)),
    }


def check_parity(address: str, work: Workload, feeds, reference: dict) -> float:
    """Largest difference between the server's outputs and in-process ORT's."""
    client = th.InferenceServerClient(address, network_timeout=120)
    inputs = []
    for name, array in feeds.items():
        tensor = th.InferInput(name, list(array.shape), kserve_datatype(array.dtype))
        tensor.set_data_from_numpy(array, binary_data=True)
        inputs.append(tensor)
    result = client.infer(work.model, inputs)
    # in float: uint8 pixels one level apart would wrap to 255 when subtracted as uint8
    worst = max(
        float(np.max(np.abs(result.as_numpy(n).astype(np.float64) - np.asarray(ref, np.float64))))
        for n, ref in reference.items()
    )
    if worst > work.tolerance:
        raise RuntimeError(f"{address} answers {work.model} {worst:g} away from ONNX Runtime")
    return worst


def load(address: str, work: Workload, duration: float, label: str) -> dict:
    spec = work.spec()
    target = Target.parse(f"http://{address}")
    print(f"  {label}: rate ladder {work.ladder[0]:g}..", file=sys.stderr, flush=True)
    plan = RunPlan(
        target,
        spec,
        work.ladder,
        duration,
        warmup_s=1.0,
        p99_budget_ms=work.p99_budget_ms,
        timeout_s=30,
    )
    steps = run(plan)
    (fixed,) = run(RunPlan(target, spec, (work.fixed_rate,), duration, warmup_s=1.0, timeout_s=30))
    lat = fixed.total.latency_summary()
    return {
        "max_rate_in_budget": highest_rate_met(steps, plan),
        "ladder": [
            {
                "rate": s.rate,
                "achieved": round(s.achieved_rate, 1),
                "p99_ms": round(s.total.percentile_ms(99), 2),
                "errors": s.total.errors,
                "meets": s.meets(plan),
            }
            for s in steps
        ],
        "fixed_rate": {
            "rate": work.fixed_rate,
            "p50_ms": lat["p50_ms"],
            "p99_ms": lat["p99_ms"],
            "errors": fixed.total.errors,
            "start_lag_p99_ms": round(percentile_ms(fixed.start_lag, 99), 2),
        },
    }


@contextmanager
def tenfold_stack(repo: Path, via_gateway: bool) -> Iterator[str]:
    pod = start_pod(repo, intra_op_threads=1)
    gateway = start_gateway(gateway_config(repo, [pod])) if via_gateway else None
    try:
        yield gateway.http if gateway else pod.http
    finally:
        if gateway:
            gateway.stop()
        pod.stop()


@contextmanager
def naive_torch(repo: Path, models: list[str]) -> Iterator[str]:
    server = launch(
        [
            sys.executable,
            "-m",
            "loadtest.peers.naive_torch",
            "--repository",
            str(repo),
            "--models",
            ",".join(models),
            "--threads",
            "2",
        ],
        "naive torch",
    )
    try:
        yield server.http
    finally:
        server.stop()


@contextmanager
def triton_server(repo: Path, models: list[str], venv: Path) -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="tenfold-triton-") as work:
        triton_repo = triton.model_repository(repo, models, Path(work) / "models")
        server = triton.start(venv, triton_repo, Path(work))
        try:
            yield server.http
        finally:
            server.stop()


def measure_all(repo: Path, venv: Path | None, duration: float, rows: int) -> dict:
    works = workloads(rows)
    models = [w.model for w in works]
    servers: dict[str, Callable] = {
        "tenfold": lambda: tenfold_stack(repo, True),
        "tenfold pod": lambda: tenfold_stack(repo, False),
        "native PyTorch": lambda: naive_torch(repo, models),
    }
    if venv is not None:
        servers["Triton"] = lambda: triton_server(repo, models, venv)
    results: dict = {w.name: {"servers": {}} for w in works}
    metas = {w.name: served_model(repo / w.model).input_metadata() for w in works}
    for w in works:
        print(f"{w.name}: in-process ONNX Runtime limit", file=sys.stderr, flush=True)
        feeds = sample(w, metas[w.name])
        lim = limit(repo, w, feeds, seconds=max(2.0, duration / 2))
        reference = lim.pop("reference")
        results[w.name]["limit"] = lim
        results[w.name]["reference"] = reference
    for label, server in servers.items():
        print(f"{label}: starting", file=sys.stderr, flush=True)
        with server() as address:
            for w in works:
                ref = results[w.name]["reference"]
                parity = check_parity(address, w, sample(w, metas[w.name]), ref)
                entry = load(address, w, duration, f"{label} / {w.name}")
                entry["max_abs_diff_vs_ort"] = parity
                results[w.name]["servers"][label] = entry
    for w in works:
        results[w.name].pop("reference")
        results[w.name]["workload"] = {
            "model": w.model,
            "rows_per_request": w.rows,
            "image": f"{w.image_size}x{w.image_size}" if w.image_size else None,
            "p99_budget_ms": w.p99_budget_ms,
            "fixed_rate": w.fixed_rate,
        }
    return results


def table(results: dict) -> str:
    lines = []
    for name, res in results.items():
        work, servers, lim = res["workload"], res["servers"], res["limit"]
        ours = servers["tenfold"]
        lines += [
            f"\n{name} ({work['model']}, {work['rows_per_request']} row(s)/request"
            f"{', ' + work['image'] if work['image'] else ''}; p99 budget "
            f"{work['p99_budget_ms']:g} ms; fixed rate {work['fixed_rate']:g}/s)\n",
            "| server | max req/s with p99 in budget | tenfold / it | p50 ms | p99 ms |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for label, s in servers.items():
            ratio = (
                ours["max_rate_in_budget"] / s["max_rate_in_budget"]
                if s["max_rate_in_budget"]
                else float("inf")
            )
            fixed = s["fixed_rate"]
            lines.append(
                f"| {label} | {s['max_rate_in_budget']:g} | {ratio:.2f}x | "
                f"{fixed['p50_ms']:.2f} | {fixed['p99_ms']:.2f} |"
            )
        lines.append(
            f"| limit: in-process ORT ({lim['sessions']}, batch {lim['best_batch']}) | "
            f"{lim['requests_per_s']:g} | "
            f"{ours['max_rate_in_budget'] / lim['requests_per_s']:.2f}x | - | - |"
        )
    return "\n".join(lines)


def benchmark(
    repository: Path,
    triton_venv: Path | None = Path(".venv-triton"),
    duration: float = 4.0,
    rows: int = 100,
    out: Path | None = None,
) -> dict:
    """Every server against every workload (Triton left out when ``triton_venv`` is
    None); prints the tables and writes JSON (+ the tables as .md) to ``out``."""
    if not (repository / "feed_ranker").is_dir():
        raise LoadTestError(f"{repository} has no default models: run tenfold models build")
    venv = None
    if triton_venv is not None:
        try:
            triton.site_packages(triton_venv)  # fails early with the fix
        except triton.TritonUnavailable as exc:
            raise LoadTestError(f"{exc} (or leave Triton out: --no-triton)") from None
        venv = triton_venv.resolve()
    started = time.time()
    results = measure_all(repository.resolve(), venv, duration, rows)
    results["setup"] = setup(
        started, protocol="KServe v2 HTTP, binary tensors", duration_s_per_rate=duration
    )
    publish(results, table({k: v for k, v in results.items() if k != "setup"}), out)
    return results
