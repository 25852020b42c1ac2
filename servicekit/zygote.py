"""A fork server ("zygote"): a process that imports a service's modules once, then
forks one child per request, each running ``python -m MODULE ARGS`` from that warm
state, so a new process skips the interpreter's start and the imports.

Why: a pod's imports (ONNX Runtime, gRPC, aiohttp, numpy, protobufs) cost ~0.7 s of
CPU, most of what a pod needs to become ready; seven pods starting at once in a surge
cost ~5 core-seconds on the same cores that serve. Forked from the zygote they cost
their model load and warm-up only (and share the imported pages copy-on-write).

The zygote imports and runs nothing else: no event loop, no gRPC channel, no thread
exists in it when it forks (``start`` refuses a zygote whose imports started a native
thread: ONNX Runtime's import does, so pods import it themselves; numpy's BLAS pool is
held to one thread, ``OPENBLAS_NUM_THREADS=1``, which its children keep: a pod computes
with ONNX Runtime, not BLAS).

Over a Unix socket (``SOCK_SEQPACKET``, JSON messages) the parent asks for a child,
sending the write end of the child's output pipe with the request
(``socket.send_fds``); the zygote forks, answers with the child's pid and a pidfd for
it (signals go through the pidfd, so a recycled pid is never signalled), reaps it when
it exits and reports its exit code. ``ForkServer.spawn`` returns the same
``ServiceProcess`` as ``servicekit.launcher.spawn``, with a Popen-like handle.

Run as ``python -m servicekit.zygote FD MODULE...`` (by ``ForkServer.start``).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import queue
import runpy
import select
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from servicekit.launcher import LaunchError, ServiceProcess, pump_lines

#: the largest message either side sends (a command line and its environment)
MAX_MESSAGE = 1 << 20


# -- the zygote's side ------------------------------------------------------------------
def serve(sock: socket.socket) -> None:
    """Fork a child per request on ``sock`` until the parent closes it."""
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ, None)
    _send(sock, {"op": "ready", "threads": len(os.listdir("/proc/self/task"))})
    while True:
        for key, _ in selector.select():
            if key.data is None:  # a request, or the parent went away
                msg, fds, _flags, _addr = socket.recv_fds(sock, MAX_MESSAGE, 1)
                if not msg:
                    return
                _fork(sock, selector, json.loads(msg), fds[0] if fds else None)
            else:  # a child's pidfd: it exited
                pid, pidfd = key.data
                selector.unregister(pidfd)
                os.close(pidfd)
                _, status = os.waitpid(pid, 0)
                _send(sock, {"op": "exited", "pid": pid, "code": os.waitstatus_to_exitcode(status)})


def _fork(sock: socket.socket, selector, request: dict, out: int | None) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        pid = os.fork()
    except OSError as exc:
        _send(sock, {"op": "failed", "id": request["id"], "error": str(exc)})
        if out is not None:
            os.close(out)
        return
    if pid == 0:  # the child: never returns into the zygote's loop
        code = 1
        try:
            code = _child(sock, request, out)
        finally:
            os._exit(code)
    if out is not None:
        os.close(out)
    pidfd = os.pidfd_open(pid)
    selector.register(pidfd, selectors.EVENT_READ, (pid, pidfd))
    socket.send_fds(sock, [_encode({"op": "started", "id": request["id"], "pid": pid})], [pidfd])


def _child(sock: socket.socket, request: dict, out: int | None) -> int:
    os.setpgid(0, 0)  # its own process group, as the launcher gives its children
    if out is not None:
        os.dup2(out, 1)
        os.dup2(out, 2)
    sock.detach()  # the fd is closed below; the object must not close a reused number
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))  # the socket, other children's pidfds
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.environ.update(request.get("env") or {})
    sys.argv = [request["module"], *request["argv"]]
    try:
        runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exc:
        code = _exit_code(exc.code)
    except BaseException:
        traceback.print_exc()
        code = 1
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    return code


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _encode(msg: dict) -> bytes:
    return json.dumps(msg).encode()


def _send(sock: socket.socket, msg: dict) -> None:
    sock.sendall(_encode(msg))


def main(argv: Sequence[str]) -> None:
    fd, *modules = argv
    sock = socket.socket(fileno=int(fd))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us by closing sock
    for module in modules:
        importlib.import_module(module)
    serve(sock)


# -- the parent's side ------------------------------------------------------------------
class ForkedProcess:
    """A child of the zygote, with the part of ``subprocess.Popen`` the launcher and the
    local provider use: ``pid``, ``returncode``, ``poll``, ``wait``, ``terminate``,
    ``kill``, ``stdout``."""

    def __init__(self, pid: int, pidfd: int, args: list[str], stdout=None) -> None:
        self.pid = pid
        self.args = args
        self.stdout = stdout
        self.returncode: int | None = None
        self._pidfd = pidfd
        self._exited = threading.Event()

    def _set_exit(self, code: int) -> None:
        self.returncode = code
        self._exited.set()
        with contextlib.suppress(OSError):
            os.close(self._pidfd)

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self._exited.wait(timeout):
            raise subprocess.TimeoutExpired(self.args, timeout)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError, OSError):
                signal.pidfd_send_signal(self._pidfd, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class ForkServer:
    """Start with ``start()``; ``spawn(cmd, name, ...)`` for a ``[sys.executable, "-m",
    MODULE, ...]`` command, in place of ``servicekit.launcher.spawn``; ``close()`` stops
    the zygote (children it forked keep running: stop them first)."""

    def __init__(self, preload: Sequence[str], start_timeout_s: float = 60.0) -> None:
        self.preload = tuple(preload)
        self.start_timeout_s = start_timeout_s
        self.process: subprocess.Popen | None = None
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._next_id = 0
        self._waiting: dict[int, queue.Queue] = {}
        self._children: dict[int, ForkedProcess] = {}
        self._lost = False

    def start(self) -> ForkServer:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        cmd = [sys.executable, "-m", "servicekit.zygote", str(theirs.fileno()), *self.preload]
        env = {"OPENBLAS_NUM_THREADS": "1", **os.environ, "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(cmd, pass_fds=[theirs.fileno()], env=env, process_group=0)
        theirs.close()
        ours.settimeout(self.start_timeout_s)
        try:
            hello = json.loads(ours.recv(MAX_MESSAGE) or b"{}")
        except (TimeoutError, ValueError) as exc:
            hello = {"error": str(exc)}
        if hello.get("op") != "ready":
            self.process.kill()
            self.process.wait()
            ours.close()
            raise LaunchError(f"the fork server did not start: {hello}")
        if hello["threads"] != 1:  # forking a process with threads is not safe
            self._sock = ours
            self.close()
            raise LaunchError(f"the fork server has {hello['threads']} threads after its imports")
        ours.settimeout(None)
        self._sock = ours
        threading.Thread(target=self._read, name="zygote-reader", daemon=True).start()
        return self

    def spawn(
        self,
        cmd: list[str],
        name: str,
        env: dict[str, str] | None = None,
        capture: bool = True,
        ready_file: Path | None = None,
        timeout_s: float = 10.0,
    ) -> ServiceProcess:
        if len(cmd) < 3 or cmd[0] != sys.executable or cmd[1] != "-m":
            raise ValueError(f"the fork server runs `{sys.executable} -m MODULE ...`, not {cmd}")
        if self._sock is None or self._lost:
            raise LaunchError(f"{name}: the fork server is not running")
        answer: queue.Queue = queue.Queue(maxsize=1)
        with self._lock:
            self._next_id += 1
            ident = self._next_id
            self._waiting[ident] = answer
        request = {"op": "spawn", "id": ident, "module": cmd[2], "argv": cmd[3:], "env": env or {}}
        read_end = write_end = None
        if capture:
            read_end, write_end = os.pipe()
        try:
            socket.send_fds(self._sock, [_encode(request)], [write_end] if capture else [])
        except OSError as exc:
            raise LaunchError(f"{name}: the fork server is gone: {exc}") from None
        finally:
            if write_end is not None:
                os.close(write_end)
        try:
            child = answer.get(timeout=timeout_s)
        except queue.Empty:
            child = f"no answer in {timeout_s} s"
        if not isinstance(child, ForkedProcess):
            if read_end is not None:
                os.close(read_end)
            raise LaunchError(f"{name}: the fork server could not start it: {child}")
        child.args = cmd
        lines: queue.Queue | None = None
        if read_end is not None:
            child.stdout = open(read_end, encoding="utf-8", errors="replace")
            lines = queue.Queue()
            threading.Thread(target=pump_lines, args=(child.stdout, lines), daemon=True).start()
        return ServiceProcess(name, child, ready_file, lines)  # type: ignore[arg-type]

    def _read(self) -> None:
        assert self._sock is not None
        while True:
            try:
                msg, fds, _flags, _addr = socket.recv_fds(self._sock, MAX_MESSAGE, 1)
            except OSError:
                msg, fds = b"", []
            if not msg:
                break
            self._dispatch(json.loads(msg), fds)
        self._lost = True
        with self._lock:
            waiting, self._waiting = self._waiting, {}
        for answer in waiting.values():
            answer.put("the fork server exited")
        threading.Thread(target=self._orphans, name="zygote-orphans", daemon=True).start()

    def _dispatch(self, msg: dict, fds: list[int]) -> None:
        op = msg.get("op")
        if op == "started":
            child = ForkedProcess(msg["pid"], fds[0], [])
            with self._lock:
                self._children[child.pid] = child
                answer = self._waiting.pop(msg["id"], None)
            if answer is not None:
                answer.put(child)
        elif op == "failed":
            with self._lock:
                answer = self._waiting.pop(msg["id"], None)
            if answer is not None:
                answer.put(msg.get("error", "fork failed"))
        elif op == "exited":
            with self._lock:
                child = self._children.pop(msg["pid"], None)
            if child is not None:
                child._set_exit(msg["code"])

    def _orphans(self) -> None:
        """The zygote is gone, so nobody reaps its children: watch their pidfds for the
        exit (code unknown: 255)."""
        while True:
            with self._lock:
                children = list(self._children.values())
            if not children:
                return
            for child in children:
                with contextlib.suppress(OSError):
                    ready, _, _ = select.select([child._pidfd], [], [], 0)
                    if ready:
                        with self._lock:
                            self._children.pop(child.pid, None)
                        child._set_exit(255)
            time.sleep(0.1)

    def close(self) -> None:
        """Stop the zygote: it exits when its socket closes."""
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
            self._sock = None
        if self.process is not None:
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


if __name__ == "__main__":
    main(sys.argv[1:])
