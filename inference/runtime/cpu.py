"""The CPU this process may use: the quota of its cgroup (v2 ``cpu.max`` or v1
``cpu.cfs_quota_us``), the mechanism behind a Kubernetes CPU limit. A pod under a
quota of 0.15 CPU gains nothing from two model instances running side by side.

``CpuBudget`` is what the batchers judge their pace by under a quota: the quota
(re-read twice a second: a pod can be put under one, or have it changed, after it
starts) and the pod's ``overhead``, its whole CPU per second of model CPU. The quota
pays for more than the model: receiving and parsing each request (a 256x256 image is
786 KB of floats), refusing the ones it cannot serve, answering. A pace judged by the
model's CPU alone admitted work that ended past its deadline."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")


def cpu_limit(proc_cgroup: Path = Path("/proc/self/cgroup"), root: Path = ROOT) -> float | None:
    """Cores of CPU quota of this process's cgroup; None when unlimited or unknown."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        path = path.lstrip("/")
        try:
            if controllers == "":  # cgroup v2
                quota, period = (root / path / "cpu.max").read_text().split()[:2]
                return None if quota == "max" else int(quota) / int(period)
            if "cpu" in controllers.split(","):
                base = root / "cpu" if (root / "cpu").is_dir() else root / controllers
                quota = int((base / path / "cpu.cfs_quota_us").read_text())
                period = int((base / path / "cpu.cfs_period_us").read_text())
                return None if quota < 0 else quota / period
        except (OSError, ValueError):
            continue
    return None


#: the overhead is measured over windows of at least this long ...
WINDOW_S = 1.0
#: ... in which the models ran at least this much CPU (an idle pod's own upkeep over a
#: few rows would say nothing of the cost of serving)
MIN_MODEL_CPU_S = 0.05


@dataclass
class CpuBudget:
    """One per pod, shared by its batchers: ``limit()`` the quota's cores (None: no
    quota); ``charge(cpu_s)`` after each model run; ``overhead`` (>= 1) the process's
    CPU per second of model CPU, a moving average over windows."""

    read_limit: Callable[[], float | None] = cpu_limit
    process_time: Callable[[], float] = time.process_time
    clock: Callable[[], float] = time.monotonic
    overhead: float = 1.0
    _limit: float | None = field(default=None, init=False)
    _read_at: float = field(default=-math.inf, init=False)
    #: (clock, process CPU) at the start of the window, and the model CPU since
    _window: tuple[float, float] | None = field(default=None, init=False)
    _model_cpu_s: float = field(default=0.0, init=False)

    def limit(self) -> float | None:
        now = self.clock()
        if now - self._read_at > 0.5:
            self._read_at = now
            self._limit = self.read_limit()
        return self._limit

    def charge(self, model_cpu_s: float) -> None:
        now, cpu = self.clock(), self.process_time()
        if self._window is None:
            self._window = (now, cpu)
            return
        self._model_cpu_s += model_cpu_s
        started, cpu_start = self._window
        if now - started < WINDOW_S:
            return
        if self._model_cpu_s >= MIN_MODEL_CPU_S:
            sample = min(10.0, max(1.0, (cpu - cpu_start) / self._model_cpu_s))
            self.overhead = 0.5 * self.overhead + 0.5 * sample
        self._window, self._model_cpu_s = (now, cpu), 0.0
