"""The mesh's costs and speed, one run, one machine:

    make bench-mesh   # = tenfold loadtest bench mesh --repository var/model-repository \\
                      #       --out docs/results/bench_mesh.json

1. **Edge overhead**: ``POST /v1/feed`` at the same open-loop rate (half of what the
   gateway sustains within the p99 budget, found first by a ladder) through Envoy and
   straight to the gateway of the same stack: p50/p99 and the difference.
2. **KServe v2 pass-through** (the ranker, ``--rows`` rows per request, as in the peers
   table): through Envoy straight to the pod, the pod alone, and today's gateway hop;
   highest rate within the p99 budget for each.
3. **Endpoint change → first request served there**: a second pod added to the pool
   through the admin API ``--changes`` times (removed in between); from the PUT's
   answer to the first answer that pod gave (``x-tenfold-upstream``), median and p99.

The stack is the one ``tenfold up`` builds (control plane, one pod, one gateway worker
following the mesh, Envoy with one worker thread), with ``upstream_header`` on so a
client can see which pod answered. One open-loop generator process shares the cores;
the CPU seconds of Envoy, the gateway, the pod and the generator are read per run.
"""

from __future__ import annotations

import statistics
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import requests

from gateway.launch import DEFAULT_MODELS, gateway_config, start_gateway
from inference.launch import start_pod
from loadtest.bench_feed import feed_items, measure_rate
from loadtest.bench_peers import check_parity, ladder, limit, publish, sample, setup, workloads
from loadtest.bench_peers import load as load_infer
from loadtest.peers import served_model
from loadtest.runner import RunPlan, highest_rate_met, run
from loadtest.scenarios import ScenarioSpec
from loadtest.targets import LoadTestError, Target
from mesh.envoy import start_envoy
from mesh.launch import put_endpoints, start_control_plane

POOL = "default"


@dataclass(frozen=True)
class MeshBenchPlan:
    repository: Path
    duration_s: float = 4.0
    rows: int = 100
    changes: int = 20
    p99_budget_ms: float = 100.0
    history: int = 5
    #: alternating direct/Envoy rounds of the edge overhead (their mean is reported)
    rounds: int = 3


@dataclass
class MeshStack:
    control_plane: object
    pods: list
    gateway: object
    envoy: object
    edge: str  # host:port of Envoy's HTTP listener

    @property
    def admin(self) -> str:
        return self.control_plane.http

    def pids(self) -> dict[str, list[int]]:
        return {
            "edge": [self.envoy.pid],
            "gateway": [self.gateway.pid],
            "pod": [p.pid for p in self.pods],
        }


@contextmanager
def mesh_stack(repo: Path):
    mesh = {
        "listeners": {
            "http": {"port": 0, "protocol": "http"},
            "grpc": {"port": 0, "protocol": "grpc"},
        },
        "pools": {"gateway": {}, POOL: {"models": list(DEFAULT_MODELS)}},
        "upstream_header": True,
    }
    control_plane = start_control_plane(mesh)
    pod = start_pod(repo, intra_op_threads=1)
    gateway = envoy = None
    try:
        put_endpoints(control_plane.http, POOL, [pod.endpoint])
        gateway = start_gateway(gateway_config(repo, [pod], xds=control_plane.grpc))
        put_endpoints(control_plane.http, "gateway", [gateway.endpoint])
        envoy = start_envoy("tenfold-edge", "127.0.0.1", control_plane.grpc_port)
        edge = envoy.wait_listeners(["http", "grpc"])["http"]
        yield MeshStack(control_plane, [pod], gateway, envoy, f"127.0.0.1:{edge}")
    finally:
        if envoy is not None:
            envoy.stop()
        if gateway is not None:
            gateway.stop()
        pod.stop()
        control_plane.stop()


def edge_overhead(stack: MeshStack, plan: MeshBenchPlan, items: int) -> dict:
    spec = ScenarioSpec("feed", feed_history=plan.history, items=items)
    target = Target.parse(f"http://{stack.gateway.http}")
    climb = RunPlan(
        target,
        spec,
        ladder(50, 1.25, 3000),
        plan.duration_s,
        warmup_s=1.0,
        p99_budget_ms=plan.p99_budget_ms,
        timeout_s=10,
    )
    capacity = highest_rate_met(run(climb), climb)
    if not capacity:
        raise LoadTestError("the gateway met the p99 budget at no rate")
    rate = round(capacity / 2, 1)
    print(f"  feed capacity {capacity:g}/s; both paths at {rate:g}/s", file=sys.stderr)
    pids = [p for group in stack.pids().values() for p in group]
    out: dict = {"capacity_direct": capacity, "rate": rate, "rounds": []}
    paths = (("direct to the gateway", stack.gateway.http), ("via Envoy", stack.edge))
    for _ in range(plan.rounds):  # alternating: drift and noise hit both paths alike
        runs = {}
        for label, address in paths:
            runs[label] = measure_rate(address, pids, spec, rate, plan.duration_s * 2)
            print(f"  {label}: {runs[label]}", file=sys.stderr, flush=True)
        out["rounds"].append(runs)
    for label, _ in paths:
        rounds = [r[label] for r in out["rounds"]]
        out[label] = {
            "achieved": round(statistics.mean(r["achieved"] for r in rounds), 1),
            "p50_ms": round(statistics.mean(r["p50_ms"] for r in rounds), 3),
            "p99_ms": round(statistics.mean(r["p99_ms"] for r in rounds), 3),
            "p99_ms_each": [r["p99_ms"] for r in rounds],
            "errors": sum(sum(r["errors"].values()) for r in rounds),
            "cores": rounds[-1]["cores"],
        }
    via, direct = out["via Envoy"], out["direct to the gateway"]
    out["added_p50_ms"] = round(via["p50_ms"] - direct["p50_ms"], 3)
    out["added_p99_ms"] = round(via["p99_ms"] - direct["p99_ms"], 3)
    return out


