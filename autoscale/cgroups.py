"""Real CPU limits for local pods: one cgroup per pod with a CPU quota, the mechanism
behind a Kubernetes CPU limit. cgroup v2 (``cpu.max``) or v1 (``cpu.cfs_quota_us``),
whichever is mounted, in a subtree this process creates and removes; cgroups it did
not create are never touched."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

PERIOD_US = 100_000
ROOT = Path("/sys/fs/cgroup")


class CgroupError(RuntimeError):
    """CPU limits cannot be set here; the message says why (and the way out)."""


class CpuLimiter:
    """``limit(pid, name)`` puts a process in its own cgroup with ``cpu`` cores of quota."""

    def __init__(self, cpu: float, root: Path = ROOT, owner: str | None = None) -> None:
        if cpu <= 0:
            raise CgroupError(f"cpu per pod must be positive, not {cpu}")
        self.cpu = cpu
        self.version, base = _mounted(root)
        self.subtree = base / (owner or f"tenfold-{os.getpid()}")
        try:
            self.subtree.mkdir(exist_ok=False)
            if self.version == 2:
                (self.subtree / "cgroup.subtree_control").write_text("+cpu")
        except OSError as exc:
            with contextlib.suppress(OSError):
                self.subtree.rmdir()
            raise CgroupError(
                f"cannot create the cgroup {self.subtree}: {exc.strerror} "
                "(run as root, or pass --no-cpu-limit)"
            ) from None
        self._groups: dict[str, Path] = {}

    def limit(self, pid: int, name: str) -> Path:
        group = self.subtree / name
        group.mkdir(exist_ok=True)
        quota = max(1000, round(self.cpu * PERIOD_US))
        if self.version == 2:
            (group / "cpu.max").write_text(f"{quota} {PERIOD_US}")
        else:
            (group / "cpu.cfs_period_us").write_text(str(PERIOD_US))
            (group / "cpu.cfs_quota_us").write_text(str(quota))
        (group / "cgroup.procs").write_text(str(pid))
        self._groups[name] = group
        return group

    def release(self, name: str, timeout_s: float = 5.0) -> None:
        """Remove a pod's cgroup once its processes are gone."""
        group = self._groups.pop(name, None)
        if group is not None:
            _rmdir(group, timeout_s)

    def close(self) -> None:
        for name in list(self._groups):
            self.release(name)
        _rmdir(self.subtree, 5.0)


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
