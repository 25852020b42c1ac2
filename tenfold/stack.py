"""A local stack on loopback: N inference pods and the gateway in front of them, as
child processes. ``tenfold up`` (what ``make run`` calls) runs it in the foreground."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

from gateway.launch import gateway_config, start_gateway
from inference.launch import start_pod
from servicekit.launcher import ServiceProcess

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
    started: list[ServiceProcess] = []
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
        print(gateway.new_output(), end="", flush=True)
        print(EXAMPLES.format(http=gateway.http_port, grpc=gateway.grpc_port), flush=True)
        while not stop.wait(0.5):
            for child in started:  # what the pods and the gateway say from now on
                print(child.new_output(), end="", flush=True)
            if any(p.proc.poll() is not None for p in started):
                print("tenfold: a process of the stack exited; stopping", file=sys.stderr)
                return 1
        return 0
    finally:
        for proc in reversed(started):  # gateway first: it drains, then the pods
            proc.stop()