def passthrough(stack: MeshStack, repo: Path, plan: MeshBenchPlan) -> dict:
    # a finer ladder than the peers table's (x1.1 from 600/s): the paths differ by less
    # than one of its x1.4 steps
    work = replace(workloads(plan.rows)[0], ladder=ladder(600, 1.1, 5000))
    meta = served_model(repo / work.model).input_metadata()
    feeds = sample(work, meta)
    reference = limit(repo, work, feeds, seconds=1.0)["reference"]
    out = {}
    paths = {
        "Envoy -> pod (make run)": stack.edge,
        "pod alone": stack.pods[0].http,
        "gateway hop": stack.gateway.http,
    }
    for label, address in paths.items():
        check_parity(address, work, feeds, reference)
        out[label] = load_infer(address, work, plan.duration_s, label)
    pod = out["pod alone"]["max_rate_in_budget"]
    for entry in out.values():
        entry["of_pod_alone"] = round(entry["max_rate_in_budget"] / pod, 2) if pod else None
    return {"rows": plan.rows, "p99_budget_ms": work.p99_budget_ms, "paths": out}


def endpoint_changes(stack: MeshStack, repo: Path, plan: MeshBenchPlan) -> dict:
    second = start_pod(repo, intra_op_threads=1)
    url = f"http://{stack.edge}/v2/models/feed_ranker/ready"
    session = requests.Session()
    times = []
    try:
        for _ in range(plan.changes):
            put_endpoints(stack.admin, POOL, [stack.pods[0].endpoint])
            time.sleep(0.2)
            put_endpoints(stack.admin, POOL, [stack.pods[0].endpoint, second.endpoint])
            changed = time.perf_counter()
            while session.get(url, timeout=5).headers.get("x-tenfold-upstream") != second.http:
                if time.perf_counter() - changed > 10:
                    raise LoadTestError("the added pod got no request within 10 s")
            times.append((time.perf_counter() - changed) * 1000)
    finally:
        put_endpoints(stack.admin, POOL, [stack.pods[0].endpoint])
        second.stop()
    times.sort()
    return {
        "changes": len(times),
        "median_ms": round(statistics.median(times), 2),
        "p99_ms": round(times[min(len(times) - 1, int(0.99 * len(times)))], 2),
        "max_ms": round(times[-1], 2),
    }


def measure(plan: MeshBenchPlan) -> dict:
    repo = plan.repository.resolve()
    items = feed_items(repo)
    results: dict = {}
    with mesh_stack(repo) as stack:
        print("endpoint change -> first request there", file=sys.stderr, flush=True)
        results["endpoint_change"] = endpoint_changes(stack, repo, plan)
        print("edge overhead on /v1/feed", file=sys.stderr, flush=True)
        results["edge_overhead"] = edge_overhead(stack, plan, items)
        print("KServe v2 pass-through", file=sys.stderr, flush=True)
        results["passthrough"] = passthrough(stack, repo, plan)
    return results


def tables(results: dict) -> str:
    e = results["edge_overhead"]
    lines = [
        f"Edge overhead, POST /v1/feed at {e['rate']:g}/s (half of the gateway's "
        f"{e['capacity_direct']:g}/s within the p99 budget), {len(e['rounds'])} alternating "
        "rounds, means:",
        "",
        "| path | achieved/s | p50 ms | p99 ms | p99 of each round | errors | cores (last) |",
        "| --- | ---: | ---: | ---: | --- | ---: | --- |",
    ]
    for label in ("direct to the gateway", "via Envoy"):
        r = e[label]
        cores = ", ".join(f"{k} {v:g}" for k, v in r["cores"].items())
        each = ", ".join(f"{v:.1f}" for v in r["p99_ms_each"])
        lines.append(
            f"| {label} | {r['achieved']:g} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {each} | "
            f"{r['errors']} | {cores} |"
        )
    lines.append(
        f"\nAdded by Envoy: p50 {e['added_p50_ms']:+.2f} ms, p99 {e['added_p99_ms']:+.2f} ms"
    )
    p = results["passthrough"]
    lines += [
        f"\nKServe v2 ranker pass-through ({p['rows']} rows/request, p99 budget "
        f"{p['p99_budget_ms']:g} ms):",
        "",
        "| path | max req/s within budget | of the pod alone | p50 ms | p99 ms |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for label, r in p["paths"].items():
        fixed = r["fixed_rate"]
        lines.append(
            f"| {label} | {r['max_rate_in_budget']:g} | {r['of_pod_alone']:.2f}x | "
            f"{fixed['p50_ms']:.2f} | {fixed['p99_ms']:.2f} |"
        )
    c = results["endpoint_change"]
    lines.append(
        f"\nEndpoint change -> first request served there ({c['changes']} changes): "
        f"median {c['median_ms']:.1f} ms, p99 {c['p99_ms']:.1f} ms, max {c['max_ms']:.1f} ms"
    )
    return "\n".join(lines)


def benchmark(plan: MeshBenchPlan, out: Path | None = None) -> dict:
    if not (plan.repository / "feed_ranker").is_dir():
        raise LoadTestError(f"{plan.repository} has no default models: run tenfold models build")
    started = time.time()
    results = measure(plan)
    results["setup"] = setup(
        started,
        stack="control plane, 1 pod, 1 gateway worker following the mesh, Envoy, 1 thread",
        duration_s_per_rate=plan.duration_s,
    )
    publish(results, tables(results), out)
    return results
