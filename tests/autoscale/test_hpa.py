"""The HPA simulator against sequences computed by hand from the documented algorithm,
and the shipped effects HPA against the 10x goal."""

from __future__ import annotations

import pytest

from autoscale.hpa import HpaError, parse_hpa, quantity, simulate


def hpa_doc(behavior: dict | None = None, minimum=2, maximum=20, per_pod="10") -> dict:
    spec = {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "x"},
        "minReplicas": minimum,
        "maxReplicas": maximum,
        "metrics": [
            {
                "type": "Pods",
                "pods": {
                    "metric": {"name": "tenfold_pool_demand_rps"},
                    "target": {"type": "AverageValue", "averageValue": per_pod},
                },
            }
        ],
    }
    if behavior is not None:
        spec["behavior"] = behavior
    return {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "spec": spec}


def step(before: float, after: float, at: float):
    return lambda t: after if t >= at else before


def changes(steps) -> list[tuple[float, int]]:
    out, last = [], None
    for s in steps:
        if s.desired != last:
            out.append((s.t, s.desired))
            last = s.desired
    return out


PERCENT_ONLY = {"scaleUp": {"policies": [{"type": "Percent", "value": 100, "periodSeconds": 15}]}}


def test_percent_100_per_period_doubles_each_sync_2_4_8_16_20():
    hpa = parse_hpa(hpa_doc(PERCENT_ONLY))
    steps = simulate(hpa, step(20, 200, 60), 150, pod_start_s=0, metric_lag_s=0)
    assert changes(steps) == [(0, 2), (60, 4), (75, 8), (90, 16), (105, 20)]


def test_the_kubernetes_default_behaviour_adds_max_of_100_percent_and_4_pods():
    hpa = parse_hpa(hpa_doc())
    steps = simulate(hpa, step(20, 200, 60), 150, pod_start_s=0, metric_lag_s=0)
    assert changes(steps) == [(0, 2), (60, 6), (75, 12), (90, 20)]


def test_scale_down_waits_for_the_stabilisation_window():
    hpa = parse_hpa(hpa_doc())
    steps = simulate(hpa, step(200, 20, 30), 400, pod_start_s=0, metric_lag_s=0, start_replicas=20)
    # the last recommendation of 20 was made at t=15; the window is 300 s
    assert changes(steps) == [(0, 20), (315, 2)]


def test_within_the_tolerance_nothing_changes():
    hpa = parse_hpa(hpa_doc())
    steps = simulate(hpa, step(20, 21.5, 30), 120, pod_start_s=0, metric_lag_s=0)
    assert changes(steps) == [(0, 2)]  # 21.5 / 20 = 1.075, within 0.1


def test_pods_become_ready_after_their_start_up_and_the_metric_lags():
    hpa = parse_hpa(hpa_doc(PERCENT_ONLY))
    steps = simulate(hpa, step(20, 200, 60), 200, pod_start_s=20, metric_lag_s=15)
    assert changes(steps)[:2] == [(0, 2), (75, 4)]  # seen at the first sync 15 s later
    ready = {s.t: s.ready for s in steps}
    assert ready[94] == 2 and ready[95] == 4


@pytest.mark.parametrize(
    ("doc", "needle"),
    [
        ({"kind": "Deployment"}, "kind: expected HorizontalPodAutoscaler"),
        (hpa_doc(minimum=5, maximum=2), "need 1 <= min <= max"),
        (hpa_doc(per_pod="0"), "averageValue must be positive"),
        (
            hpa_doc({"scaleUp": {"policies": [{"type": "Pods", "value": 0, "periodSeconds": 15}]}}),
            "spec.behavior",
        ),
    ],
)
def test_documents_the_simulator_cannot_use_are_refused_naming_the_field(doc, needle):
    with pytest.raises(HpaError, match=needle):
        parse_hpa(doc)


def test_quantities():
    assert quantity("500m") == 0.5 and quantity("2k") == 2000 and quantity(20) == 20
