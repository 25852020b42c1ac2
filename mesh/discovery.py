"""The xDS server: Envoy's Aggregated Discovery Service (state of the world) on grpc.aio.

``AdsStream`` is the protocol of one stream without I/O: given a request or a new
snapshot it says which responses to send, and it tells ACKs from NACKs by nonce.
``DiscoveryServer`` runs one per connected node over the snapshot cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from mesh.cache import SnapshotCache
from mesh.metrics import MeshMetrics, short_type
from mesh.snapshot import CLUSTER, LISTENER, PUSH_ORDER, Snapshot

log = logging.getLogger("tenfold.mesh")
#: types whose empty resource list means "all of them"
WILDCARD = (LISTENER, CLUSTER)


@dataclass
class TypeState:
    """What one stream asked for and was sent, for one resource type."""

    names: frozenset[str] = frozenset()
    sent_version: str | None = None
    sent_names: frozenset[str] | None = None
    sent_nonce: str = ""
    acked_version: str = ""
    #: the version a NACK refused (not sent again until the snapshot changes)
    nacked_version: str | None = None
    #: when the stream first asked for this type (push latency starts no earlier)
    subscribed_at: float = 0.0


@dataclass(eq=False)
class AdsStream:
    metrics: MeshMetrics
    clock: Callable[[], float]
    published_at: Callable[[str], float | None]
    node: str = ""
    snapshot: Snapshot | None = None
    types: dict[str, TypeState] = field(default_factory=dict)
    _nonce: int = 0

    def on_request(self, request: discovery_pb2.DiscoveryRequest) -> list:
        if request.node.id and not self.node:
            self.node = request.node.id
        type_url = request.type_url
        if type_url not in PUSH_ORDER:
            log.warning("node %s asked for an unknown type %s", self.node, type_url)
            return []
        state = self.types.get(type_url)
        if state is None:
            state = self.types[type_url] = TypeState(subscribed_at=self.clock())
        if request.response_nonce:
            if request.response_nonce != state.sent_nonce:
                return []  # an answer to a response already superseded
            if request.HasField("error_detail"):
                state.nacked_version = state.sent_version
                self.metrics.nacks.labels(short_type(type_url)).inc()
                log.error(
                    "node %s rejected %s version %s: %s",
                    self.node,
                    short_type(type_url),
                    state.sent_version,
                    request.error_detail.message,
                )
            else:
                state.acked_version = request.version_info
                self.metrics.acks.labels(short_type(type_url)).inc()
                published = self.published_at(self.node)
                if published is not None and self.snapshot is not None:
                    if request.version_info == self.snapshot.versions[type_url]:
                        # from publication, or from the first ask of a node that came later
                        start = max(published, state.subscribed_at)
                        elapsed = max(0.0, self.clock() - start)
                        self.metrics.push.labels(short_type(type_url)).observe(elapsed)
        names = frozenset(request.resource_names) - {"*"}
        state.names = names
        response = self._response(type_url, state)
        return [response] if response is not None else []

    def on_snapshot(self, snapshot: Snapshot) -> list:
        self.snapshot = snapshot
        out = []
        for type_url in PUSH_ORDER:
            state = self.types.get(type_url)
            if state is not None:
                response = self._response(type_url, state)
                if response is not None:
                    out.append(response)
        return out

    def _response(self, type_url: str, state: TypeState):
        snapshot = self.snapshot
        if snapshot is None:
            return None
        version = snapshot.versions[type_url]
        if version == state.nacked_version and state.names == state.sent_names:
            return None  # refused once; wait for a new snapshot
        if version == state.sent_version and state.names == state.sent_names:
            return None
        available = snapshot.of(type_url)
        if type_url in WILDCARD and not state.names:
            chosen = list(available.values())
        else:
            chosen = [available[n] for n in sorted(state.names) if n in available]
        self._nonce += 1
        state.sent_version, state.sent_names = version, state.names
        state.sent_nonce = str(self._nonce)
        self.metrics.responses.labels(short_type(type_url)).inc()
        return discovery_pb2.DiscoveryResponse(
            version_info=version, resources=chosen, type_url=type_url, nonce=state.sent_nonce
        )


class DiscoveryServer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    """ADS over the cache: every stream gets the snapshot of its node and each newer one."""

    def __init__(
        self, cache: SnapshotCache, metrics: MeshMetrics, clock: Callable[[], float]
    ) -> None:
        self.cache = cache
        self.metrics = metrics
        self.clock = clock
        self._streams: set[AdsStream] = set()

    def _count_streams(self) -> None:
        self.metrics.connected.set(len(self._streams))
        self.metrics.nodes.set(len({s.node for s in self._streams if s.node}))

    def nodes(self) -> dict[str, dict[str, dict]]:
        """Per connected node and type: the version it ACKed last, and one it refused."""
        out: dict[str, dict[str, dict]] = {}
        for stream in self._streams:
            if stream.node:
                types = out.setdefault(stream.node, {})
                for type_url, state in stream.types.items():
                    types[short_type(type_url)] = {
                        "acked": state.acked_version,
                        "nacked": state.nacked_version,
                    }
        return out

    def add_to(self, server) -> None:
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(self, server)

    async def StreamAggregatedResources(
        self, request_iterator, context
    ) -> AsyncIterator[discovery_pb2.DiscoveryResponse]:
        stream = AdsStream(self.metrics, self.clock, self.cache.published_at)
        self._streams.add(stream)
        self._count_streams()
        events: asyncio.Queue = asyncio.Queue()
        reader = asyncio.create_task(_read(request_iterator, events))
        watcher: asyncio.Task | None = None
        try:
            while True:
                if watcher is None and stream.node:
                    self._count_streams()
                    watcher = asyncio.create_task(self._watch(stream, events))
                kind, item = await events.get()
                if kind == "end":
                    return
                if kind == "request":
                    if stream.snapshot is None:
                        stream.snapshot = self.cache.get(item.node.id or stream.node)
                    responses = stream.on_request(item)
                else:
                    responses = stream.on_snapshot(item)
                for response in responses:
                    yield response
        finally:
            self._streams.discard(stream)
            self._count_streams()
            reader.cancel()
            if watcher is not None:
                watcher.cancel()

    async def _watch(self, stream: AdsStream, events: asyncio.Queue) -> None:
        current = stream.snapshot
        while True:
            current = await self.cache.wait_change(stream.node, current)
            await events.put(("snapshot", current))

    async def DeltaAggregatedResources(self, request_iterator, context):
        import grpc

        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "use the state-of-the-world ADS")


async def _read(request_iterator, events: asyncio.Queue) -> None:
    try:
        async for request in request_iterator:
            await events.put(("request", request))
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # the stream broke: end it
        log.info("ADS stream ended: %s", exc)
    finally:
        with contextlib.suppress(asyncio.QueueFull):
            events.put_nowait(("end", None))
