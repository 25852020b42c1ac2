"""Pure logic of events and user state: batch checks, the trending slots of the feed."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from gateway.events.schema import EventLimits, EventsBody, check_batch
from gateway.experiments import CONTROL
from gateway.feed import FeedAssets, FeedBody, FeedPipeline, Trending
from gateway.settings import FeedSettings
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


def pipeline() -> FeedPipeline:
    assets = FeedAssets(
        embeddings=np.eye(ITEMS, 4, dtype=np.float32),
        pool=np.arange(10, 30, dtype=np.int64),  # the build's pool: items 10..29
        creators=np.arange(ITEMS, dtype=np.int64),  # one creator per item
        users=5,
        history=4,
    )
    settings = FeedSettings(recall_model="", ranker_model="feed_ranker", rank_candidates=0)
    return FeedPipeline(settings, assets, ScoresById())


def page(trending: Trending | None, count: int = 5, seen=()) -> list[tuple[int, str]]:
    feed = FeedBody(user_id="new-user", count=count, seen=list(seen))
    result = asyncio.run(pipeline().run(feed, CONTROL, float("inf"), "", trending))
    return [(item, source) for item, _, source in result.items]


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
