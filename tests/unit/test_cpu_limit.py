"""The CPU quota a pod reads from its cgroup (v1 and v2 layouts written to a temporary
tree), and the batcher's wait estimate counting only the instances the quota runs."""

from __future__ import annotations

import asyncio

import pytest

from inference.runtime.batcher import DynamicBatcher
from inference.runtime.cpu import cpu_limit
from tests.unit.test_batcher import SlowModel, queued, row


def test_cgroup_v1_quota(tmp_path):
    (tmp_path / "self").write_text("5:cpuacct:/x\n4:cpu:/tenfold-1/pod-3\n")
    group = tmp_path / "cg" / "cpu" / "tenfold-1" / "pod-3"
    group.mkdir(parents=True)
    (group / "cpu.cfs_quota_us").write_text("15000\n")
    (group / "cpu.cfs_period_us").write_text("100000\n")
    assert cpu_limit(tmp_path / "self", tmp_path / "cg") == 0.15
    (group / "cpu.cfs_quota_us").write_text("-1\n")
    assert cpu_limit(tmp_path / "self", tmp_path / "cg") is None


def test_cgroup_v2_quota(tmp_path):
    (tmp_path / "self").write_text("0::/tenfold-1/pod-1\n")
    group = tmp_path / "cg" / "tenfold-1" / "pod-1"
    group.mkdir(parents=True)
    (group / "cpu.max").write_text("250000 100000\n")
    assert cpu_limit(tmp_path / "self", tmp_path / "cg") == 2.5
    (group / "cpu.max").write_text("max 100000\n")
    assert cpu_limit(tmp_path / "self", tmp_path / "cg") is None
    assert cpu_limit(tmp_path / "missing", tmp_path / "cg") is None


async def test_under_a_small_quota_two_instances_count_as_one():
    waits = {}
    for label, limit in (("no quota", None), ("0.15 CPU", 0.15)):
        model = SlowModel(0.05)
        batcher = DynamicBatcher(
            execute=model.execute,
            instances=2,
            max_batch_size=1,
            policy=None,
            cpu_limit=lambda limit=limit: limit,
        )
        batcher.start()
        await batcher.submit(row(0), 1)  # measures seconds per row
        model.gate.clear()
        held = [asyncio.ensure_future(batcher.submit(row(i), 1)) for i in range(4)]
        await model.started(3)
        await queued(batcher, 2)
        waits[label] = batcher.expected_wait_s(1)
        model.gate.set()
        await asyncio.wait_for(asyncio.gather(*held), 10)
        await batcher.stop()
    assert waits["0.15 CPU"] == pytest.approx(2 * waits["no quota"], rel=0.25)
