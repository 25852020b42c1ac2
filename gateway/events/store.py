"""The gateway's side of Redis: append events to the log, read a user's state in one
round trip, erase a user, read the trending pool. Redis errors become
``ServerUnavailable`` (503 + Retry-After) for events; a feed degrades instead."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.events.keys import Keys
from gateway.events.schema import Event
from gateway.events.settings import EventsSettings
from inference.protocol.errors import ServerUnavailable

#: how long an erasure marker stops older events from re-creating a user's state
#: (longer than any event may wait in the log: events are at most max_age_s old)
ERASE_MARKER_TTL_S = 7 * 86_400

_ERASE = """
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 't', 'erase', 'u', ARGV[1])
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('SET', KEYS[4], id, 'EX', ARGV[3])
return id
"""


@dataclass(frozen=True)
class UserState:
    history: list[int]
    seen: list[int]


def connect(url: str) -> aioredis.Redis:
    """A client for ``url`` that fails fast when Redis is not there."""
    return aioredis.Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=5.0)


def entry_fields(event: Event) -> dict[str, str | int]:
    fields: dict[str, str | int] = {"t": event.type, "u": event.user, "i": event.item}
    fields["ts"] = event.ts_ms
    if event.watch_ms is not None:
        fields["w"] = event.watch_ms
    return fields


class EventStore:
    def __init__(self, settings: EventsSettings, client: aioredis.Redis | None = None) -> None:
        if settings.redis_url is None and client is None:
            raise ValueError("events: no redis_url")
        self.settings = settings
        self.keys = Keys(settings.prefix)
        self.redis = client or connect(settings.redis_url)
        self._erase = self.redis.register_script(_ERASE)
        #: the trending pool as last read (best first), empty until read
        self.trending = np.empty(0, np.int64)

    async def publish(self, events: list[Event], timeout_s: float) -> list[str]:
        """Append the batch to the log (all or nothing); the log ids, in order."""
        async with self.redis.pipeline(transaction=True) as pipe:
            for event in events:
                pipe.xadd(
                    self.keys.stream,
                    entry_fields(event),
                    maxlen=self.settings.stream_max_len,
                    approximate=True,
                )
            ids = await self._call(pipe.execute(), timeout_s, "store the events")
        return [i.decode() for i in ids]

    async def user_state(self, user: str, timeout_s: float) -> UserState:
        """The user's stored history (newest last) and seen items; raises
        ``ServerUnavailable`` when Redis does not answer within ``timeout_s``."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.lrange(self.keys.history(user), 0, -1)
            pipe.zrange(self.keys.seen(user), 0, -1)
            history, seen = await self._call(pipe.execute(), timeout_s, "read the user state")
        return UserState([int(h) for h in history], [int(s) for s in seen])

    async def erase(self, user: str, timeout_s: float) -> str:
        """Delete the user's state; events logged before now are not applied later.
        The log id of the erasure."""
        k = self.keys
        keys = [k.stream, k.history(user), k.seen(user), k.erased(user)]
        args = [user, self.settings.stream_max_len, ERASE_MARKER_TTL_S]
        erased = await self._call(self._erase(keys=keys, args=args), timeout_s, "erase")
        return erased.decode()

    async def refresh_trending(self, timeout_s: float) -> np.ndarray:
        """Re-read the trending pool (items at or above the minimum score, best first)."""
        s = self.settings
        raw = await self._call(
            self.redis.zrevrangebyscore(
                self.keys.trending, "+inf", s.trending_min_score, start=0, num=s.trending_size
            ),
            timeout_s,
            "read the trending pool",
        )
        self.trending = np.array([int(i) for i in raw], np.int64)
        return self.trending

    async def _call(self, awaitable, timeout_s: float, what: str):
        try:
            return await asyncio.wait_for(awaitable, max(timeout_s, 0.001))
        except TimeoutError:
            waited = f"{timeout_s * 1000:.0f} ms"
            raise ServerUnavailable(f"event store: no answer in {waited}") from None
        except (RedisError, OSError) as exc:
            raise ServerUnavailable(f"event store: cannot {what}: {exc}") from None

    async def close(self) -> None:
        await self.redis.aclose()
