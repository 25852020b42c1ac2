"""The scaling policy on scripted traces with a fake clock: exact replica counts."""

from __future__ import annotations

import itertools

import pytest
from pydantic import ValidationError

from autoscale.policy import Observation, PolicySettings, PolicyState, decide

SETTINGS = PolicySettings(target_rps_per_pod=10, utilization=1.0, min_replicas=1, max_replicas=50)


def run(trace, settings=SETTINGS, start_ready: int = 1, ready_follows: bool = True):
    """``trace``: (seconds, arrival rate) steps; one decision per tick. Returns
    [(time, desired, mode)]; pods are ready at once when ``ready_follows``."""
    state, ready, now, out = PolicyState(), start_ready, 0.0, []
    for seconds, rate in trace:
        end = now + seconds
        while now < end:
            desired, state = decide(Observation(rate, 0, ready), state, now, settings)
            out.append((now, desired, state.last.mode))
            if ready_follows:
                ready = desired
            now += settings.tick_s
    return out


def test_steady_demand_settles_on_demand_over_target():
    timeline = run([(120, 20.0)], start_ready=2)
    assert timeline[-1][1] == 2
    assert {mode for _, _, mode in timeline} == {"stable"}


def test_a_tenfold_step_is_one_panic_decision_to_tenfold():
    timeline = run([(120, 20.0), (20, 200.0)])
    before = [d for t, d, _ in timeline if t < 120]
    after = [(d, m) for t, d, m in timeline if t >= 120]
    assert before[-1] == 2
    assert after[0] == (20, "panic")  # the first decision that saw the step
    assert all(d == 20 for d, _ in after)


def test_scale_up_per_decision_is_bounded_by_the_rate_limit():
    settings = SETTINGS.model_copy(update={"max_scale_up_rate": 3.0})
    timeline = run([(120, 20.0), (20, 400.0)], settings)
    after = [d for t, d, _ in timeline if t >= 120]
    assert after[:4] == [6, 18, 40, 40]  # x3 of the ready count per decision, then demand


def test_a_short_spike_scales_up_without_flapping_back_and_forth():
    timeline = run([(120, 20.0), (4, 100.0), (500, 20.0)])
    after = [d for t, d, _ in timeline if t >= 120]
    assert max(after) == 10
    peak = after.index(10)
    tail = after[peak:]
    assert all(b <= a for a, b in itertools.pairwise(tail)), "went up again"
    assert tail[-1] == 2


def test_a_ramp_down_waits_for_the_stabilisation_window_then_steps_down():
    timeline = run([(120, 200.0), (600, 20.0)], start_ready=20)
    drop = 120.0
    held = [d for t, d, _ in timeline if drop <= t < drop + SETTINGS.scale_down_delay_s]
    assert set(held) == {20}
    later = [d for t, d, _ in timeline if t >= drop + SETTINGS.scale_down_delay_s]
    assert later[0] < 20
    steps = list(itertools.pairwise([20, *later]))
    assert all(b <= a for a, b in steps), "went up again"
    assert all(b >= a // 2 for a, b in steps), "more than halved in one decision"
    assert later[-1] == 2


def test_in_flight_requests_are_a_second_signal():
    settings = SETTINGS.model_copy(update={"inflight_per_pod": 4})
    state = PolicyState()
    for i in range(30):
        desired, state = decide(Observation(5.0, 24.0, 1), state, i * 2.0, settings)
    assert desired == 6  # 24 in flight / 4 per pod, though 5/s needs one pod


def test_a_missing_observation_holds_the_count():
    state = PolicyState()
    desired, state = decide(Observation(80.0, 0, 8), state, 0.0, SETTINGS)
    assert desired == 8
    for i in range(1, 200):
        held, state = decide(None, state, i * 2.0, SETTINGS)
        assert held == 8 and state.last.mode == "hold"
    first, _ = decide(None, PolicyState(), 0.0, SETTINGS)
    assert first == SETTINGS.min_replicas


def test_min_and_max_bound_every_decision():
    settings = SETTINGS.model_copy(update={"min_replicas": 2, "max_replicas": 5})
    assert run([(20, 0.0)], settings)[-1][1] == 2
    assert run([(20, 1000.0)], settings)[-1][1] == 5


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"min_replicas": 9, "max_replicas": 3}, "min_replicas (9) > max_replicas (3)"),
        ({"target_rps_per_pod": 0}, "target_rps_per_pod"),
        ({"target_rps_per_pod": -1}, "target_rps_per_pod"),
        ({"panic_window_s": 90}, "panic_window_s must not exceed stable_window_s"),
        ({"max_scale_up_rate": 0.5}, "max_scale_up_rate"),
    ],
)
def test_bad_settings_name_the_field(changes, needle):
    with pytest.raises(ValidationError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        PolicySettings(**{"target_rps_per_pod": 10, **changes})
