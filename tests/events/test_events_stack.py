"""Events and user state end to end: a real Redis, real gateways over a real pod of the
quick build, real stream processors (child processes)."""

from __future__ import annotations

import signal
import time

import grpc
import pytest
import redis
import redis.asyncio as aioredis
import requests
import schemathesis

from gateway.events.keys import Keys
from gateway.events.processor import Processor, ProcessorMetrics, ProcessorOptions
from gateway.events.settings import StateSettings
from loadtest.runner import RunPlan, run
from loadtest.scenarios import ScenarioSpec
from loadtest.targets import Target
from protos.tenfold.v1 import gateway_pb2 as pb
from protos.tenfold.v1 import gateway_pb2_grpc as pb_grpc
from servicekit.redis import redis_url, start_redis
from tests.gateway.conftest import metric_total, scrape, wait_until
from tests.gateway.test_gateway_promises import (
    EVENT_STORE_METRICS,
    documented_gateway_metrics,
    exposed,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]
CONTEXT = {"hour": 20, "device": "ios", "network": "wifi"}


def post_events(gateway, events: list[dict]) -> requests.Response:
    return requests.post(f"http://{gateway.http}/v1/events", json={"events": events}, timeout=10)


def feed(gateway, user, **extra) -> dict:
    body = {"user_id": user, "count": 20, "context": CONTEXT, **extra}
    answer = requests.post(f"http://{gateway.http}/v1/feed", json=body, timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()


def items(page: dict) -> list[int]:
    return [i["item_id"] for i in page["items"]]


def processor_metric(child, name: str, **labels) -> float:
    return metric_total(scrape(f"127.0.0.1:{child.metrics_port}"), name, **labels)


@pytest.fixture(scope="module")
def gateway(make_events_gateway, url):
    return make_events_gateway(url)


@pytest.fixture(scope="module")
def processor(processors, url):
    return processors(url, "main")


def test_posted_events_shape_the_next_feed(gateway, processor, store):
    user = "17"
    before = feed(gateway, user)
    assert (before["history_source"], before["state"]) == ("none", "ok")
    shown, finished = items(before), [101, 205, 309]
    events = [{"user_id": user, "item_id": i, "type": "impression"} for i in shown]
    events += [{"user_id": user, "item_id": i, "type": "finish"} for i in finished]
    answer = post_events(gateway, events)
    assert answer.status_code == 202, answer.text
    doc = answer.json()
    assert doc["accepted"] == len(events) == len(doc["ids"])
    # stored before the answer: the log holds exactly these ids
    logged = [i.decode() for i, _ in store.xrange(Keys().stream, doc["ids"][0], doc["ids"][-1])]
    assert logged == doc["ids"]

    after = wait_until(
        lambda: (p := feed(gateway, user))["history_source"] == "state" and p,
        "the history read from state",
        timeout=15,
    )
    assert not set(items(after)) & set(shown), "items just shown came back"
    # the same page as a client sending that history and that seen list itself
    sent = feed(gateway, user, history=finished, seen=shown)
    assert sent["history_source"] == "request"
    assert items(after) == items(sent)
    assert len(items(after)) == 20
    # a client sending only its history: the stored seen items still apply (the
    # gateway reads them while recall runs, docs/events.md)
    own = feed(gateway, user, history=finished)
    assert (own["history_source"], own["state"]) == ("request", "ok")
    assert items(own) == items(after)


def test_a_burst_of_likes_puts_a_new_item_in_the_cold_start_pool(gateway, processor):
    newcomer = "new-user-1"
    page = items(feed(gateway, newcomer))
    item = next(i for i in range(5000, 6000) if i not in page)
    likes = [{"user_id": f"fan-{n}", "item_id": item, "type": "like"} for n in range(3)]
    started = time.monotonic()
    assert post_events(gateway, likes).status_code == 202  # score 6 >= 5: trending

    def shown_as_trending():
        return [i for i in feed(gateway, newcomer)["items"] if i["item_id"] == item]

    (entry,) = wait_until(shown_as_trending, "the liked item in a new user's feed", timeout=15)
    took = time.monotonic() - started
    assert entry["source"] == "trending"
    print(f"liked item in the cold-start pool after {took:.2f} s")
    assert processor_metric(processor, "tenfold_events_trending_items") >= 1


def test_bad_events_get_400_naming_the_field(gateway):
    good = {"user_id": 1, "item_id": 1, "type": "like"}
    cases = [
        ([{**good, "type": "dislike"}], "events.0.type"),
        ([good, {**good, "item_id": -5}], "events.1.item_id"),
        ([{**good, "item_id": 6000}], "events.0.item_id: unknown item 6000"),
        ([{**good, "ts": time.time() + 3600}], "events.0.ts"),
        ([{**good, "watch_ms": -1}], "events.0.watch_ms"),
        ([good] * 501, "at most 500"),
        ([], "events"),
    ]
    for events, named in cases:
        answer = post_events(gateway, events)
        assert answer.status_code == 400, (named, answer.text)
        assert named in answer.json()["error"]


def test_events_over_grpc(gateway, store):
    with grpc.insecure_channel(gateway.grpc) as channel:
        stub = pb_grpc.EventsStub(channel)
        good = pb.Event(user_id="grpc-user", item_id=3, type="watch", watch_ms=12_000)
        answer = stub.Publish(pb.PublishEventsRequest(events=[good, good]))
        assert answer.accepted == 2 and len(answer.ids) == 2
        fields = store.xrange(Keys().stream, answer.ids[0], answer.ids[0])[0][1]
        assert fields[b"w"] == b"12000" and fields[b"u"] == b"grpc-user"
        with pytest.raises(grpc.RpcError) as bad:
            stub.Publish(pb.PublishEventsRequest(events=[pb.Event(user_id="u", type="x")]))
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "type" in bad.value.details()


async def test_a_redelivered_batch_is_not_applied_twice(url):
    """The processor's own step, twice over the same entries (what a crash between the
    state write and the acknowledgement leads to)."""
    client = aioredis.Redis.from_url(url)
    keys = Keys("redelivery:")
    metrics = ProcessorMetrics()
    processor = Processor(
        client, keys, StateSettings(), ProcessorOptions("once", batch=100), metrics
    )
    await processor.ensure_group()
    now = int(time.time() * 1000)
    for n in range(10):
        fields = {"t": "finish", "u": f"u{n % 3}", "i": 40 + n % 4, "ts": now}
        await client.xadd(keys.stream, fields)
    entries = await client.xrange(keys.stream)
    assert await processor.handle(entries) == 10
    assert await processor.handle(entries) == 10  # delivered again
    bucket = now // 1000 // StateSettings().bucket_s
    counts = {k.decode(): int(v) for k, v in (await client.hgetall(keys.counts(bucket))).items()}
    assert counts == {"40:finish": 3, "41:finish": 3, "42:finish": 2, "43:finish": 2}
    assert metrics.duplicates._value.get() == 10
    assert await client.lrange(keys.history("u0"), 0, -1) == [b"40", b"43", b"42", b"41"]
    # state expires: every user key carries the TTL setting
    for key in (keys.history("u0"), keys.seen("u0")):
        assert 0 < await client.ttl(key) <= StateSettings().ttl_s
    await client.aclose()


# --- a second event store (db 1): processors stopped, killed and restarted ----------


@pytest.fixture(scope="module")
def url1(redis_server) -> str:
    return redis_url(redis_server, db=1)


@pytest.fixture(scope="module")
def gateway1(make_events_gateway, url1):
    return make_events_gateway(url1)


def counted(client: redis.Redis, items: range) -> dict[str, int]:
    """The per-item counters the processors wrote for ``items``, summed over buckets."""
    total: dict[str, int] = {}
    for key in client.scan_iter(match=f"{Keys().prefix}ic:*"):
        for field, value in client.hgetall(key).items():
            name = field.decode()
            if int(name.split(":")[0]) in items:
                total[name] = total.get(name, 0) + int(value)
    return total


@pytest.mark.parametrize(
    ("restart_as", "items"),
    [
        # the same name: it takes back its own pending entries first
        (("crashy", "--batch", "64"), range(1000, 1013)),
        # another name: it claims the dead one's entries once idle 200 ms
        (("rescuer", "--batch", "64", "--claim-idle-ms", "200"), range(2000, 2013)),
    ],
    ids=["same-consumer", "other-consumer"],
)
def test_a_processor_killed_mid_stream_loses_nothing_and_applies_nothing_twice(
    gateway1, processors, url1, restart_as, items
):
    sent: dict[str, int] = {}
    for batch in range(40):
        events = [
            {"user_id": f"k{n % 7}", "item_id": items[(batch * 50 + n) % 13], "type": "impression"}
            for n in range(50)
        ]
        assert post_events(gateway1, events).status_code == 202
        for e in events:
            key = f"{e['item_id']}:impression"
            sent[key] = sent.get(key, 0) + 1
    client = redis.Redis.from_url(url1)
    first = processors(url1, "crashy", "--batch", "2")
    wait_until(
        lambda: sum(counted(client, items).values()) >= 200, "200 events applied", timeout=30
    )
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(10)
    applied = sum(counted(client, items).values())
    assert applied < 2000, "the processor finished before it was killed: not mid-stream"

    again = processors(url1, *restart_as)
    wait_until(lambda: counted(client, items) == sent, "every event applied", timeout=60)
    wait_until(
        lambda: (
            processor_metric(again, "tenfold_events_backlog_seconds") == 0
            and not client.xpending(Keys().stream, "processors")["pending"]
        ),
        "nothing pending",
        timeout=30,
    )
    assert counted(client, items) == sent  # and not more
    client.close()
    again.stop()  # the next test wants the log to itself


def test_erasing_a_user_removes_the_state_and_older_events_stay_unapplied(
    gateway1, processors, url1
):
    user = "23"
    worker = processors(url1, "eraser")
    liked = [{"user_id": user, "item_id": i, "type": "like"} for i in (7, 8)]
    assert post_events(gateway1, liked).status_code == 202
    wait_until(lambda: feed(gateway1, user)["history_source"] == "state", "state", timeout=15)

    worker.stop()  # events logged now wait in the log
    late = [{"user_id": user, "item_id": i, "type": "finish"} for i in (30, 31, 32)]
    assert post_events(gateway1, late).status_code == 202
    answer = requests.delete(f"http://{gateway1.http}/v1/users/{user}/state", timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.json()["user_id"] == user and "-" in answer.json()["erased"]
    assert feed(gateway1, user)["history_source"] == "none"

    worker = processors(url1, "eraser")
    wait_until(
        lambda: processor_metric(worker, "tenfold_events_skipped_erased_total") == 3,
        "the 3 older events skipped",
        timeout=15,
    )
    assert feed(gateway1, user)["history_source"] == "none"
    # what the user does after the erasure counts again
    assert post_events(gateway1, liked[:1]).status_code == 202
    wait_until(lambda: feed(gateway1, user)["history_source"] == "state", "new state", timeout=15)


# --- Redis away -------------------------------------------------------------------------


def test_without_redis_the_feed_is_stateless_and_events_are_refused_then_come_back(
    make_events_gateway, tmp_path
):
    server = start_redis(tmp_path / "data")
    port = server.ports["redis"]
    gw = make_events_gateway(redis_url(server), state_timeout_ms=50)
    event = [{"user_id": "u", "item_id": 5, "type": "share"}]
    assert post_events(gw, event).status_code == 202
    server.stop()  # SIGTERM: Redis writes its append-only file and exits

    page = feed(gw, "42")
    assert page["state"] == "degraded" and len(page["items"]) == 20
    refused = post_events(gw, event)
    assert refused.status_code == 503 and "event store" in refused.json()["error"]
    assert refused.headers["Retry-After"] == "1"
    text = scrape(gw.http)
    assert metric_total(text, "tenfold_gateway_state_reads_total", outcome="degraded") >= 1

    server = start_redis(tmp_path / "data", port=port)  # the same data, the same port
    try:
        client = redis.Redis(port=port)
        assert client.xlen(Keys().stream) == 1  # the event accepted before survived
        accepted = wait_until(
            lambda: post_events(gw, event).status_code == 202, "events accepted again"
        )
        assert accepted
        assert feed(gw, "42")["state"] == "ok"
        client.close()
    finally:
        server.stop()


def test_event_answers_match_the_openapi_document(gateway):
    spec = requests.get(f"http://{gateway.http}/openapi.json", timeout=5).json()
    schema = schemathesis.openapi.from_dict(spec)
    good = {"events": [{"user_id": "doc", "item_id": 1, "type": "skip"}]}
    for method, path, params, answer, status in [
        ("POST", "/v1/events", {}, post_events(gateway, good["events"]), 202),
        ("POST", "/v1/events", {}, post_events(gateway, [{"type": "x"}]), 400),
        (
            "DELETE",
            "/v1/users/{user_id}/state",
            {"user_id": "doc"},
            requests.delete(f"http://{gateway.http}/v1/users/doc/state", timeout=10),
            200,
        ),
    ]:
        assert answer.status_code == status, answer.text
        operation = schema.find_operation_by_path(method, path)
        operation.Case(path_parameters=params).validate_response(answer)


@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_the_load_generator_s_events_scenario_lands_every_event(gateway, store, scheme):
    address = gateway.http if scheme == "http" else gateway.grpc
    spec = ScenarioSpec("events", batch=7, items=6000, seed=3)
    before = store.xlen(Keys().stream)
    plan = RunPlan(Target.parse(f"{scheme}://{address}"), spec, (20.0,), 1.0)
    (step,) = run(plan, check=True)  # the probe first, then 20/s for 1 s
    assert step.total.errors == {} and step.total.ok >= 15
    assert store.xlen(Keys().stream) - before == 7 * (step.total.ok + 1)  # + the probe


def test_the_documented_event_store_metrics_are_exposed_with_their_labels(gateway):
    # guards docs/gateway.md (Metrics): "`tenfold_gateway_events_accepted_total{type}`,
    # `tenfold_gateway_state_reads_total{outcome}`" (parsed from the docs)
    documented = {
        name: labels
        for name, labels in documented_gateway_metrics().items()
        if name in EVENT_STORE_METRICS
    }
    assert len(documented) == 2
    assert (
        post_events(gateway, [{"user_id": "m", "item_id": 2, "type": "share"}]).status_code == 202
    )
    feed(gateway, "m")
    text = scrape(gateway.http)
    for name, labels in documented.items():
        seen = exposed([text], name)
        assert seen and all(s == labels for s in seen), (name, seen)
