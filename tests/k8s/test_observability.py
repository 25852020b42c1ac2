"""k8s/observability against the real thing: ``promtool check rules``, and a real
Prometheus loading the shipped rules and scraping a real local stack (the mesh control
plane, a feed pod and an effects pod, a gateway following the mesh) under a little
load, with the labels the ServiceMonitors give in a cluster (namespace, pod, and pool
for the pods). Every PromQL expression of the dashboard, the rules, prometheus-adapter's
rule and the KEDA triggers is evaluated there and must return series with the labels
its users read; every metric they name must be one the stack exports. Skipped, saying
so, where Prometheus is not installed (``make prometheus``)."""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time

import pytest
import requests
import yaml

from gateway.launch import start_gateway
from inference.launch import start_pod
from mesh.launch import put_endpoints, start_control_plane
from servicekit.launcher import stop_all
from tenfold.scaling import PRODUCT_POOLS
from tests.gateway.conftest import jpeg, wait_until
from tests.k8s.manifests import K8S, by_kind, kubectl, render
from tests.prom import MISSING, PROMETHEUS, PROMTOOL, query, running_prometheus

pytestmark = [pytest.mark.integration, pytest.mark.slow]
needs_prometheus = pytest.mark.skipif(PROMETHEUS is None or PROMTOOL is None, reason=MISSING)
needs_kubectl = pytest.mark.skipif(kubectl() is None, reason="kubectl: `make install` adds it")
OBS = K8S / "observability"
NAMESPACE = "tenfold"
#: kube-state-metrics series: a cluster has them, a local stack cannot
KUBE_STATE = re.compile(r"\bkube_[a-z_]+")


def dashboard_targets() -> list[tuple[str, str, str]]:
    """(panel title, expression with $namespace filled in, legend format)."""
    board = json.loads((OBS / "dashboards/tenfold.json").read_text())
    out = []
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$namespace", NAMESPACE)
            out.append((panel["title"], expr, target.get("legendFormat", "")))
    return out


def rule_groups() -> list[dict]:
    return yaml.safe_load((OBS / "rules.yaml").read_text())["groups"]


def adapter_rules() -> list[dict]:
    (config,) = [d for d in render("observability") if d["metadata"]["name"].endswith("adapter")]
    return yaml.safe_load(config["data"]["config.yaml"])["externalRules"]


def label_matchers(selector: dict) -> str:
    """An HPA metric selector as prometheus-adapter writes it into <<.LabelMatchers>>
    (the HPA's namespace first)."""
    out = [f'namespace="{NAMESPACE}"']
    out += [f'{k}="{v}"' for k, v in (selector.get("matchLabels") or {}).items()]
    for rule in selector.get("matchExpressions") or []:
        assert rule["operator"] == "In", rule
        out.append(f'{rule["key"]}=~"{"|".join(rule["values"])}"')
    return ",".join(out)


def every_expression() -> list[str]:
    exprs = [e for _, e, _ in dashboard_targets()]
    exprs += [r["expr"] for g in rule_groups() for r in g["rules"]]
    exprs += [r["metricsQuery"] for r in adapter_rules()]
    exprs += [
        t["metadata"]["query"]
        for d in by_kind(render("overlays/keda"), "ScaledObject")
        for t in d["spec"]["triggers"]
    ]
    return exprs


def metric_names(expr: str) -> set[str]:
    """The metric names an expression reads (ours, process_*, kube-state-metrics)."""
    return set(re.findall(r"\b((?:tenfold|process|kube)_[a-z0-9_]+)\b", expr))


# -- offline -------------------------------------------------------------------------


@needs_prometheus
def test_promtool_accepts_the_rules_and_the_prometheusrule_carries_the_same_groups(tmp_path):
    checked = subprocess.run(
        [PROMTOOL, "check", "rules", str(OBS / "rules.yaml")], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    (operator,) = by_kind(render("observability"), "PrometheusRule")
    assert operator["spec"]["groups"] == rule_groups()
    # promtool can fail: a rule with a bad expression is refused
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump({"groups": [{"name": "x", "rules": [{"record": "a:b", "expr": "sum(("}]}]})
    )
    assert (
        subprocess.run([PROMTOOL, "check", "rules", str(bad)], capture_output=True).returncode == 1
    )


