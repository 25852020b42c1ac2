"""Endpoint sets from Kubernetes: the EndpointSlices of each pool's Service.

``SliceTracker`` is pure: it applies watch events (the API's JSON, ``{"type",
"object"}``) and says which pools changed; a pool's endpoints are the ready endpoints of
all its Service's slices, with the ports named ``http`` and ``grpc``. ``watch_slices``
drives it from the API server with ``kubernetes_asyncio`` (the ``k8s`` extra) and
writes each change into the endpoint store, the one source of truth Envoy and the
gateways follow. IPv4 slices only (an IPv6 slice is skipped with a warning).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from pydantic import ValidationError

from mesh.config import Endpoint
from mesh.store import EndpointStore

log = logging.getLogger("tenfold.mesh")
SERVICE_LABEL = "kubernetes.io/service-name"


@dataclass
class SliceTracker:
    #: Service name -> pool
    services: Mapping[str, str]
    http_port: str = "http"
    grpc_port: str = "grpc"
    #: slice name -> (pool, its ready endpoints)
    _slices: dict[str, tuple[str, tuple[Endpoint, ...]]] = field(default_factory=dict)

    def apply(self, event: Mapping) -> set[str]:
        """Apply one watch event; the pools whose endpoint sets changed."""
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "BOOKMARK":
            return set()
        name = obj.get("metadata", {}).get("name", "")
        pool = self.services.get(obj.get("metadata", {}).get("labels", {}).get(SERVICE_LABEL))
        if pool is None or not name:
            return set()
        before = self.endpoints(pool)
        if kind == "DELETED":
            self._slices.pop(name, None)
        elif kind in ("ADDED", "MODIFIED"):
            self._slices[name] = (pool, self._ready(obj))
        else:
            log.warning("EndpointSlice watch: unknown event type %r", kind)
            return set()
        return {pool} if self.endpoints(pool) != before else set()

    def reset(self, slices: list[Mapping]) -> set[str]:
        """Replace everything with a fresh list (after a re-list); the pools changed."""
        before = {pool: self.endpoints(pool) for pool in self.services.values()}
        self._slices.clear()
        for obj in slices:
            self.apply({"type": "ADDED", "object": obj})
        return {pool for pool, old in before.items() if self.endpoints(pool) != old}

    def endpoints(self, pool: str) -> tuple[Endpoint, ...]:
        members: dict[Endpoint, None] = {}
        for name in sorted(self._slices):
            owner, ready = self._slices[name]
            if owner == pool:
                members.update(dict.fromkeys(ready))
        return tuple(members)

    def _ready(self, obj: Mapping) -> tuple[Endpoint, ...]:
        if obj.get("addressType", "IPv4") != "IPv4":
            log.warning("EndpointSlice %s: %s addresses are not supported", obj, obj["addressType"])
            return ()
        ports = {p.get("name"): p.get("port") for p in obj.get("ports") or []}
        http, grpc = ports.get(self.http_port), ports.get(self.grpc_port)
        if not http or not grpc:
            return ()
        out = []
        for endpoint in obj.get("endpoints") or []:
            conditions = endpoint.get("conditions") or {}
            # "ready" unset means unknown, which Kubernetes says to read as ready
            if conditions.get("ready") is False:
                continue
            for address in endpoint.get("addresses") or []:
                try:
                    out.append(Endpoint(http=f"{address}:{http}", grpc=f"{address}:{grpc}"))
                except ValidationError:
                    log.warning("EndpointSlice: bad address %r", address)
        return tuple(out)


def publish(tracker: SliceTracker, store: EndpointStore, pools: set[str]) -> None:
    for pool in sorted(pools):
        store.set_endpoints(pool, tracker.endpoints(pool))


async def watch_slices(
    store: EndpointStore, namespace: str, tracker: SliceTracker, configuration=None
) -> None:
    """List, then watch, the slices of the tracked Services in ``namespace`` until
    cancelled; re-list after the watch fails (the store keeps the last sets meanwhile).
    ``configuration``: a ``kubernetes_asyncio`` Configuration (default: in-cluster,
    else the kubeconfig)."""
    from kubernetes_asyncio import client, config, watch

    if configuration is None:
        configuration = client.Configuration()
        try:
            config.load_incluster_config(client_configuration=configuration)
        except config.ConfigException:
            await config.load_kube_config(client_configuration=configuration)
    selector = f"{SERVICE_LABEL} in ({','.join(sorted(tracker.services))})"
    backoff = 0.5
    while True:
        try:
            # a fresh client per round: the watch closes its client when it ends
            api = client.DiscoveryV1Api(client.ApiClient(configuration))
            listed = await api.list_namespaced_endpoint_slice(
                namespace, label_selector=selector, _preload_content=False
            )
            doc = await listed.json()
            listed.release()
            publish(tracker, store, tracker.reset(doc.get("items", [])))
            backoff = 0.5
            stream = watch.Watch().stream(
                api.list_namespaced_endpoint_slice,
                namespace,
                label_selector=selector,
                resource_version=doc.get("metadata", {}).get("resourceVersion"),
                allow_watch_bookmarks=True,
            )
            async with stream as events:
                async for event in events:
                    raw = {"type": event["type"], "object": event["raw_object"]}
                    publish(tracker, store, tracker.apply(raw))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the API is away or refused: keep the last sets
            log.warning("EndpointSlice watch in %s: %s; retrying", namespace, exc)
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, 10.0)
