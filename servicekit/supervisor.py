"""Run N worker processes of one service (sharing ports with SO_REUSEPORT), restart a
worker that dies, and stop them all with SIGTERM (each drains).

A worker is any command that takes ``--ready-file`` (``servicekit.launcher``). Restarts
are bounded by a budget over a sliding window (``RestartBudget``, clock injected): a
worker that keeps dying stops the whole service with exit code 1 instead of looping.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping

from servicekit.launcher import LaunchError, ServiceProcess, launch
from servicekit.logs import say

log = logging.getLogger("tenfold.supervisor")


class RestartBudget:
    """At most ``limit`` restarts within any ``window_s`` seconds."""

    def __init__(self, limit: int, window_s: float, clock: Callable[[], float]) -> None:
        self.limit = limit
        self.window_s = window_s
        self.clock = clock
        self._times: deque[float] = deque()

    def allow(self) -> bool:
        now = self.clock()
        while self._times and now - self._times[0] > self.window_s:
            self._times.popleft()
        if len(self._times) >= self.limit:
            return False
        self._times.append(now)
        return True


class Supervisor:
    def __init__(
        self,
        name: str,
        command: list[str],
        count: int,
        env: Mapping[str, str] | None = None,
        budget: RestartBudget | None = None,
        on_exit: Callable[[int], None] | None = None,
        ready_timeout_s: float = 120.0,
        stop_timeout_s: float = 60.0,
    ) -> None:
        self.name = name
        self.command = command
        self.count = count
        self.env = dict(env or {})
        self.budget = budget or RestartBudget(5, 60.0, time.monotonic)
        self.on_exit = on_exit
        self.ready_timeout_s = ready_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.workers: list[ServiceProcess] = []
        self.restarts = 0

    def _launch(self, wait: bool) -> ServiceProcess:
        return launch(
            self.command,
            self.name,
            self.env,
            capture=False,
            wait=wait,
            timeout=self.ready_timeout_s,
        )

    def start(self) -> Mapping[str, int]:
        """Start every worker, wait until all are ready; the ports the first one bound.
        Raises LaunchError (after stopping the others) when one cannot start."""
        self.workers = [self._launch(wait=False) for _ in range(self.count)]
        try:
            for worker in self.workers:
                worker.wait_ready(self.ready_timeout_s)
        except LaunchError:
            self.stop()
            raise
        return self.workers[0].ports

    def check(self) -> bool:
        """Restart workers that exited; False when the restart budget is spent."""
        for i, worker in enumerate(self.workers):
            code = worker.proc.poll()
            if code is None:
                continue
            if self.on_exit is not None:
                self.on_exit(worker.pid)
            if not self.budget.allow():
                say(self.name, f"worker {worker.pid} exited ({code}); too many restarts", True)
                return False
            say(self.name, f"worker {worker.pid} exited with code {code}; restarting", True)
            self.restarts += 1
            try:
                self.workers[i] = self._launch(wait=True)
            except LaunchError as exc:
                say(self.name, f"worker restart failed: {exc}", True)
                return False
        return True

    def supervise(self, stop: threading.Event, interval_s: float = 0.2) -> int:
        """Watch until ``stop`` is set (or the budget is spent); then stop all."""
        healthy = True
        while healthy and not stop.wait(interval_s):
            healthy = self.check()
        codes = self.stop()
        return 0 if healthy and all(c == 0 for c in codes) else 1

    def stop(self) -> list[int]:
        """SIGTERM every worker (each drains); their exit codes."""
        for worker in self.workers:
            worker.terminate()
        codes = []
        for worker in self.workers:
            try:
                # SIGTERM was sent above: one only (see ServiceProcess.stop)
                codes.append(worker.stop(self.stop_timeout_s, terminate=False))
            except Exception:  # a worker that will not stop: kill it
                log.exception("worker %d did not stop; killing it", worker.pid)
                worker.proc.kill()
                codes.append(worker.proc.wait())
        return codes