@needs_kubectl
def test_the_hpas_metric_is_the_adapters_and_the_dashboard_has_the_panels_sres_need():
    (rule,) = adapter_rules()
    served = rule["name"]["as"]
    for overlay in ("cpu", "gpu"):
        for hpa in by_kind(render(f"overlays/{overlay}"), "HorizontalPodAutoscaler"):
            (metric,) = hpa["spec"]["metrics"]
            assert metric["external"]["metric"]["name"] == served
    titles = " | ".join(t for t, _, _ in dashboard_targets()).lower()
    for needed in (
        "demand",
        "latency p50 / p99",
        "shed",
        "5xx",
        "replicas",
        "batch size",
        "queue time",
        "cpu",
    ):
        assert needed in titles, needed


# -- against a real Prometheus scraping a real stack ----------------------------------


@pytest.fixture(scope="module")
def stack(quick_repo):
    started = []
    try:
        mesh = {
            "listeners": {
                "http": {"port": 0, "protocol": "http"},
                "grpc": {"port": 0, "protocol": "grpc"},
            },
            "pools": {"gateway": {}, **{p: {"models": list(m)} for p, m in PRODUCT_POOLS.items()}},
        }
        plane = start_control_plane(mesh)
        started.append(plane)
        pods = {}
        for pool, models in PRODUCT_POOLS.items():
            flags = [f for m in models for f in ("--load-model", m)]
            pods[pool] = start_pod(quick_repo, *flags)
            started.append(pods[pool])
            put_endpoints(plane.http, pool, [pods[pool].endpoint])
        gateway = start_gateway(
            {
                "pools": {p: {"models": list(m)} for p, m in PRODUCT_POOLS.items()},
                "feed_pool": "feed",
                "effects_pool": "effects",
                "feed": {"assets_dir": str(quick_repo / "feed_user_tower")},
                "xds": f"127.0.0.1:{plane.grpc_port}",
            }
        )
        started.append(gateway)
        yield plane, pods, gateway
    finally:
        stop_all(reversed(started))


@pytest.fixture(scope="module")
def prometheus(stack, tmp_path_factory):
    plane, pods, gateway = stack

    def job(name: str, target: str, **labels: str) -> dict:
        labels = {"namespace": NAMESPACE, **labels}
        return {"job_name": name, "static_configs": [{"targets": [target], "labels": labels}]}

    scrape = [
        job("gateway", gateway.http, pod="gateway-0"),
        job("edge-xds", plane.http, pod="edge-0"),
        *(
            job(f"{pool}-pods", f"127.0.0.1:{pod.metrics_port}", pod=f"{pool}-pods-0", pool=pool)
            for pool, pod in pods.items()
        ),
    ]
    stop = threading.Event()

    def load() -> None:  # feeds, effects, and a bad request now and then
        session, base, n = requests.Session(), f"http://{gateway.http}", 0
        image = jpeg(96, 80)
        while not stop.is_set():
            n += 1
            session.post(f"{base}/v1/feed", json={"user_id": n % 500, "count": 10}, timeout=10)
            if n % 5 == 0:
                session.post(
                    f"{base}/v1/effects/cartoon",
                    data=image,
                    params={"size": 256},
                    headers={"content-type": "image/jpeg"},
                    timeout=10,
                )
            if n % 7 == 0:
                session.post(f"{base}/v1/feed", json={"user_id": "x"}, timeout=10)
            time.sleep(0.05)

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    workdir = tmp_path_factory.mktemp("prometheus")
    try:
        with running_prometheus(workdir, scrape, [OBS / "rules.yaml"]) as url:
            # the 1m rates need two samples of every series: wait for the slowest ones
            def warmed() -> bool:
                routes = {
                    s["metric"].get("route") for s in query(url, "tenfold:route_requests:rate1m")
                }
                batches = query(url, "rate(tenfold_inference_batch_size_rows_count[1m]) > 0")
                return {"feed", "effects"} <= routes and len(
                    {s["metric"]["pool"] for s in batches}
                ) == 2

            wait_until(warmed, "every route's and pool's rates in Prometheus", 60, every=0.5)
            time.sleep(2)
            yield url
    finally:
        stop.set()
        worker.join(15)


