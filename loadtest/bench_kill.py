"""A pod SIGKILLed under open-loop load behind Envoy: how many requests fail.

    python -m loadtest.bench_kill --rate 400 [--duration 8] [--kill-at 4]

Two pods serving the example repository (``tenfold inference example-repo``: one MLP)
behind the mesh (control plane + Envoy, KServe v2 over HTTP straight to the pods);
``tenfold loadtest run`` offers ``--rate`` infer requests a second, and one pod is
killed with SIGKILL ``--kill-at`` seconds in, without leaving its pool first. Envoy's
retries (connect failure, reset) and outlier detection decide what the clients see.
Prints the generator's table (its ``errors`` column is the answer).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from inference.examples import write_example_repository
from inference.launch import start_pod
from mesh.envoy import start_envoy
from mesh.launch import start_control_plane


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=400.0)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--kill-at", type=float, default=4.0)
    args = parser.parse_args()
    repo = Path(tempfile.mkdtemp(prefix="tenfold-kill-")) / "repo"
    write_example_repository(repo)
    model = sorted(p.name for p in repo.iterdir() if p.is_dir())[0]
    pods = [start_pod(repo), start_pod(repo)]
    mesh = {
        "listeners": {
            "http": {"port": 0, "protocol": "http"},
            "grpc": {"port": 0, "protocol": "grpc"},
        },
        "pools": {"gateway": {}, "pods": {"models": [model]}},
        "endpoints": {"pods": [p.endpoint for p in pods]},
    }
    control_plane = start_control_plane(mesh)
    envoy = start_envoy("tenfold-edge", "127.0.0.1", control_plane.grpc_port)
    try:
        port = envoy.wait_listeners(["http", "grpc"])["http"]
        cmd = [sys.executable, "-m", "tenfold", "loadtest", "run"]
        cmd += ["--target", f"http://127.0.0.1:{port}", "--scenario", "infer"]
        cmd += ["--model", model, "--rate", str(args.rate), "--duration", str(args.duration)]
        generator = subprocess.Popen([*cmd, "--warmup", "0"], text=True)
        time.sleep(args.kill_at)
        os.kill(pods[1].pid, signal.SIGKILL)
        print(f"killed pod {pods[1].http} (pid {pods[1].pid})", file=sys.stderr, flush=True)
        return generator.wait(args.duration + 120)
    finally:
        envoy.stop()
        control_plane.stop()
        pods[0].stop()
        pods[1].stop(5)


if __name__ == "__main__":
    sys.exit(main())
