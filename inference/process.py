"""Run an inference pod as a child process (``python -m tenfold inference serve``) and
learn its ports from what it prints. Used by tests, benchmarks and local stacks."""

from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

_PORTS = re.compile(r"listening http=(\d+) grpc=(\d+) metrics=(\d+)")


@dataclass
class Pod:
    proc: subprocess.Popen
    lines: queue.Queue
    log: list[str] = field(default_factory=list)
    http_port: int = 0
    grpc_port: int = 0
    metrics_port: int = 0

    @property
    def http(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def wait_for(self, pattern: str, timeout: float = 60.0) -> str | None:
        """The first output line matching ``pattern``; None if the process exits first."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                if self.proc.poll() is not None and self.lines.empty():
                    return None
                continue
            if line is None:
                return None
            self.log.append(line)
            if regex.search(line):
                return line
        raise TimeoutError(f"no line matching {pattern!r} in {timeout}s; output: {self.log}")

    def output(self) -> str:
        while True:
            try:
                line = self.lines.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.log.append(line)
        return "".join(self.log)

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.proc.wait(timeout)


def _pump(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


def spawn(cmd: list[str], env: dict[str, str] | None = None) -> Pod:
    """Start ``cmd`` with its output (stdout and stderr) collected line by line."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=full_env
    )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()
    return Pod(proc, lines)


def start_pod(
    repo: Path,
    *args: str,
    env: dict[str, str] | None = None,
    wait_ready: bool = True,
    intra_op_threads: int = 1,
) -> Pod:
    """Start a pod on free loopback ports; by default wait until it is ready.

    ``args`` are extra ``tenfold inference serve`` flags."""
    cmd = [sys.executable, "-m", "tenfold", "inference", "serve"]
    cmd += ["--model-repository", str(repo), "--intra-op-threads", str(intra_op_threads)]
    cmd += ["--http-port", "0", "--grpc-port", "0", "--metrics-port", "0", *args]
    pod = spawn(cmd, env)
    if not wait_ready:
        return pod
    found = pod.wait_for(r"listening http=")
    if found is None:
        raise RuntimeError(f"pod exited early: {pod.output()}")
    pod.http_port, pod.grpc_port, pod.metrics_port = map(int, _PORTS.search(found).groups())
    if pod.wait_for(r"tenfold inference: ready") is None:
        raise RuntimeError(f"pod did not become ready: {pod.output()}")
    return pod
