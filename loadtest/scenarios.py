"""What one request of each scenario is, over HTTP and over gRPC.

- ``feed``: ``POST /v1/feed`` (``tenfold.v1.Feed/GetFeed``). Users come log-uniformly
  from ``users`` ids (a few are very active); most requests open the app (page 1),
  the rest are next pages of an open session and carry the items already shown as
  ``seen`` (taken from the previous answer).
- ``effects``: ``POST /v1/effects/{effect}?size=`` (``tenfold.v1.Effects/Apply``) with a
  real photo (loadtest/photos) at one of several sizes.
- ``mixed``: feed and effects, ``effects_share`` of the requests being effects.
- ``events``: ``POST /v1/events`` (``tenfold.v1.Events/Publish``) with ``batch`` events
  of log-uniform users on uniform items, mostly impressions (the mix of ``EVENT_MIX``).
- ``infer``: a KServe v2 infer of ``model`` with ``batch`` rows (any KServe v2 server:
  a pod, the gateway's pass-through, Triton). Inputs follow the model's metadata:
  variable dims other than the batch become ``image_size``; integer inputs are zeros
  (a valid index for every embedding table), floats uniform in [0, 1). Over HTTP the
  tensors go in the binary extension (as tritonclient sends them).

A client is opened per process with ``open_client(target, spec)``; its ``send()``
returns the status as a string: the HTTP code, or the gRPC code's name (the detail of
the last error answer is kept in ``last_error``).
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field

import aiohttp
import grpc
import numpy as np
import orjson
from tritonclient.http import InferenceServerClient, InferInput, InferRequestedOutput

from inference.protocol.datatypes import kserve_datatype, numpy_dtype
from inference.protocol.kserve_pb import infer_request
from loadtest.photos import uploads
from loadtest.targets import LoadTestError, Target
from protos.kserve.v2 import grpc_service_pb2 as kpb
from protos.tenfold.v1 import gateway_pb2 as pb
from servicekit.kserve_grpc import MODEL_INFER as INFER
from servicekit.kserve_grpc import client_callables

SCENARIOS = ("feed", "effects", "mixed", "infer", "events")
#: the events scenario's types and their shares (what a feed's viewers mostly do: see)
EVENT_MIX = {"impression": 60, "watch": 20, "finish": 10, "like": 7, "share": 2, "skip": 1}
DEVICES, NETWORKS = ("android", "ios", "web"), ("wifi", "5g", "4g")


@dataclass(frozen=True)
class ScenarioSpec:
    """Everything a process needs to build its requests (picklable)."""

    name: str
    model: str = "feed_ranker"
    batch: int = 1
    image_size: int = 256
    effect: str = "cartoon"
    feed_count: int = 20
    users: int = 50_000
    #: items the client sends as the user's recent history (0: none), drawn from
    #: ``items`` (the catalogue size of the served build)
    feed_history: int = 0
    items: int = 100_000
    next_page_share: float = 0.4
    effects_share: float = 0.1
    photo_sizes: tuple[int, ...] = (320, 640, 1280)
    seed: int = 0
    headers: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.name not in SCENARIOS:
            raise LoadTestError(
                f"unknown scenario {self.name!r}: choose one of {', '.join(SCENARIOS)}"
            )
        if self.batch < 1 or self.image_size < 1 or self.feed_count < 1 or self.users < 1:
            raise LoadTestError("batch, image size, feed count and users must be >= 1")
        if self.feed_history < 0 or self.items < 1:
            raise LoadTestError("feed history must be >= 0 and items >= 1")
        for share in (self.next_page_share, self.effects_share):
            if not 0 <= share <= 1:
                raise LoadTestError(f"shares must be within [0, 1], got {share}")


Send = Callable[[], Awaitable[str]]


class FeedSessions:
    """Which user asks next, and what they have already seen (pure, seeded)."""

    def __init__(self, spec: ScenarioSpec, rng: random.Random, open_sessions: int = 256):
        self.spec, self.rng = spec, rng
        self.open: deque[tuple[int, list[int], list[int]]] = deque(maxlen=open_sessions)

    def next(self) -> tuple[int, list[int], list[int], dict]:
        """(user id, seen item ids, history item ids, context) of the next request."""
        rng, spec = self.rng, self.spec
        if self.open and rng.random() < spec.next_page_share:
            user, seen, history = self.open.popleft()
        else:
            user, seen = int(spec.users ** rng.random()) - 1, []
            history = [rng.randrange(spec.items) for _ in range(spec.feed_history)]
        context = {
            "hour": rng.randrange(24),
            "device": rng.choice(DEVICES),
            "network": rng.choice(NETWORKS),
        }
        return user, seen, history, context

    def shown(self, user: int, seen: list[int], history: list[int], items: list[int]) -> None:
        if len(seen) < 4 * self.spec.feed_count:  # a session lasts a few pages
            self.open.append((user, seen + items, history))


@dataclass
class Client:
    """What ``open_client`` yields: ``send()`` and the detail of the last error answer."""

    send: Send
    last_error: str = ""

    def grpc_status(self, exc: grpc.aio.AioRpcError) -> str:
        self.last_error = exc.details() or ""
        return exc.code().name

    def http_status(self, status: int, body: bytes) -> str:
        if status >= 400:
            self.last_error = body[:300].decode("utf-8", "replace")
        return str(status)


async def _feed(spec, target: Target, rng, http, channel, client) -> Send:
    sessions = FeedSessions(spec, rng)
    if http is not None:
        url = f"{target.url}/v1/feed"

        async def send() -> str:
            user, seen, history, ctx = sessions.next()
            body = {"user_id": user, "count": spec.feed_count, "context": ctx, "seen": seen}
            if history:
                body["history"] = history
            async with http.post(url, data=orjson.dumps(body), headers=_JSON) as resp:
                data = await resp.read()
                if resp.status == 200:
                    page = [i["item_id"] for i in orjson.loads(data)["items"]]
                    sessions.shown(user, seen, history, page)
                return client.http_status(resp.status, data)

        return send
    call = channel.unary_unary(
        "/tenfold.v1.Feed/GetFeed",
        request_serializer=pb.FeedRequest.SerializeToString,
        response_deserializer=pb.FeedResponse.FromString,
    )

    async def send_grpc() -> str:
        user, seen, history, ctx = sessions.next()
        request = pb.FeedRequest(
            user_id=str(user),
            count=spec.feed_count,
            seen=seen,
            history=history,
            context=pb.FeedContext(**ctx),
        )
        try:
            answer = await call(request, metadata=spec.headers)
        except grpc.aio.AioRpcError as exc:
            return client.grpc_status(exc)
        sessions.shown(user, seen, history, [i.item_id for i in answer.items])
        return "OK"

    return send_grpc


_JSON = {"content-type": "application/json"}


async def _effects(spec, target: Target, rng, http, channel, client) -> Send:
    photos = [body for _, body in uploads(tuple(spec.photo_sizes))]
    if http is not None:
        url = f"{target.url}/v1/effects/{spec.effect}?size={spec.image_size}"
        headers = {"content-type": "image/jpeg"}

        async def send() -> str:
            async with http.post(url, data=rng.choice(photos), headers=headers) as resp:
                return client.http_status(resp.status, await resp.read())

        return send
    call = channel.unary_unary("/tenfold.v1.Effects/Apply")

    async def send_grpc() -> str:
        request = pb.ApplyEffectRequest(
            effect=spec.effect, image=rng.choice(photos), size=spec.image_size
        )
        try:
            await call(request.SerializeToString(), metadata=spec.headers)
        except grpc.aio.AioRpcError as exc:
            return client.grpc_status(exc)
        return "OK"

    return send_grpc


async def _mixed(spec, target, rng, http, channel, client) -> Send:
    feed = await _feed(spec, target, rng, http, channel, client)
    effects = await _effects(spec, target, rng, http, channel, client)

    async def send() -> str:
        return await (effects() if rng.random() < spec.effects_share else feed())

    return send


def infer_inputs(metadata: list[dict], spec: ScenarioSpec, rng) -> dict[str, np.ndarray]:
    """Arrays for the model's inputs (``[{"name","datatype","shape"}]``), batch first."""
    arrays = {}
    for entry in metadata:
        shape = [int(d) for d in entry["shape"]]
        shape = [
            spec.batch if i == 0 and d < 0 else (spec.image_size if d < 0 else d)
            for i, d in enumerate(shape)
        ]
        if entry["datatype"] == "BYTES":
            raise LoadTestError(
                f"input {entry['name']!r} is BYTES: the infer scenario "
                "generates numeric tensors only"
            )
        dtype = numpy_dtype(entry["datatype"])
        if np.issubdtype(dtype, np.floating):
            arrays[entry["name"]] = rng.random(shape).astype(dtype)
        else:
            arrays[entry["name"]] = np.zeros(shape, dtype)
    return arrays


