"""The dynamic batcher, with a fake model: exact batch formation, bounds and timeouts."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from inference.protocol.errors import Overloaded, ServerUnavailable
from inference.repository.spec import BatchingPolicy
from inference.runtime.batcher import DynamicBatcher
from inference.runtime.cpu import CpuBudget
from inference.runtime.results import BatchResult


class FakeModel:
    """Doubles its input; records the rows of each batch; can be held to block.

    ``await model.started(n)`` returns once ``n`` batches have begun executing: the
    tests wait for that event instead of sleeping and hoping the scheduler ran."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.changed = asyncio.Condition()

    async def execute(self, parts, rows):
        async with self.changed:
            self.batches.append(list(rows))
            self.changed.notify_all()
        await self.gate.wait()
        merged = np.concatenate([p["x"] for p in parts])
        out = np.split(merged * 2, np.cumsum(rows)[:-1])
        return BatchResult([{"y": o} for o in out], 0.0)

    async def started(self, n: int) -> None:
        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(lambda: len(self.batches) >= n), 10)


async def queued(batcher: DynamicBatcher, depth: int) -> None:
    """Let the event loop run until ``depth`` requests wait in the batcher's queue
    (bounded by loop iterations, not by time)."""
    for _ in range(10_000):
        if batcher.depth == depth:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"the queue never reached {depth} (now {batcher.depth})")


SHORT_DELAY = BatchingPolicy(max_queue_delay_s=0.05)


def make(model, policy=SHORT_DELAY, max_batch=8, instances=1, cap=0):
    batcher = DynamicBatcher(
        execute=model.execute,
        instances=instances,
        max_batch_size=max_batch,
        policy=policy,
        queue_cap=cap,
    )
    batcher.start()
    return batcher


def row(value: float, n: int = 1, width: int = 2) -> dict:
    return {"x": np.full((n, width), value, dtype=np.float32)}


async def test_concurrent_requests_merge_and_split_back():
    model = FakeModel()
    batcher = make(model)
    results = await asyncio.gather(*(batcher.submit(row(i), 1) for i in range(6)))
    await batcher.stop()
    assert model.batches == [[1] * 6]
    for i, out in enumerate(results):
        np.testing.assert_array_equal(out["y"], np.full((1, 2), 2 * i))


async def test_max_batch_size_counts_rows_of_multi_row_requests():
    model = FakeModel()
    batcher = make(model, max_batch=8)
    sizes = [3, 3, 3, 2]
    results = await asyncio.gather(*(batcher.submit(row(i, n), n) for i, n in enumerate(sizes)))
    await batcher.stop()
    assert model.batches == [[3, 3], [3, 2]]
    assert [r["y"].shape[0] for r in results] == sizes


async def test_full_batch_dispatches_without_waiting_for_the_delay():
    model = FakeModel()
    batcher = make(model, policy=BatchingPolicy(max_queue_delay_s=30.0), max_batch=4)
    results = await asyncio.wait_for(
        asyncio.gather(*(batcher.submit(row(i), 1) for i in range(4))), timeout=5
    )
    await batcher.stop()
    assert len(results) == 4 and model.batches == [[1, 1, 1, 1]]


async def test_preferred_batch_size_dispatches_early():
    model = FakeModel()
    policy = BatchingPolicy(max_queue_delay_s=30.0, preferred_batch_sizes=(2, 4))
    batcher = make(model, policy=policy, max_batch=16)
    results = await asyncio.wait_for(
        asyncio.gather(*(batcher.submit(row(i), 1) for i in range(4))), timeout=5
    )
    await batcher.stop()
    assert len(results) == 4 and model.batches == [[1, 1, 1, 1]]


async def test_preferred_batch_of_one_runs_each_request_alone_even_when_queued():
    # the effect model's config (tenfold/models/build.py EFFECTS_CONFIG): the batcher's
    # queue and bound, batches of one; a client's own multi-image request stays whole
    model = FakeModel()
    policy = BatchingPolicy(max_queue_delay_s=0.0, preferred_batch_sizes=(1,), max_queue_size=64)
    batcher = make(model, policy=policy, max_batch=8)
    model.gate.clear()
    first = asyncio.create_task(batcher.submit(row(0), 1))
    await model.started(1)
    sizes = [1, 3, 1, 1]
    rest = [asyncio.create_task(batcher.submit(row(i, n), n)) for i, n in enumerate(sizes)]
    await queued(batcher, len(sizes))
    model.gate.set()
    results = await asyncio.gather(first, *rest)
    await batcher.stop()
    assert model.batches == [[1], [1], [3], [1], [1]]
    assert [r["y"].shape[0] for r in results] == [1, *sizes]


