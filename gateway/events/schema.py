"""What a client sends to ``POST /v1/events`` and ``tenfold.v1.Events/Publish``.

Field checks that need no clock or catalogue are pydantic's; ``check_batch`` adds the
rest (batch size, known item ids, timestamps within a tolerance of now) with the clock
passed in, and names the offending field in its error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from inference.protocol.errors import InvalidInput

EVENT_TYPES = ("impression", "watch", "finish", "like", "share", "skip")
EventType = Literal["impression", "watch", "finish", "like", "share", "skip"]
#: longest user id kept in state (a longer one is refused by /v1/events and gets no
#: state in the feed)
MAX_USER_ID = 128
#: the longest watch a client may report (one day, in ms)
MAX_WATCH_MS = 86_400_000


class EventIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: str | int = Field(description="the user who acted")
    item_id: int = Field(ge=0, le=2**63 - 1, description="the item acted on")
    type: EventType = Field(description="impression | watch | finish | like | share | skip")
    watch_ms: int | None = Field(
        None, ge=0, le=MAX_WATCH_MS, strict=True, description="watch time (watch events)"
    )
    ts: float | None = Field(
        None, description="when it happened, Unix seconds (default: when it is received)"
    )


class EventsBody(BaseModel):
    """Body of ``POST /v1/events``."""

    model_config = ConfigDict(extra="forbid")
    events: list[EventIn] = Field(min_length=1, description="the batch, oldest first")


class EventsAnswer(BaseModel):
    """Answer of ``POST /v1/events`` (202: stored in the event log, not yet applied)."""

    accepted: int
    ids: list[str] = Field(description="the event log's id of each event, in order")
    request_id: str


@dataclass(frozen=True)
class Event:
    """One checked event as the log stores it."""

    user: str
    item: int
    type: str
    watch_ms: int | None
    ts_ms: int


def user_key(user_id: str | int) -> str:
    """The user as state is keyed: the id as text, surrounding spaces removed."""
    return str(user_id).strip()


def checked_user(user_id: str | int, field: str) -> str:
    """``user_key`` of a user id that may be stored, or ``InvalidInput`` naming ``field``."""
    user = user_key(user_id)
    if not user or len(user) > MAX_USER_ID:
        raise InvalidInput(f"{field}: must be 1 to {MAX_USER_ID} characters")
    return user


@dataclass(frozen=True)
class EventLimits:
    max_batch: int
    #: how far ahead of the gateway's clock a timestamp may be (clock skew)
    future_tolerance_s: float
    #: how old an event may be
    max_age_s: float
    #: item ids must be below this (the catalogue size; None = any id >= 0)
    items: int | None = None


def check_batch(body: EventsBody, limits: EventLimits, now_s: float) -> list[Event]:
    """The batch as stored, or ``InvalidInput`` naming the first bad field."""
    if len(body.events) > limits.max_batch:
        raise InvalidInput(
            f"events: {len(body.events)} events in one batch; at most {limits.max_batch}"
        )
    out = []
    for n, event in enumerate(body.events):
        where = f"events.{n}"
        user = checked_user(event.user_id, f"{where}.user_id")
        if limits.items is not None and event.item_id >= limits.items:
            raise InvalidInput(
                f"{where}.item_id: unknown item {event.item_id} (the catalogue has "
                f"{limits.items} items)"
            )
        ts = now_s if event.ts is None else event.ts
        if not ts <= now_s + limits.future_tolerance_s:
            raise InvalidInput(
                f"{where}.ts: {event.ts} is more than {limits.future_tolerance_s:g} s in the future"
            )
        if not ts >= now_s - limits.max_age_s:
            raise InvalidInput(f"{where}.ts: {event.ts} is older than {limits.max_age_s:g} s")
        out.append(Event(user, event.item_id, event.type, event.watch_ms, int(ts * 1000)))
    return out
