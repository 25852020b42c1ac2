"""Real CPU limits for local pods: one cgroup per pod with a CPU quota, the mechanism
behind a Kubernetes CPU limit. cgroup v2 (``cpu.max``) or v1 (``cpu.cfs_quota_us``),
whichever is mounted, in a subtree this process creates and removes; cgroups it did
not create are never touched.

Weights, as a Kubernetes node sets them: each pod's group weighs its CPU (``cpu.shares``
= cores x 1024, the kubelet's formula for a request equal to the limit), and the
subtree of serving pods weighs ``SUBTREE_SHARES``, so the pods receive their quotas
even while other processes (the gateway, Envoy, a load generator) keep the cores busy.
Left at the default weight (that of one process) the subtree got one process's share:
in a drill, one serving pod and seven starting ones shared ~0.4 core, and the serving
one answered 0-3 requests a second instead of 4.5. Their quotas still cap them.

Start-up boost (``start``, then ``settle``): a starting pod runs under a larger quota
in a second subtree of low weight (``STARTING_SHARES``), so it takes the cores the
serving path leaves idle and never the serving path's own; once ready it moves to its
serving group under its own quota (Kubernetes' in-place resize, as the startup-CPU-boost
controllers use it). Under 0.15 CPU an effects pod took 5 s to import, load and warm
up; unlimited, 0.8 s. Boosted in the serving subtree, seven starting pods stalled the
gateway and the load generator for a second."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

PERIOD_US = 100_000
ROOT = Path("/sys/fs/cgroup")
#: the serving subtree's weight (cgroup v1 ``cpu.shares``; v2 ``cpu.weight`` is
#: converted): 16 processes' worth, enough that the pods' quotas bind before their share
SUBTREE_SHARES = 16 * 1024
#: the starting subtree's weight: a quarter of one process's
STARTING_SHARES = 256


class CgroupError(RuntimeError):
    """CPU limits cannot be set here; the message says why (and the way out)."""


class CpuLimiter:
    """``limit(pid, name)`` puts a process in its own cgroup with ``cpu`` cores of quota;
    ``start(pid, name, boost)`` puts it under the boost first, ``settle`` then limits it."""

    def __init__(self, cpu: float, root: Path = ROOT, owner: str | None = None) -> None:
        if cpu <= 0:
            raise CgroupError(f"cpu per pod must be positive, not {cpu}")
        self.cpu = cpu
        self.version, base = _mounted(root)
        owner = owner or f"tenfold-{os.getpid()}"
        self.subtree = base / owner
        self.starting = base / f"{owner}-start"
        made: list[Path] = []
        try:
            for tree, shares in ((self.subtree, SUBTREE_SHARES), (self.starting, STARTING_SHARES)):
                tree.mkdir(exist_ok=False)
                made.append(tree)
                if self.version == 2:
                    (tree / "cgroup.subtree_control").write_text("+cpu")
                self._weigh(tree, shares)
        except OSError as exc:
            for tree in made:
                with contextlib.suppress(OSError):
                    tree.rmdir()
            raise CgroupError(
                f"cannot create the cgroup {tree}: {exc.strerror} "
                "(run as root, or pass --no-cpu-limit)"
            ) from None
        self._groups: dict[str, Path] = {}

    def limit(self, pid: int, name: str) -> Path:
        """Put ``pid`` in the serving group ``name`` under the limiter's quota; from the
        starting subtree, if it was there."""
        group = self._group(self.subtree / name, self.cpu)
        (group / "cgroup.procs").write_text(str(pid))
        boosted = self._groups.get(name)
        self._groups[name] = group
        if boosted is not None and boosted != group:
            _rmdir(boosted, 1.0)
        return group

    def start(self, pid: int, name: str, boost: float) -> Path:
        """Put a starting ``pid`` in the starting subtree under ``boost`` cores of quota."""
        group = self._group(self.starting / name, boost)
        (group / "cgroup.procs").write_text(str(pid))
        self._groups[name] = group
        return group

    def settle(self, name: str, pid: int) -> Path:
        """The pod ``name`` is ready: move it to its serving group, under its own quota."""
        if name not in self._groups:
            raise KeyError(f"{name}: not a pod of this limiter")
        return self.limit(pid, name)

    def _group(self, group: Path, cpu: float) -> Path:
        group.mkdir(exist_ok=True)
        self._weigh(group, max(2, round(self.cpu * 1024)))
        self._quota(group, cpu)
        return group

    def _quota(self, group: Path, cpu: float) -> None:
        quota = max(1000, round(cpu * PERIOD_US))
        if self.version == 2:
            (group / "cpu.max").write_text(f"{quota} {PERIOD_US}")
        else:
            (group / "cpu.cfs_period_us").write_text(str(PERIOD_US))
            (group / "cpu.cfs_quota_us").write_text(str(quota))

    def _weigh(self, group: Path, shares: int) -> None:
        if self.version == 2:  # the kubelet's conversion from shares to weight
            weight = 1 + ((shares - 2) * 9999) // 262142
            (group / "cpu.weight").write_text(str(max(1, min(10_000, weight))))
        else:
            (group / "cpu.shares").write_text(str(shares))

    def release(self, name: str, timeout_s: float = 5.0) -> None:
        """Remove a pod's cgroup once its processes are gone."""
        group = self._groups.pop(name, None)
        if group is not None:
            _rmdir(group, timeout_s)

    def close(self) -> None:
        for name in list(self._groups):
            self.release(name)
        _rmdir(self.subtree, 5.0)
        _rmdir(self.starting, 5.0)


def _mounted(root: Path) -> tuple[int, Path]:
    if (root / "cgroup.controllers").is_file():
        if "cpu" not in (root / "cgroup.controllers").read_text().split():
            raise CgroupError("cgroup v2 is mounted without the cpu controller")
        return 2, root
    if (root / "cpu" / "cpu.cfs_quota_us").is_file():
        return 1, root / "cpu"
    raise CgroupError(f"no cgroup cpu controller under {root} (pass --no-cpu-limit)")


def _rmdir(path: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while path.exists():
        try:
            path.rmdir()
            return
        except OSError:  # still has processes (exiting): try again shortly
            if time.monotonic() > deadline:
                return
            time.sleep(0.05)
