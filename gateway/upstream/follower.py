"""The gateway's pools follow the mesh: a small xDS client that subscribes (ADS, state
of the world) to the endpoint assignments of each pool's gRPC cluster
(``<pool>.grpc``) and feeds every change to ``PoolRegistry.update``.

The control plane puts each pod's HTTP and gRPC addresses in the endpoint's metadata
(``tenfold: {http, grpc}``), so the HTTP pass-through follows too. If the control
plane goes away the pools keep their last endpoints and the client reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable

import grpc
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from gateway.settings import EndpointSettings

log = logging.getLogger("tenfold.gateway")
ENDPOINT_TYPE = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
METADATA = "tenfold"
RECONNECT_S = (0.1, 0.2, 0.5, 1.0, 2.0)


def cluster_of(pool: str) -> str:
    return f"{pool}.grpc"


def endpoints_of(assignment: endpoint_pb2.ClusterLoadAssignment) -> list[EndpointSettings]:
    out = []
    for group in assignment.endpoints:
        for lb in group.lb_endpoints:
            socket = lb.endpoint.address.socket_address
            grpc_address = f"{socket.address}:{socket.port_value}"
            meta = lb.metadata.filter_metadata.get(METADATA)
            http = meta.fields["http"].string_value if meta and "http" in meta.fields else None
            out.append(EndpointSettings(grpc=grpc_address, http=http))
    return out


class EndpointFollower:
    def __init__(
        self,
        target: str,
        pools: Iterable[str],
        update: Callable[[str, list[EndpointSettings]], None],
        node_id: str = "tenfold-gateway",
    ) -> None:
        self.target = target
        self.clusters = {cluster_of(p): p for p in pools}
        self.update = update
        self.node_id = node_id
        self.first = asyncio.Event()
        self.updates = 0
        self._task: asyncio.Task | None = None

    async def start(self, wait_s: float) -> bool:
        """Start following; wait up to ``wait_s`` for the first endpoint sets. True if
        they came."""
        self._task = asyncio.create_task(self._run())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.first.wait(), wait_s)
        return self.first.is_set()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        attempt = 0
        while True:
            try:
                async with grpc.aio.insecure_channel(self.target) as channel:
                    await self._follow(ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the control plane is away: keep the last endpoints
                log.warning("mesh control plane %s: %s; retrying", self.target, exc)
            await asyncio.sleep(RECONNECT_S[min(attempt, len(RECONNECT_S) - 1)])
            attempt += 1

    async def _follow(self, stub) -> None:
        requests: asyncio.Queue = asyncio.Queue()
        first = discovery_pb2.DiscoveryRequest(
            type_url=ENDPOINT_TYPE, resource_names=sorted(self.clusters)
        )
        first.node.id = self.node_id
        await requests.put(first)

        async def outgoing():
            while True:
                yield await requests.get()

        async for response in stub.StreamAggregatedResources(outgoing()):
            ack = discovery_pb2.DiscoveryRequest(
                type_url=ENDPOINT_TYPE,
                resource_names=sorted(self.clusters),
                response_nonce=response.nonce,
                version_info=response.version_info,
            )
            try:
                self._apply(response)
            except Exception as exc:  # refuse it (NACK), keep the last endpoints
                ack.version_info = ""
                ack.error_detail.code = grpc.StatusCode.INVALID_ARGUMENT.value[0]
                ack.error_detail.message = f"gateway could not apply endpoints: {exc}"
                log.error("mesh endpoints refused: %s", exc)
            await requests.put(ack)

    def _apply(self, response: discovery_pb2.DiscoveryResponse) -> None:
        changes = []
        for packed in response.resources:
            assignment = endpoint_pb2.ClusterLoadAssignment()
            packed.Unpack(assignment)
            pool = self.clusters.get(assignment.cluster_name)
            if pool is not None:
                changes.append((pool, endpoints_of(assignment)))
        for pool, endpoints in changes:
            self.update(pool, endpoints)
        self.updates += 1
        self.first.set()
        log.info(
            "mesh endpoints %s: %s",
            response.version_info,
            ", ".join(f"{p} ({len(e)})" for p, e in changes) or "none",
        )