async def _infer(spec, target: Target, rng, http, channel, client) -> Send:
    nprng = np.random.default_rng(spec.seed)
    if http is not None:
        base = f"{target.url}/v2/models/{spec.model}"
        async with http.get(base) as resp:
            if resp.status != 200:
                raise LoadTestError(
                    f"model {spec.model!r} at {target.url}: metadata answered {resp.status}: "
                    f"{(await resp.text())[:200]}"
                )
            meta = orjson.loads(await resp.read())
        arrays = infer_inputs(meta["inputs"], spec, nprng)
        inputs = []
        for name, array in arrays.items():
            tensor = InferInput(name, list(array.shape), kserve_datatype(array.dtype))
            tensor.set_data_from_numpy(array, binary_data=True)
            inputs.append(tensor)
        outputs = [InferRequestedOutput(o["name"], binary_data=True) for o in meta["outputs"]]
        body, json_size = InferenceServerClient.generate_request_body(inputs, outputs)
        headers = {"content-type": "application/octet-stream"}
        if json_size is not None:
            headers["inference-header-content-length"] = str(json_size)

        async def send() -> str:
            async with http.post(f"{base}/infer", data=body, headers=headers) as resp:
                return client.http_status(resp.status, await resp.read())

        return send
    calls = client_callables(channel)
    try:
        meta = await calls["ModelMetadata"](kpb.ModelMetadataRequest(name=spec.model))
    except grpc.aio.AioRpcError as exc:
        raise LoadTestError(
            f"model {spec.model!r} at {target.url}: metadata answered "
            f"{exc.code().name}: {exc.details()}"
        ) from None
    entries = [
        {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in meta.inputs
    ]
    raw = infer_request(spec.model, infer_inputs(entries, spec, nprng)).SerializeToString()
    call = channel.unary_unary(INFER)

    async def send_grpc() -> str:
        try:
            await call(raw, metadata=spec.headers)
        except grpc.aio.AioRpcError as exc:
            return client.grpc_status(exc)
        return "OK"

    return send_grpc


def event_batch(spec: ScenarioSpec, rng: random.Random) -> list[dict]:
    """``spec.batch`` events, each with its user, item and type drawn from the mix."""
    kinds, weights = list(EVENT_MIX), list(EVENT_MIX.values())
    out = []
    for kind in rng.choices(kinds, weights, k=spec.batch):
        event = {
            "user_id": int(spec.users ** rng.random()) - 1,
            "item_id": rng.randrange(spec.items),
        }
        event["type"] = kind
        if kind == "watch":
            event["watch_ms"] = rng.randrange(1000, 30_000)
        out.append(event)
    return out


async def _events(spec, target: Target, rng, http, channel, client) -> Send:
    if http is not None:
        url = f"{target.url}/v1/events"

        async def send() -> str:
            body = orjson.dumps({"events": event_batch(spec, rng)})
            async with http.post(url, data=body, headers=_JSON) as resp:
                data = await resp.read()
                return client.http_status(resp.status, data)

        return send
    call = channel.unary_unary("/tenfold.v1.Events/Publish")

    async def send_grpc() -> str:
        events = [pb.Event(**{**e, "user_id": str(e["user_id"])}) for e in event_batch(spec, rng)]
        try:
            await call(
                pb.PublishEventsRequest(events=events).SerializeToString(), metadata=spec.headers
            )
        except grpc.aio.AioRpcError as exc:
            return client.grpc_status(exc)
        return "OK"

    return send_grpc


async def _unset() -> str:
    raise RuntimeError("client not built")


_BUILDERS = {
    "feed": _feed,
    "effects": _effects,
    "mixed": _mixed,
    "infer": _infer,
    "events": _events,
}


@asynccontextmanager
async def open_client(target: Target, spec: ScenarioSpec, *, worker: int = 0, limit: int = 0):
    """Yield a ``Client`` for ``spec`` against ``target`` (one connection pool per process)."""
    rng = random.Random(f"{spec.seed}:{worker}")
    async with AsyncExitStack() as stack:
        http = channel = None
        if target.scheme == "http":
            http = await stack.enter_async_context(
                aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=limit),
                    headers=dict(spec.headers),
                    timeout=aiohttp.ClientTimeout(total=None),
                )
            )
        else:
            channel = grpc.aio.insecure_channel(
                target.address,
                options=[
                    ("grpc.max_receive_message_length", 64 << 20),
                    ("grpc.max_send_message_length", 64 << 20),
                ],
            )
            stack.push_async_callback(channel.close)
        client = Client(_unset)
        client.send = await _BUILDERS[spec.name](spec, target, rng, http, channel, client)
        yield client
