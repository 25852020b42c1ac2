"""Start a service as a child process and learn its ports from its ready file.

Every tenfold service takes ``--ready-file PATH`` (``servicekit.ready``); the launcher
appends it, waits until the file says ``ready`` (or the process exits, or time runs
out), and keeps the child's output line by line for logs and tests.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from servicekit.ready import read_ready


class LaunchError(RuntimeError):
    """The child exited, or did not become ready in time; the message has its output."""


class ChildProcess(Protocol):
    """What the launcher and its callers use of a child: ``subprocess.Popen``'s part, or
    a fork server's child (``servicekit.zygote.ForkedProcess``)."""

    pid: int
    returncode: int | None

    def poll(self) -> int | None: ...
    def wait(self, timeout: float | None = None) -> int: ...
    def send_signal(self, sig: int) -> None: ...
    def terminate(self) -> None: ...
    def kill(self) -> None: ...


@dataclass
class ServiceProcess:
    name: str
    proc: ChildProcess
    #: where the child writes its ready state (None for a program that has none)
    ready_file: Path | None
    #: output lines (None when the output is not captured)
    lines: queue.Queue | None
    log: list[str] = field(default_factory=list)
    #: bound ports by name, from the ready file (or set by whoever chose them)
    ports: dict[str, int] = field(default_factory=dict)

    # -- ports --------------------------------------------------------------------------
    @property
    def http_port(self) -> int:
        return self.ports.get("http", 0)

    @property
    def grpc_port(self) -> int:
        return self.ports.get("grpc", 0)

    @property
    def metrics_port(self) -> int:
        return self.ports.get("metrics", 0)

    @property
    def http(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def endpoint(self) -> dict[str, str]:
        """Both addresses as a pool's endpoint set lists them: ``{"http", "grpc"}``."""
        return {"http": self.http, "grpc": self.grpc}

    @property
    def pid(self) -> int:
        return self.proc.pid

    # -- waiting ------------------------------------------------------------------------
    def wait_ready(self, timeout: float = 120.0, state: str = "ready") -> ServiceProcess:
        """Block until the ready file says ``state`` (``listening`` or ``ready``)."""
        if self.ready_file is None:
            raise ValueError(f"{self.name} has no ready file")
        wanted = ("listening", "ready") if state == "listening" else ("ready",)
        deadline = time.monotonic() + timeout
        while True:
            current = read_ready(self.ready_file)
            if current is not None and current.state in wanted:
                self.ports = dict(current.ports)
                return self
            if self.proc.poll() is not None:
                raise LaunchError(
                    f"{self.name} exited with code {self.proc.returncode} before it was "
                    f"{state}: {self.output()}"
                )
            if time.monotonic() > deadline:
                raise LaunchError(f"{self.name} not {state} after {timeout:.0f}s: {self.output()}")
            time.sleep(0.02)

    def wait_for(self, pattern: str, timeout: float = 60.0) -> str | None:
        """The first output line matching ``pattern``; None if the process exits first."""
        if self.lines is None:
            raise ValueError(f"{self.name}: output is not captured")
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
        """Everything the child printed so far (captured output only)."""
        self.new_output()
        return "".join(self.log)

    def new_output(self) -> str:
        """What the child printed since the last call (kept in ``log`` too)."""
        fresh = []
        while self.lines is not None:
            try:
                line = self.lines.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                fresh.append(line)
        self.log.extend(fresh)
        return "".join(fresh)

    # -- stopping -----------------------------------------------------------------------
    def terminate(self) -> None:
        """SIGTERM (the service drains) unless it has exited already; no wait."""
        if self.proc.poll() is None:
            self.proc.terminate()

    def stop(self, timeout: float = 30.0, terminate: bool = True) -> int:
        """SIGTERM (the service drains), wait for the exit; its exit code.
        ``terminate=False`` only waits: for a caller that already sent SIGTERM (a
        second one could reach the service after its drain removed its handlers, and
        kill it)."""
        if terminate:
            self.terminate()
        try:
            return self.proc.wait(timeout)
        finally:
            if self.ready_file is not None:
                shutil.rmtree(self.ready_file.parent, ignore_errors=True)


def stop_all(processes, timeout: float = 30.0) -> list[int]:
    """Stop several services at once: SIGTERM to each, then wait for each; their exit
    codes in order. Their drains (grace windows, in-flight) overlap instead of adding
    up. The caller orders the groups (a gateway's group before its pods' group). A
    timeout raises (``Supervisor.stop`` is the variant that kills and goes on)."""
    processes = list(processes)
    for process in processes:
        process.terminate()
    deadline = time.monotonic() + timeout
    return [
        process.stop(max(0.0, deadline - time.monotonic()), terminate=False)
        for process in processes
    ]


def free_port() -> int:
    """A loopback port free now, for a child that must be told its port (another
    process may take it before the child binds it: only for loopback tools and tests)."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` different loopback ports free now (held open together while chosen, so
    none repeats); the same caveat as ``free_port``."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]


def pump_lines(stream, lines: queue.Queue) -> None:
    """Put each line of ``stream`` on ``lines``, then None at its end (a thread's target)."""
    for line in stream:
        lines.put(line)
    lines.put(None)


def spawn(
    cmd: list[str],
    name: str,
    env: dict[str, str] | None = None,
    capture: bool = True,
    ready_file: Path | None = None,
) -> ServiceProcess:
    """Start ``cmd`` as is (a program of ours or not), its output collected line by line."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    out = subprocess.PIPE if capture else None
    # its own process group: a terminal's Ctrl-C reaches the parent only, which stops
    # its children in order (the edge drains before the gateway, the gateway before pods)
    proc = subprocess.Popen(
        cmd,
        stdout=out,
        stderr=subprocess.STDOUT if capture else None,
        text=True,
        env=full_env,
        process_group=0,
    )
    lines: queue.Queue | None = None
    if capture:
        lines = queue.Queue()
        threading.Thread(target=pump_lines, args=(proc.stdout, lines), daemon=True).start()
    return ServiceProcess(name, proc, ready_file, lines)


#: how a child is started: ``spawn``, or a fork server's ``spawn`` (servicekit.zygote)
Spawner = Callable[..., ServiceProcess]


def launch(
    cmd: list[str],
    name: str,
    env: dict[str, str] | None = None,
    capture: bool = True,
    wait: bool = True,
    timeout: float = 120.0,
    spawner: Spawner = spawn,
) -> ServiceProcess:
    """Start ``cmd --ready-file F``; with ``wait``, block until it is ready.

    ``capture``: collect stdout+stderr line by line (else the child shares ours).
    ``spawner(cmd, name, env, capture, ready_file)`` starts it (default: ``spawn``)."""
    ready_dir = Path(tempfile.mkdtemp(prefix=f"tenfold-{name.replace(' ', '-')}-"))
    ready_file = ready_dir / "ready.json"
    try:
        child = spawner([*cmd, "--ready-file", str(ready_file)], name, env, capture, ready_file)
    except BaseException:
        shutil.rmtree(ready_dir, ignore_errors=True)
        raise
    if wait:
        try:
            child.wait_ready(timeout)
        except LaunchError:
            child.stop(5)
            raise
    return child