async def test_requests_with_other_shapes_are_not_merged():
    model = FakeModel()
    batcher = make(model)
    a, b, c = await asyncio.gather(
        batcher.submit(row(1, width=2), 1),
        batcher.submit(row(2, width=3), 1),
        batcher.submit(row(3, width=2), 1),
    )
    await batcher.stop()
    assert model.batches == [[1, 1], [1]]
    assert b["y"].shape == (1, 3) and a["y"][0, 0] == 2 and c["y"][0, 0] == 6


async def test_batches_grow_while_the_instance_is_busy():
    model = FakeModel()
    batcher = make(model, policy=BatchingPolicy(max_queue_delay_s=0.0), max_batch=8)
    model.gate.clear()
    first = asyncio.create_task(batcher.submit(row(0), 1))
    await model.started(1)
    rest = [asyncio.create_task(batcher.submit(row(i), 1)) for i in range(1, 6)]
    await queued(batcher, 5)
    model.gate.set()
    await asyncio.gather(first, *rest)
    await batcher.stop()
    assert model.batches == [[1], [1, 1, 1, 1, 1]]


async def test_queue_bound_rejects_at_once():
    model = FakeModel()
    batcher = make(model, policy=BatchingPolicy(max_queue_delay_s=0.0, max_queue_size=2))
    model.gate.clear()
    running = asyncio.create_task(batcher.submit(row(0), 1))
    await model.started(1)  # now executing; the queue is empty
    queued_ = [asyncio.create_task(batcher.submit(row(i), 1)) for i in (1, 2)]
    await queued(batcher, 2)
    with pytest.raises(Overloaded, match="queue is full"):
        await batcher.submit(row(3), 1)
    model.gate.set()
    await asyncio.gather(running, *queued_)
    await batcher.stop()


async def test_queue_cap_from_settings_applies_when_config_has_none():
    model = FakeModel()
    batcher = make(model, policy=BatchingPolicy(max_queue_delay_s=0.0), cap=1)
    model.gate.clear()
    running = asyncio.create_task(batcher.submit(row(0), 1))
    await model.started(1)
    waiting = asyncio.create_task(batcher.submit(row(1), 1))
    await queued(batcher, 1)
    with pytest.raises(Overloaded):
        await batcher.submit(row(2), 1)
    model.gate.set()
    await asyncio.gather(running, waiting)
    await batcher.stop()


async def test_queue_timeout_rejects_while_waiting():
    model = FakeModel()
    policy = BatchingPolicy(max_queue_delay_s=0.0, default_timeout_s=0.05)
    batcher = make(model, policy=policy)
    model.gate.clear()
    running = asyncio.create_task(batcher.submit(row(0), 1))
    await model.started(1)
    with pytest.raises(Overloaded, match="timed out"):
        await batcher.submit(row(1), 1)
    assert batcher.depth == 0
    model.gate.set()
    await running
    await batcher.stop()
    assert model.batches == [[1]]  # the expired request never ran


async def test_timeout_override_only_when_allowed():
    """Two batchers, both with their only instance busy, get the same request with a
    20 ms timeout override: the one whose policy allows overrides rejects it; the one
    whose policy does not keeps it queued (its default: no timeout) and serves it.

    No sleep decides the outcome: the forbidding batcher's request is queued first,
    so had it been given the 20 ms timer, that timer would have fired no later than
    the allowing batcher's, whose rejection we wait for."""
    allowing, forbidding = FakeModel(), FakeModel()
    allows = make(
        allowing, policy=BatchingPolicy(max_queue_delay_s=0.0, allow_timeout_override=True)
    )
    forbids = make(
        forbidding, policy=BatchingPolicy(max_queue_delay_s=0.0, allow_timeout_override=False)
    )
    running = []
    for model, batcher in ((forbidding, forbids), (allowing, allows)):
        model.gate.clear()
        running.append(asyncio.create_task(batcher.submit(row(0), 1)))
        await model.started(1)
    kept = asyncio.create_task(forbids.submit(row(7), 1, timeout_s=0.02))
    await queued(forbids, 1)
    with pytest.raises(Overloaded, match="timed out"):
        await allows.submit(row(1), 1, timeout_s=0.02)
    await asyncio.sleep(0)  # a timer due at the same time would have run by now
    assert not kept.done() and forbids.depth == 1, "the override was applied anyway"
    for model in (allowing, forbidding):
        model.gate.set()
    out = await kept
    await asyncio.gather(*running)
    await allows.stop()
    await forbids.stop()
    assert out["y"][0, 0] == 14
    assert forbidding.batches == [[1], [1]] and allowing.batches == [[1]]


