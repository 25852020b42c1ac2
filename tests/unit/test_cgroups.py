"""The local pods' cgroups, written to a temporary tree laid out as v1 or v2: quotas,
the weights a Kubernetes node would give, and the start-up boost resized in place."""

from __future__ import annotations

import pytest

from autoscale.cgroups import STARTING_SHARES, SUBTREE_SHARES, CgroupError, CpuLimiter


def v1(tmp_path):
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    return tmp_path / "cpu"


def v2(tmp_path):
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory\n")
    return tmp_path


def test_v1_a_pod_starts_boosted_at_low_weight_then_settles_to_its_quota(tmp_path):
    base = v1(tmp_path)
    limiter = CpuLimiter(0.15, root=tmp_path, owner="tenfold-t")
    assert (base / "tenfold-t" / "cpu.shares").read_text() == str(SUBTREE_SHARES)
    assert (base / "tenfold-t-start" / "cpu.shares").read_text() == str(STARTING_SHARES)
    booting = limiter.start(4242, "effects-1", boost=1.0)
    assert booting == base / "tenfold-t-start" / "effects-1"
    assert (booting / "cpu.cfs_quota_us").read_text() == "100000"
    assert (booting / "cgroup.procs").read_text() == "4242"
    serving = limiter.settle("effects-1", 4242)  # ready: its own quota, in the subtree
    assert serving == base / "tenfold-t" / "effects-1"
    assert (serving / "cpu.shares").read_text() == "154"  # 0.15 x 1024, as the kubelet
    assert (serving / "cpu.cfs_quota_us").read_text() == "15000"
    assert (serving / "cpu.cfs_period_us").read_text() == "100000"
    assert (serving / "cgroup.procs").read_text() == "4242"
    # (the starting group cannot be removed in a plain directory tree: it holds files)
    with pytest.raises(KeyError):
        limiter.settle("effects-9", 1)  # not one of its pods


def test_v2_weights_use_the_kubelet_conversion(tmp_path):
    v2(tmp_path)
    limiter = CpuLimiter(0.5, root=tmp_path, owner="tenfold-t")
    assert (tmp_path / "tenfold-t" / "cgroup.subtree_control").read_text() == "+cpu"
    assert (tmp_path / "tenfold-t" / "cpu.weight").read_text() == "625"  # 16384 shares
    group = limiter.limit(7, "feed-1")
    assert (group / "cpu.max").read_text() == "50000 100000"
    assert (group / "cpu.weight").read_text() == "20"  # 512 shares -> 1 + 510*9999/262142


def test_no_cpu_controller_is_refused_with_the_way_out(tmp_path):
    with pytest.raises(CgroupError, match="--no-cpu-limit"):
        CpuLimiter(0.15, root=tmp_path)
