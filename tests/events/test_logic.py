"""Pure logic of events and user state: batch checks, the trending slots of the feed."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from gateway.auth import ANONYMOUS
from gateway.core import Call, CoreDeps, GatewayCore
from gateway.events.schema import EventLimits, EventsBody, check_batch
from gateway.events.store import UserState
from gateway.experiments import CONTROL
from gateway.feed import FeedAssets, FeedBody, FeedPipeline, Trending
from gateway.metrics import GatewayMetrics
from gateway.settings import FeedSettings, GatewaySettings
from inference.protocol.errors import InvalidInput

NOW = 1_800_000_000.0
LIMITS = EventLimits(max_batch=3, future_tolerance_s=300, max_age_s=3600, items=100)


def body(*events: dict) -> EventsBody:
    return EventsBody(events=[{"user_id": 7, "item_id": 1, "type": "like", **e} for e in events])


def test_a_good_batch_is_stored_with_the_clock_s_time_when_it_has_none():
    events = check_batch(body({}, {"ts": NOW - 60, "type": "watch", "watch_ms": 5}), LIMITS, NOW)
    assert [(e.user, e.item, e.type, e.watch_ms, e.ts_ms) for e in events] == [
        ("7", 1, "like", None, int(NOW * 1000)),
        ("7", 1, "watch", 5, int((NOW - 60) * 1000)),
    ]


@pytest.mark.parametrize(
    ("events", "named"),
    [
        (({}, {}, {}, {}), "events: 4 events in one batch; at most 3"),
        (({}, {"item_id": 100}), "events.1.item_id: unknown item 100"),
        (({"ts": NOW + 301},), "events.0.ts"),
        (({"ts": NOW - 3601},), "events.0.ts"),
        (({"ts": float("nan")},), "events.0.ts"),
        (({"user_id": " "},), "events.0.user_id"),
        (({"user_id": "u" * 129},), "events.0.user_id"),
    ],
)
def test_bad_batches_are_refused_naming_the_field(events, named):
    with pytest.raises(InvalidInput, match=named.replace(".", r"\.")):
        check_batch(body(*events), LIMITS, NOW)


@pytest.mark.parametrize(
    ("event", "field"),
    [
        ({"type": "dislike"}, "type"),
        ({"item_id": -5}, "item_id"),
        ({"watch_ms": -1}, "watch_ms"),
        ({"extra": 1}, "extra"),
    ],
)
def test_the_schema_refuses_unknown_types_negative_ids_and_extra_fields(event, field):
    with pytest.raises(ValueError, match=field):
        body(event)


# --- trending slots in the feed ---------------------------------------------------------

ITEMS = 40


class ScoresById:
    """A ModelClient whose row ranker scores a candidate by its id (higher id, higher
    score): what the feed keeps is then known in advance."""

    async def infer(self, model, inputs, deadline, version="", request_id=""):
        score = inputs["item"][:, 0].astype(np.float32) / ITEMS
        heads = {h: score for h in ("p_finish", "p_like", "p_share", "watch")}
        return heads, "1"


def pipeline(creators=None, per_creator: int = 2) -> FeedPipeline:
    assets = FeedAssets(
        embeddings=np.eye(ITEMS, 4, dtype=np.float32),
        pool=np.arange(10, 30, dtype=np.int64),  # the build's pool: items 10..29
        # one creator per item unless told
        creators=np.arange(ITEMS, dtype=np.int64) if creators is None else creators,
        users=5,
        history=4,
    )
    settings = FeedSettings(
        recall_model="",
        ranker_model="feed_ranker",
        rank_candidates=0,
        max_per_creator=per_creator,
    )
    return FeedPipeline(settings, assets, ScoresById())


def page(trending: Trending | None, count: int = 5, seen=(), **shape) -> list[tuple[int, str]]:
    feed = FeedBody(user_id="new-user", count=count, seen=list(seen))
    result = asyncio.run(pipeline(**shape).run(feed, CONTROL, float("inf"), "", trending))
    return [(item, source) for item, _, source in result.items]


def test_at_most_max_per_creator_items_of_one_creator_best_first():
    # creators own ten consecutive ids (20..29 one, 10..19 another): two of each
    creators = np.arange(ITEMS, dtype=np.int64) // 10
    got = [item for item, _ in page(None, count=4, creators=creators, per_creator=2)]
    assert got == [29, 28, 19, 18]
    # a cap as large as the page cannot bind: the best five whoever made them
    got = [item for item, _ in page(None, count=5, creators=creators, per_creator=5)]
    assert got == [29, 28, 27, 26, 25]
    # fewer items than asked once the cap is spent: two per creator of the pool's two
    got = [item for item, _ in page(None, count=6, creators=creators, per_creator=2)]
    assert got == [29, 28, 19, 18]


def test_without_trending_a_new_user_gets_the_build_pool_ranked():
    assert page(None) == [(i, "cold_start") for i in (29, 28, 27, 26, 25)]


def test_trending_items_join_the_pool_and_keep_their_slots_when_they_rank_low():
    # items 2 and 3 score lowest of all, yet two places are kept for them
    got = page(Trending(np.array([3, 2], np.int64), slots=2))
    best = [(29, "cold_start"), (28, "cold_start"), (27, "cold_start")]
    assert got == [*best, (3, "trending"), (2, "trending")]


def test_a_trending_item_that_ranks_high_takes_its_place_without_a_slot():
    got = page(Trending(np.array([35], np.int64), slots=0))
    assert got[0] == (35, "trending") and len(got) == 5


def test_trending_items_already_seen_are_not_shown_and_unknown_ids_are_ignored():
    got = page(Trending(np.array([3, 2, 999, -1], np.int64), slots=2), seen=[3])
    assert (3, "trending") not in got
    assert (2, "trending") in got
    assert all(0 <= item < ITEMS for item, _ in got)


def test_slots_never_make_the_page_longer_than_asked():
    assert page(Trending(np.array([1, 2, 3], np.int64), slots=3), count=2) == [
        (3, "trending"),
        (2, "trending"),
    ]


# --- the user-state read overlaps recall (gateway/core.py) ------------------------------


class Tower:
    """A ModelClient for the user-tower path: says when recall has begun, and fails it
    with ``fail`` (if set); the row ranker scores by id as ``ScoresById``."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.recall_began = asyncio.Event()
        self.fail = fail

    async def infer(self, model, inputs, deadline, version="", request_id=""):
        if model == "feed_user_tower":
            self.recall_began.set()
            await asyncio.sleep(0)
            if self.fail is not None:
                raise self.fail
            return {"embedding": np.ones((1, 4), np.float32)}, "1"
        return await ScoresById().infer(model, inputs, deadline, version, request_id)


