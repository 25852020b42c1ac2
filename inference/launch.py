"""Start an inference pod as a child process (``python -m tenfold inference serve``) on
free loopback ports; its ports come from its ready file. The public way for tests,
benchmarks and the local stack to run a pod."""

from __future__ import annotations

import sys
from pathlib import Path

from servicekit.launcher import ServiceProcess, launch

#: what a fork server (servicekit.zygote) imports once for the pods it forks: the
#: command line and what ``tenfold inference serve`` loads, ~0.7 s of CPU, all but ONNX
#: Runtime (~40 ms), whose import starts a thread (a process with threads is not forked)
POD_PRELOAD = (
    "tenfold.cli",
    "inference.cli",
    "inference.settings",
    "inference.dataplane",
    "inference.http.app",
    "inference.grpc.servicer",
    "inference.metrics",
    "inference.warmup",
    "servicekit.runloop",
    "servicekit.kserve_grpc",
    "grpc.aio",
    "grpc_health.v1.health",
    "grpc_reflection.v1alpha.reflection",
)


def pod_command(repo: Path, *args: str, intra_op_threads: int = 1) -> list[str]:
    cmd = [sys.executable, "-m", "tenfold", "inference", "serve"]
    cmd += ["--model-repository", str(repo), "--intra-op-threads", str(intra_op_threads)]
    return [*cmd, "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0", *args]


def start_pod(
    repo: Path,
    *args: str,
    env: dict[str, str] | None = None,
    wait_ready: bool = True,
    intra_op_threads: int = 1,
) -> ServiceProcess:
    """Start a pod; by default wait until it is ready (models loaded and warmed up).

    ``args`` are extra ``tenfold inference serve`` flags."""
    cmd = pod_command(repo, *args, intra_op_threads=intra_op_threads)
    return launch(cmd, "inference pod", env, wait=wait_ready)