async def test_delay_action_keeps_waiting():
    model = FakeModel()
    policy = BatchingPolicy(max_queue_delay_s=0.0, default_timeout_s=0.01, timeout_action="DELAY")
    batcher = make(model, policy=policy)
    model.gate.clear()
    running = asyncio.create_task(batcher.submit(row(0), 1))
    await model.started(1)
    waiting = asyncio.create_task(batcher.submit(row(1), 1))
    await queued(batcher, 1)
    # not a synchronisation: five times its 10 ms timeout pass while it stays queued
    await asyncio.sleep(0.05)
    assert not waiting.done() and batcher.depth == 1
    model.gate.set()
    out = await waiting
    await running
    await batcher.stop()
    assert out["y"][0, 0] == 2


async def test_cancelled_caller_is_skipped():
    model = FakeModel()
    batcher = make(model, policy=BatchingPolicy(max_queue_delay_s=0.0))
    model.gate.clear()
    running = asyncio.create_task(batcher.submit(row(0), 1))
    await model.started(1)
    gone = asyncio.create_task(batcher.submit(row(1), 1))
    kept = asyncio.create_task(batcher.submit(row(2), 1))
    await queued(batcher, 2)
    gone.cancel()
    model.gate.set()
    await asyncio.gather(running, kept)
    await batcher.stop()
    assert model.batches == [[1], [1]]


async def test_stop_fails_queued_requests():
    model = FakeModel()
    batcher = make(model, policy=BatchingPolicy(max_queue_delay_s=10.0), max_batch=8)
    waiting = asyncio.create_task(batcher.submit(row(1), 1))
    await queued(batcher, 1)
    await batcher.stop()
    with pytest.raises(ServerUnavailable):
        await waiting
    with pytest.raises(ServerUnavailable):
        await batcher.submit(row(1), 1)


async def test_model_failure_reaches_every_caller_in_the_batch():
    async def broken(parts, rows):
        raise RuntimeError("boom")

    batcher = DynamicBatcher(
        execute=broken, instances=1, max_batch_size=4, policy=BatchingPolicy(max_queue_delay_s=0.02)
    )
    batcher.start()
    results = await asyncio.gather(
        *(batcher.submit(row(i), 1) for i in range(3)), return_exceptions=True
    )
    await batcher.stop()
    assert all(isinstance(r, RuntimeError) for r in results)


async def test_without_dynamic_batching_each_request_runs_alone():
    model = FakeModel()
    batcher = make(model, policy=None, max_batch=8)
    await asyncio.gather(*(batcher.submit(row(i, 2), 2) for i in range(3)))
    await batcher.stop()
    assert model.batches == [[2], [2], [2]]


async def test_instances_run_batches_concurrently():
    model = FakeModel()
    batcher = make(model, policy=None, max_batch=8, instances=2)
    model.gate.clear()
    tasks = [asyncio.create_task(batcher.submit(row(i), 1)) for i in range(3)]
    await model.started(2)
    await queued(batcher, 1)
    assert len(model.batches) == 2  # two instances busy, the third request waits
    model.gate.set()
    await asyncio.gather(*tasks)
    await batcher.stop()


class PickyModel(FakeModel):
    """Fails any batch holding a negative value, as ONNX Runtime fails a whole batch on
    one out-of-range id."""

    async def execute(self, parts, rows):
        if any((p["x"] < 0).any() for p in parts):
            async with self.changed:
                self.batches.append(list(rows))
            raise ValueError("index out of bounds")
        return await super().execute(parts, rows)


async def test_a_bad_request_fails_alone_not_its_batch():
    model = PickyModel()
    batcher = make(model, max_batch=16)
    values = [-1.0 if i in (3, 7) else float(i) for i in range(10)]
    results = await asyncio.gather(
        *(batcher.submit(row(v), 1) for v in values), return_exceptions=True
    )
    await batcher.stop()
    for value, result in zip(values, results, strict=True):
        if value < 0:
            assert isinstance(result, ValueError)
        else:
            np.testing.assert_array_equal(result["y"], np.full((1, 2), 2 * value))
    # the 10 were batched together; the failure was bisected down to the two guilty ones
    assert model.batches[0] == [1] * 10
    assert [1] in model.batches and len(model.batches) < 2 * 10


