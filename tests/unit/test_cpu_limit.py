"""The CPU quota a pod reads from its cgroup (v1 and v2 layouts written to a temporary
tree), the pod's CPU budget, and the batcher's pace under a quota: only the instances
the quota runs, and no faster than the model's CPU (with the pod's overhead) allows."""

from __future__ import annotations

import asyncio

import pytest

from inference.protocol.errors import Overloaded
from inference.runtime.batcher import DynamicBatcher
from inference.runtime.cpu import CpuBudget, cpu_limit
from inference.runtime.results import BatchResult
from tests.unit.test_batcher import FakeModel, SlowModel, queued, row


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
    # and run as one: under 0.15 CPU a second one only slows the first and the loop
    waits, side_by_side = {}, {}
    for label, limit, running in (("no quota", None, 2), ("0.15 CPU", 0.15, 1)):
        model = SlowModel(0.05)
        batcher = DynamicBatcher(
            execute=model.execute,
            instances=2,
            max_batch_size=1,
            policy=None,
            budget=CpuBudget(read_limit=lambda limit=limit: limit),
        )
        batcher.start()
        await batcher.submit(row(0), 1)  # measures seconds per row
        model.gate.clear()
        held = [asyncio.ensure_future(batcher.submit(row(i), 1)) for i in range(4)]
        await model.started(1 + running)
        await queued(batcher, 4 - running)
        for _ in range(100):  # the scheduler has every chance to start another
            await asyncio.sleep(0)
        side_by_side[label] = len(model.batches) - 1
        waits[label] = batcher.expected_wait_s(1)
        model.gate.set()
        await asyncio.wait_for(asyncio.gather(*held), 10)
        await batcher.stop()
    assert side_by_side == {"no quota": 2, "0.15 CPU": 1}
    # (4 rows waiting or running + 1) x the row's time, over the instances side by side
    assert waits["0.15 CPU"] == pytest.approx(2 * waits["no quota"], rel=0.25)


class CpuModel(FakeModel):
    """Answers at once but reports 10 ms of CPU per row, as a model run would."""

    async def execute(self, parts, rows):
        result = await super().execute(parts, rows)
        return BatchResult(result.outputs, 0.0, cpu_s=0.01 * sum(rows))


@pytest.mark.parametrize("quota", [None, 0.1])
async def test_under_a_cpu_quota_the_wait_estimate_is_no_faster_than_the_quota_allows(quota):
    batcher = DynamicBatcher(
        execute=CpuModel().execute,
        instances=2,
        max_batch_size=1,
        policy=None,
        budget=CpuBudget(read_limit=lambda: quota),
    )
    batcher.start()
    for i in range(3):  # measured: wall ~0 per row, 10 ms CPU per row
        await batcher.submit(row(i), 1)
    wait = batcher.expected_wait_s(1)
    if quota is None:  # the pace is the wall time: nothing waits
        assert wait < 0.005
        await batcher.submit(row(5), 1, deadline_s=0.05)
    else:  # 10 ms of CPU at 0.1 core: 100 ms a row, past a 50 ms deadline
        assert wait == pytest.approx(0.1, rel=0.05)
        with pytest.raises(Overloaded, match="past the request's deadline"):
            await batcher.submit(row(5), 1, deadline_s=0.05)
    await batcher.stop()


def test_the_overhead_is_the_process_cpu_per_second_of_model_cpu_over_full_windows():
    clock, process = [0.0], [0.0]
    budget = CpuBudget(lambda: 0.15, lambda: process[0], lambda: clock[0])
    assert budget.limit() == 0.15 and budget.overhead == 1.0
    budget.charge(0.025)  # opens the first window
    for _ in range(4):  # 1 s: 4 rows of 25 ms model CPU, 40 ms of process CPU each
        clock[0] += 0.25
        process[0] += 0.04
        budget.charge(0.025)
    assert budget.overhead == pytest.approx(0.5 * 1.0 + 0.5 * 1.6)
    clock[0] += 5.0  # an idle pod's upkeep (0.3 s of CPU) over one tiny row: no sample
    process[0] += 0.3
    budget.charge(0.001)
    assert budget.overhead == pytest.approx(1.3)


async def test_under_a_quota_the_pace_counts_the_pods_overhead():
    budget = CpuBudget(read_limit=lambda: 0.1)
    budget.overhead = 2.0  # the pod spends as much again around its model runs
    batcher = DynamicBatcher(
        execute=CpuModel().execute, instances=1, max_batch_size=1, policy=None, budget=budget
    )
    batcher.start()
    await batcher.submit(row(0), 1)
    assert batcher.expected_wait_s(1) == pytest.approx(0.2, rel=0.05)  # 10 ms x 2 / 0.1
    await batcher.stop()
