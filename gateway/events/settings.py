"""Settings of the event log and user state, shared by the gateway (``events:`` in its
config) and the stream processor (its command-line flags)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class EventsSettings(BaseModel):
    redis_url: str | None = Field(
        None,
        description="Redis holding the event log and user state, e.g. "
        "redis://127.0.0.1:6379/0 (None = no events: the feed is stateless)",
    )
    prefix: str = Field("tenfold:", description="prefix of every Redis key")
    max_batch: int = Field(500, ge=1, le=10_000, description="events per POST /v1/events")
    future_tolerance_s: float = Field(
        300, ge=0, description="how far ahead of the gateway's clock an event's ts may be"
    )
    max_age_s: float = Field(86_400, gt=0, description="how old an event's ts may be")
    stream_max_len: int = Field(
        1_000_000,
        ge=1000,
        description="the event log keeps about this many entries (older ones are trimmed; "
        "the processor must keep up: its backlog is a metric)",
    )
    deadline_ms: float = Field(1000, gt=0, description="default deadline of an events call")
    state_timeout_ms: float = Field(
        25, gt=0, description="longest wait for a user's state in a feed (then stateless)"
    )
    trending_refresh_s: float = Field(
        1.0, gt=0, description="how often the gateway re-reads the trending pool"
    )
    trending_size: int = Field(50, ge=0, description="trending items mixed into the pool")
    trending_min_score: float = Field(
        5.0, ge=0, description="weighted engagement an item needs to be trending"
    )
    trending_slots: int = Field(
        2, ge=0, description="feed places kept for trending items when there are some"
    )


class StateSettings(BaseModel):
    """What the processor writes (the gateway reads what it finds)."""

    history: int = Field(20, ge=1, description="recent positives kept per user")
    seen: int = Field(500, ge=1, description="recently shown items kept per user")
    ttl_s: int = Field(7 * 86_400, ge=1, description="a user's state expires after this")
    positive_watch_ms: int = Field(
        10_000, ge=0, description="a watch this long counts as a positive"
    )
    bucket_s: int = Field(60, ge=1, description="width of an item-counter bucket")
    window_buckets: int = Field(10, ge=1, description="buckets in the trending window")
    weights: dict[str, float] = Field(
        default_factory=lambda: {"finish": 1.0, "like": 2.0, "share": 4.0},
        description="trending score = sum of weight x events in the window",
    )
    trending_keep: int = Field(500, ge=1, description="items kept in the trending set")
