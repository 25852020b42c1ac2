"""A local stack on loopback: N inference pods and the gateway in front of them, as
child processes. ``tenfold up`` (what ``make run`` calls), tests and benchmarks use it."""

from __future__ import annotations

import os
import re
import signal
import sys
import tempfile
import threading
from pathlib import Path

import yaml

from inference.process import Pod, spawn, start_pod

_GATEWAY_PORTS = re.compile(r"listening http=[^:]+:(\d+) grpc=[^:]+:(\d+)")


def gateway_config(repo: Path, pods: list[Pod], **overrides) -> dict:
    """Gateway settings for the default models served by ``pods``."""
    config = {
        "pools": {
            "default": {
                "endpoints": [{"grpc": p.grpc, "http": p.http} for p in pods],
                "models": ["feed_user_tower", "feed_ranker", "effects_cartoon"],
            }
        },
        "feed": {"assets_dir": str(repo / "feed_user_tower")},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


def start_gateway(
    config: dict, *args: str, port: int = 0, grpc_port: int = 0, env: dict | None = None
) -> Pod:
    """Start ``tenfold gateway serve`` with ``config`` (written to a temp file); wait ready."""
    handle, path = tempfile.mkstemp(prefix="tenfold-gateway-", suffix=".yaml")
    with os.fdopen(handle, "w") as out:
        yaml.safe_dump(config, out)
    cmd = [sys.executable, "-m", "tenfold", "gateway", "serve", "--config", path]
    cmd += ["--port", str(port), "--grpc-port", str(grpc_port), *args]
    gateway = spawn(cmd, env)
    found = gateway.wait_for(r"listening http=")
    if found is None:
        raise RuntimeError(f"gateway exited early: {gateway.output()}")
    gateway.http_port, gateway.grpc_port = map(int, _GATEWAY_PORTS.search(found).groups())
    if gateway.wait_for(r"tenfold gateway: ready") is None:
        raise RuntimeError(f"gateway did not become ready: {gateway.output()}")
    return gateway


EXAMPLES = """\
Try, from another shell:
  curl -s -X POST localhost:{http}/v1/feed -H 'content-type: application/json' \\
       -d '{{"user_id": 42, "count": 10,
            "context": {{"hour": 20, "device": "ios", "network": "wifi"}}}}'
  curl -s localhost:{http}/v1/effects
  curl -s -X POST localhost:{http}/v1/effects/cartoon -H 'content-type: image/jpeg' \\
       --data-binary @docs/img/example.jpg -o cartoon.jpg
  curl -s localhost:{http}/v2/models/feed_ranker          # KServe v2 pass-through
  curl -s localhost:{http}/metrics | grep tenfold_gateway
  grpcurl -plaintext -d '{{"user_id": "42", "count": 3}}' \\
       localhost:{grpc} tenfold.v1.Feed/GetFeed          # gRPC, via server reflection
"""


def up(repo: Path, pods: int, port: int, grpc_port: int, workers: int, threads: int) -> int:
    """Run the stack in the foreground until SIGINT/SIGTERM, then stop it all."""
    started: list[Pod] = []
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        for i in range(pods):
            pod = start_pod(repo, intra_op_threads=threads)
            started.append(pod)
            print(
                f"tenfold: pod {i + 1}/{pods} ready (grpc {pod.grpc}, http {pod.http})", flush=True
            )
        config = gateway_config(repo, started[:], workers=workers)
        gateway = start_gateway(config, port=port, grpc_port=grpc_port)
        started.append(gateway)
        print(gateway.output(), end="", flush=True)
        print(EXAMPLES.format(http=gateway.http_port, grpc=gateway.grpc_port), flush=True)
        while not stop.wait(0.5):
            if any(p.proc.poll() is not None for p in started):
                print("tenfold: a process of the stack exited; stopping", file=sys.stderr)
                return 1
        return 0
    finally:
        for proc in reversed(started):  # gateway first: it drains, then the pods
            proc.stop()