@needs_prometheus
@needs_kubectl
def test_every_metric_the_expressions_name_is_one_the_stack_exports(prometheus):
    names = set().union(*(metric_names(e) for e in every_expression()))
    missing = []
    for name in sorted(names):
        if KUBE_STATE.fullmatch(name):
            continue
        families = {name, re.sub(r"_(total|bucket|sum|count)$", "", name)}
        found = any(
            requests.get(
                f"{prometheus}/api/v1/targets/metadata", params={"metric": f}, timeout=10
            ).json()["data"]
            for f in families
        )
        if not found:
            missing.append(name)
    assert missing == []
    # and the check can fail: a name nobody exports has no metadata
    assert not requests.get(
        f"{prometheus}/api/v1/targets/metadata", params={"metric": "tenfold_nope"}, timeout=10
    ).json()["data"]


@needs_prometheus
@pytest.mark.parametrize(
    ("title", "expr", "legend"), dashboard_targets(), ids=lambda v: str(v)[:40]
)
def test_every_dashboard_panel_shows_series_with_the_labels_its_legend_reads(
    prometheus, title, expr, legend
):
    result = query(prometheus, expr)
    if KUBE_STATE.search(expr):
        return  # kube-state-metrics: evaluated (no error), empty outside a cluster
    assert result, f"{title}: no series for {expr}"
    for label in re.findall(r"\{\{(\w+)\}\}", legend):
        assert all(label in s["metric"] for s in result), (title, label, result)


@needs_prometheus
def test_the_recording_rules_produce_series_and_every_rule_evaluates_cleanly(prometheus):
    for group in rule_groups():
        for rule in group["rules"]:
            if "record" not in rule:
                continue
            result = query(prometheus, rule["record"])
            assert result, rule["record"]
            grouped = re.search(r"by \(([^)]*)\)", rule["expr"])
            for label in grouped.group(1).split(", ") if grouped else []:
                if label != "le":
                    assert all(label in s["metric"] for s in result), (rule["record"], label)
    # the shed and error ratios are 0 (not missing) on routes without any
    shed = {
        s["metric"]["route"]: float(s["value"][1])
        for s in query(prometheus, "tenfold:route_shed:ratio_rate5m")
    }
    assert {"feed", "effects"} <= set(shed)
    rules = requests.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
    evaluated = [r for g in rules for r in g["rules"]]
    assert len(evaluated) == sum(len(g["rules"]) for g in rule_groups())
    assert [(r["name"], r.get("lastError")) for r in evaluated if r["health"] != "ok"] == []


@needs_prometheus
@needs_kubectl
def test_the_hpa_metric_and_the_keda_queries_read_each_pools_demand(prometheus):
    (rule,) = adapter_rules()
    series = requests.get(
        f"{prometheus}/api/v1/series", params={"match[]": rule["seriesQuery"]}, timeout=10
    ).json()["data"]
    assert {s["route"] for s in series} >= {"feed", "effects"}
    demand = {}
    for hpa in by_kind(render("overlays/cpu"), "HorizontalPodAutoscaler"):
        (metric,) = hpa["spec"]["metrics"]
        matchers = label_matchers(metric["external"]["metric"]["selector"])
        expr = rule["metricsQuery"].replace("<<.Series>>", "tenfold_gateway_arrivals_total")
        expr = expr.replace("<<.LabelMatchers>>", matchers)
        (value,) = query(prometheus, expr)
        demand[hpa["metadata"]["name"]] = float(value["value"][1])
    # ~20 feeds/s and ~4 effects/s offered (less on a busy machine)
    assert demand["feed-pods"] > demand["effects-pods"] > 0, demand
    for scaled in by_kind(render("overlays/keda"), "ScaledObject"):
        (trigger,) = scaled["spec"]["triggers"]
        (value,) = query(prometheus, trigger["metadata"]["query"])
        assert float(value["value"][1]) > 0, scaled["metadata"]["name"]


@needs_prometheus
def test_a_pool_without_endpoints_raises_its_alert(prometheus, stack):
    plane, _, _ = stack
    put_endpoints(plane.http, "effects", [])

    def pending() -> bool:
        alerts = requests.get(f"{prometheus}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
        return any(
            a["labels"]["alertname"] == "TenfoldPoolWithoutEndpoints"
            and a["labels"].get("pool") == "effects"
            for a in alerts
        )

    wait_until(pending, "TenfoldPoolWithoutEndpoints for the effects pool", 30, every=0.5)
