"""The CPU this process may use: the quota of its cgroup (v2 ``cpu.max`` or v1
``cpu.cfs_quota_us``), the mechanism behind a Kubernetes CPU limit. A pod under a
quota of 0.15 CPU gains nothing from two model instances running side by side."""

from __future__ import annotations

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