class SlowModel(FakeModel):
    """Each batch takes ``seconds`` of loop time (and the gate, when closed)."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    async def execute(self, parts, rows):
        await asyncio.sleep(self.seconds)
        return await super().execute(parts, rows)


async def test_a_request_the_queue_cannot_serve_before_its_deadline_is_refused_at_once():
    model = SlowModel(0.1)
    batcher = make(model, policy=None, max_batch=1)
    assert batcher.expected_wait_s(1) is None  # nothing measured yet: nobody refused
    await batcher.submit(row(0), 1, deadline_s=0.01)
    assert batcher.expected_wait_s(1) >= 0.1  # one row took >= 0.1 s
    model.gate.clear()
    held = [asyncio.ensure_future(batcher.submit(row(i), 1)) for i in range(3)]
    await model.started(2)
    await queued(batcher, 2)
    with pytest.raises(Overloaded, match="past the request's deadline"):
        await batcher.submit(row(9), 1, deadline_s=0.15)  # needs ~0.4 s
    patient = asyncio.ensure_future(batcher.submit(row(8), 1, deadline_s=30))
    await queued(batcher, 3)
    model.gate.set()
    results = await asyncio.wait_for(asyncio.gather(*held, patient), 10)
    assert [float(r["y"][0, 0]) for r in results] == [0.0, 2.0, 4.0, 16.0]
    await batcher.stop()


async def test_a_queued_request_whose_deadline_passed_is_shed_at_dispatch_not_run():
    model = FakeModel()
    model.gate.clear()
    batcher = make(model, policy=None, max_batch=1)
    running = asyncio.ensure_future(batcher.submit(row(1), 1))
    await model.started(1)
    # nothing measured yet: both are admitted; one needs its answer within 50 ms
    hurried = asyncio.ensure_future(batcher.submit(row(2), 1, deadline_s=0.05))
    patient = asyncio.ensure_future(batcher.submit(row(3), 1, deadline_s=30))
    await queued(batcher, 2)
    await asyncio.sleep(0.1)  # the instance stays busy past the hurried one's deadline
    model.gate.set()
    # at dispatch, by the batch's check or the queue's (both run when a batch forms)
    with pytest.raises(Overloaded, match=r"shed (before running|while queued)"):
        await asyncio.wait_for(hurried, 10)
    done = await asyncio.wait_for(asyncio.gather(running, patient), 10)
    assert [float(r["y"][0, 0]) for r in done] == [2.0, 6.0]
    assert model.batches == [[1], [1]]  # the shed request never ran
    await batcher.stop()


async def test_queued_requests_the_queue_can_no_longer_reach_in_time_are_shed_early():
    # guards docs/autoscale.md: "a queued request that the queue, at the pace measured
    # when a batch is formed, would no longer reach before its deadline is shed then"
    model = SlowModel(0.05)
    batcher = make(model, policy=None, max_batch=1)
    await batcher.submit(row(0), 1)  # measures ~0.05 s a row
    model.gate.clear()
    running = asyncio.ensure_future(batcher.submit(row(1), 1))
    await model.started(2)
    first = asyncio.ensure_future(batcher.submit(row(2), 1, deadline_s=30))
    tight = asyncio.ensure_future(batcher.submit(row(3), 1, deadline_s=0.6))  # ~0.15 s away
    last = asyncio.ensure_future(batcher.submit(row(4), 1, deadline_s=30))
    await queued(batcher, 3)  # all three admitted
    await asyncio.sleep(0.4)  # the running row takes ~0.45 s: the pace slows ~2.6x
    model.gate.set()
    with pytest.raises(Overloaded, match="shed while queued"):
        await asyncio.wait_for(tight, 10)
    assert not first.done()  # shed when the batch ahead of it formed, before that ran
    done = await asyncio.wait_for(asyncio.gather(running, first, last), 10)
    assert [float(r["y"][0, 0]) for r in done] == [2.0, 4.0, 8.0]
    assert model.batches == [[1]] * 4  # rows 0, 1, 2, 4: the shed one never ran
    await batcher.stop()


@pytest.mark.parametrize("quota", [1.0, None], ids=["quota", "no quota"])
async def test_under_a_quota_the_pace_is_what_the_pod_kept_while_backlogged(quota):
    # guards docs/autoscale.md: "under a quota the pace is also no faster than the time
    # between completions while requests waited"
    model = FakeModel()  # runs in microseconds: the pod's time goes elsewhere
    batcher = DynamicBatcher(
        execute=model.execute,
        instances=1,
        max_batch_size=1,
        policy=None,
        budget=CpuBudget(read_limit=lambda: quota),
    )
    batcher.start()

    async def other_work():  # receiving, refusing, throttling: 50 ms between batches
        while True:
            time.sleep(0.05)  # noqa: ASYNC251 (it blocks the loop on purpose)
            await asyncio.sleep(0)

    hog = asyncio.ensure_future(other_work())
    await asyncio.gather(*(batcher.submit(row(i), 1) for i in range(8)))  # a backlog
    hog.cancel()
    wait = batcher.expected_wait_s(1)
    await batcher.stop()
    if quota is None:
        assert wait < 0.01  # the instance's own time: microseconds
    else:
        assert wait >= 0.03  # the pace it kept, not the model's microseconds


async def test_a_seeded_batcher_refuses_from_its_first_request_what_it_cannot_serve_in_time():
    # guards docs/autoscale.md: "the warm-up run seeds the pace"
    model = FakeModel()
    model.gate.clear()
    seeded, unseeded = make(model, policy=None, max_batch=1), make(model, policy=None, max_batch=1)
    seeded.seed(1, BatchResult([], compute_s=0.2))
    assert seeded.expected_wait_s(1) == pytest.approx(0.2)
    assert unseeded.expected_wait_s(1) is None
    running = [asyncio.ensure_future(b.submit(row(1), 1)) for b in (seeded, unseeded)]
    await model.started(2)
    with pytest.raises(Overloaded, match="past the request's deadline"):
        await seeded.submit(row(2), 1, deadline_s=0.3)  # behind the running row: 0.4 s
    admitted = asyncio.ensure_future(unseeded.submit(row(2), 1, deadline_s=0.3))
    await queued(unseeded, 1)  # unmeasured, it queues what it cannot judge
    model.gate.set()
    done = await asyncio.wait_for(asyncio.gather(*running, admitted), 10)
    assert [float(r["y"][0, 0]) for r in done] == [2.0, 2.0, 4.0]
    await asyncio.gather(seeded.stop(), unseeded.stop())


@pytest.mark.timing
async def test_a_batch_lasts_at_most_a_quarter_of_its_most_pressed_requests_time_left():
    # guards docs/autoscale.md: "a batch takes rows only while it lasts at most a quarter
    # of the time its most pressed request has left" (its rows all finish when it ends)
    model = FakeModel()
    batcher = make(model, policy=BatchingPolicy(max_queue_delay_s=0.05), max_batch=8)
    batcher.seed(1, BatchResult([], compute_s=1.0))  # judged at 1 s a row
    hurried = batcher.submit(row(1), 1, deadline_s=8.5)  # a quarter: 2 rows, not 3
    patient = [batcher.submit(row(i), 1, deadline_s=30) for i in (2, 3, 4)]
    done = await asyncio.wait_for(asyncio.gather(hurried, *patient), 10)
    assert [float(r["y"][0, 0]) for r in done] == [2.0, 4.0, 6.0, 8.0]
    assert model.batches == [[1, 1], [1, 1]]  # one batch of 4 would end at ~4 s
    await batcher.stop()


async def test_a_batch_is_judged_with_how_far_batches_slipped_past_their_judgement():
    # guards docs/autoscale.md: "a batch's end is judged with the slip measured so far"
    model = SlowModel(0.3)
    batcher = make(model, policy=None, max_batch=1)
    batcher.seed(1, BatchResult([], compute_s=0.1))  # judged 0.1 s a row; it takes 0.3
    await batcher.submit(row(1), 1)  # slipped ~3x; the pace it learns is 0.14 s
    assert batcher.expected_wait_s(1) < 0.25  # admission still judges by the pace ...
    with pytest.raises(Overloaded, match="shed before running"):
        await batcher.submit(row(2), 1, deadline_s=0.25)  # ... the batch, with the slip
    assert model.batches == [[1]]  # it never ran (it would have ended at ~0.3 s)
    await batcher.stop()
