"""Endpoint sets from Kubernetes EndpointSlices. No cluster runs here: the events are
written in the API's JSON (discovery.k8s.io/v1 list and watch lines, in
tests/mesh/data), applied by the pure tracker, and served by a stand-in API server on
loopback to the real ``kubernetes_asyncio`` client that ``watch_slices`` uses."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from aiohttp import web
from kubernetes_asyncio import client

from mesh.cache import SnapshotCache
from mesh.config import Endpoint, MeshConfig, PoolConfig
from mesh.kubernetes import SliceTracker, watch_slices
from mesh.store import EndpointStore

DATA = Path(__file__).parent / "data"
LISTING = json.loads((DATA / "endpointslice_list.json").read_text())
EVENTS = [json.loads(line) for line in (DATA / "endpointslice_watch.jsonl").open()]
SERVICES = {"feed-pods": "feed", "effects-pods": "effects"}


def pod(ip: str) -> Endpoint:
    return Endpoint(http=f"{ip}:8000", grpc=f"{ip}:8001")


def addresses(endpoints) -> list[str]:
    return [e.grpc.rpartition(":")[0] for e in endpoints]


def test_the_tracker_follows_ready_endpoints_of_each_pools_service():
    tracker = SliceTracker(SERVICES)
    assert tracker.reset(LISTING["items"]) == {"feed", "effects"}
    assert tracker.endpoints("feed") == (pod("10.1.0.11"),)  # feed-1 is not ready
    assert tracker.endpoints("effects") == (pod("10.1.1.21"),)
    changed = [tracker.apply(event) for event in EVENTS]
    assert changed == [
        {"feed"},  # feed-1 became ready
        {"feed"},  # a second slice; "ready" unset counts as ready
        set(),  # a bookmark
        {"effects"},  # fx-0 terminating (not ready), fx-1 ready
        {"feed"},  # the first slice deleted
        set(),  # an IPv6 slice: skipped
    ]
    assert addresses(tracker.endpoints("feed")) == ["10.1.0.13"]
    assert addresses(tracker.endpoints("effects")) == ["10.1.1.22"]
    assert tracker.endpoints("nobody") == ()


def test_a_slice_without_the_named_ports_gives_no_endpoints():
    item = json.loads(json.dumps(LISTING["items"][0]))
    item["ports"] = [{"name": "web", "port": 80, "protocol": "TCP"}]
    tracker = SliceTracker(SERVICES)
    tracker.apply({"type": "ADDED", "object": item})
    assert tracker.endpoints("feed") == ()


class FakeApi:
    """Answers the EndpointSlice list, then a watch stream of the recorded events."""

    def __init__(self) -> None:
        self.selectors: list[str] = []
        self.watch_versions: list[str] = []
        self.done = asyncio.Event()

    async def slices(self, request: web.Request) -> web.StreamResponse:
        self.selectors.append(request.query.get("labelSelector", ""))
        if request.query.get("watch") not in ("true", "True", "1"):
            return web.json_response(LISTING)
        self.watch_versions.append(request.query.get("resourceVersion", ""))
        response = web.StreamResponse(headers={"content-type": "application/json"})
        await response.prepare(request)
        for event in EVENTS:
            await response.write(json.dumps(event).encode() + b"\n")
        await self.done.wait()  # the watch stays open until the test ends
        return response


@pytest.mark.integration
async def test_watch_slices_lists_then_watches_with_the_real_client():
    api = FakeApi()
    app = web.Application()
    app.router.add_get("/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices", api.slices)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    pools = {"gateway": PoolConfig(), "feed": PoolConfig(), "effects": PoolConfig()}
    store = EndpointStore(MeshConfig(pools=pools), SnapshotCache(lambda: 0.0))
    configuration = client.Configuration(host=f"http://127.0.0.1:{port}")
    task = asyncio.create_task(
        watch_slices(store, "tenfold", SliceTracker(SERVICES), configuration)
    )
    try:
        for _ in range(200):
            if addresses(store.endpoints()["effects"]) == ["10.1.1.22"] and addresses(
                store.endpoints()["feed"]
            ) == ["10.1.0.13"]:
                break
            await asyncio.sleep(0.025)
        else:
            raise AssertionError(f"the store did not follow the watch: {store.endpoints()}")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        api.done.set()
        await runner.cleanup()
    assert api.watch_versions == ["1000"]  # the watch resumed from the list's version
    assert api.selectors[0] == "kubernetes.io/service-name in (effects-pods,feed-pods)"