class StoredState:
    """An event store whose read of a user's state waits for ``gate`` (at most
    ``patience_s``), then answers ``seen``; it records a cancelled read."""

    def __init__(self, gate: asyncio.Event, seen: list[int], patience_s: float = 2.0) -> None:
        self.trending = np.empty(0, np.int64)
        self.gate, self.seen, self.patience_s = gate, seen, patience_s
        self.cancelled = False

    async def user_state(self, user: str, timeout_s: float) -> UserState:
        try:
            await asyncio.wait_for(self.gate.wait(), self.patience_s)
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        return UserState([], self.seen)


def core_with(models, store) -> GatewayCore:
    assets = FeedAssets(
        embeddings=np.eye(ITEMS, 4, dtype=np.float32),
        pool=np.arange(10, 30, dtype=np.int64),
        creators=np.arange(ITEMS, dtype=np.int64),
        users=5,
        history=4,
    )
    feed = FeedSettings(recall_model="", ranker_model="feed_ranker", rank_candidates=0)
    settings = GatewaySettings(feed=feed)
    pipeline = FeedPipeline(settings.feed, assets, models)
    return GatewayCore(CoreDeps(settings, None, pipeline, None, GatewayMetrics(), store))


def feed_call(core: GatewayCore) -> Call:
    return Call("feed", core.clock() + 5, ANONYMOUS, "r1")


async def test_with_a_history_sent_the_state_read_runs_while_recall_does():
    # the read waits for recall to begin: read first, then recall (the order before
    # this change) would time out instead of answering
    models = Tower()
    store = StoredState(models.recall_began, seen=[39, 38], patience_s=0.5)
    core = core_with(models, store)
    body = FeedBody(user_id=3, count=5, history=[1, 2])
    answer = await core.feed(body, feed_call(core))
    items = [i.item_id for i in answer.items]
    assert (answer.history_source, answer.state) == ("request", "ok")
    assert len(items) == 5 and not {38, 39} & set(items)  # the stored seen items apply
    assert items == [37, 36, 35, 34, 33]  # the ranker's best by id, the seen ones dropped


async def test_a_failed_recall_is_the_answer_and_the_pending_read_is_cancelled():
    models = Tower(fail=InvalidInput("history: no such items"))
    store = StoredState(asyncio.Event(), seen=[39])  # never answers
    core = core_with(models, store)
    with pytest.raises(InvalidInput, match="no such items"):
        await core.feed(FeedBody(user_id=3, count=5, history=[1]), feed_call(core))
    for _ in range(20):  # the cancellation is delivered over the next loop passes
        if store.cancelled:
            break
        await asyncio.sleep(0)
    assert store.cancelled
