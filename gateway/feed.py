"""The feed pipeline: user tower -> nearest neighbours ∪ cold-start pool -> drop seen ->
one batched ranker call -> weighted score -> top-K with at most N items per creator."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from gateway.experiments import Arm
from gateway.settings import FeedSettings
from gateway.upstream import ModelClient
from inference.protocol.errors import InvalidInput

HEADS = ("p_finish", "p_like", "p_share", "watch")
#: an item id as the models take it (INT64): a larger one is bad input, not a crash
ItemId = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]


class FeedContextBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hour: int = Field(12, ge=0, le=23, description="local hour of the user")
    device: str = Field("android", description="android | ios | web")
    network: str = Field("wifi", description="wifi | 5g | 4g")


class FeedBody(BaseModel):
    """Body of ``POST /v1/feed``."""

    model_config = ConfigDict(extra="forbid")
    user_id: str | int = Field(description="the user; unknown users get the cold-start pool")
    count: int = Field(20, ge=1, le=100, strict=True, description="items wanted")
    context: FeedContextBody = Field(default_factory=FeedContextBody)
    history: list[ItemId] = Field(
        default_factory=list, max_length=1000, description="recent positives, newest last"
    )
    seen: list[ItemId] = Field(
        default_factory=list, max_length=10_000, description="item ids not to show again"
    )


class FeedItemOut(BaseModel):
    item_id: int
    score: float
    source: str = Field(description="recall | cold_start | trending")


class FeedAnswer(BaseModel):
    """Answer of ``POST /v1/feed``."""

    items: list[FeedItemOut]
    model_version: str
    experiment: str
    request_id: str
    history_source: str = Field(
        "none", description="where the history came from: request | state | none"
    )
    state: str = Field(
        "off",
        description="the user's stored state: ok (read) | degraded (the store did not "
        "answer in time: stateless feed) | off (no event store configured)",
    )


#: where a candidate came from, by code (``FeedResult`` items carry the name)
SOURCES = ("recall", "cold_start", "trending")
RECALL, COLD_START, TRENDING = range(3)
#: trending candidates ranked per guaranteed slot (the rest wait for a better rank)
TRENDING_RANKED_PER_SLOT = 4


@dataclass(frozen=True)
class Trending:
    """The live trending pool (best first) and the feed places kept for it."""

    ids: np.ndarray
    slots: int = 0


#: how a ranker takes its candidates: "rows" = one row per candidate (user features
#: repeated), "lists" = one row per user with its candidates in ``items`` [1, N]
RANKER_LAYOUTS = ("rows", "lists")
#: list rankers get their candidates padded to a multiple of this, so lists of nearly
#: the same length batch together at the pod
LIST_PAD = 32


@dataclass(frozen=True)
class FeedAssets:
    embeddings: np.ndarray  # [items, dim] float32
    pool: np.ndarray  # [k] int64, best first
    creators: np.ndarray  # [items] int64
    users: int
    history: int
    #: TopK size of the recall model (None: the build has no recall model)
    recall_k: int | None = None
    #: ranker model name -> its layout (RANKER_LAYOUTS)
    rankers: dict[str, str] = field(default_factory=dict)

    def ranker_layout(self, model: str) -> str:
        """How ``model`` takes candidates; rankers the build does not list are "rows"."""
        return self.rankers.get(model, "rows")

    @classmethod
    def load(cls, folder: Path) -> FeedAssets:
        try:
            manifest = json.loads((folder / "feed_assets.json").read_text())
            embeddings = np.load(folder / "item_embeddings.npy")
            pool = np.load(folder / "cold_start_pool.npy")
            creators = np.load(folder / "item_creator.npy")
        except (OSError, ValueError) as exc:
            raise ValueError(f"feed assets in {folder}: {exc}") from None
        items = int(manifest["items"])
        if embeddings.shape[0] != items or creators.shape != (items,):
            raise ValueError(f"feed assets in {folder}: shapes do not match {items} items")
        if pool.size and (pool.min() < 0 or pool.max() >= items):
            raise ValueError(f"feed assets in {folder}: cold-start pool has unknown item ids")
        rankers = dict(manifest.get("rankers", {}))
        bad = {m: v for m, v in rankers.items() if v not in RANKER_LAYOUTS}
        if bad:
            raise ValueError(f"feed assets in {folder}: unknown ranker layouts {bad}")
        recall_k = manifest.get("recall_k")
        return cls(
            np.ascontiguousarray(embeddings, dtype=np.float32),
            pool.astype(np.int64),
            creators.astype(np.int64),
            int(manifest["users"]),
            int(manifest["history"]),
            None if recall_k is None else int(recall_k),
            rankers,
        )


@dataclass(frozen=True)
class Recalled:
    """What recall found for one request: the models' user inputs, and the embedding
    with the recalled items and scores, best first (no embedding: nothing recalled)."""

    ctx: np.ndarray
    history: np.ndarray
    vec: np.ndarray | None = None
    ids: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    scores: np.ndarray = field(default_factory=lambda: np.empty(0, np.float32))


@dataclass(frozen=True)
class FeedResult:
    items: list[tuple[int, float, str]]
    model_version: str


def _index(name: str, value: str, names: list[str]) -> int:
    try:
        return names.index(value)
    except ValueError:
        raise InvalidInput(f"context.{name}: {value!r} is not one of {names}") from None


def _user_index(user_id: str | int, users: int) -> int | None:
    """The model's row for a user id, or None for a new/unknown user."""
    text = str(user_id).strip()
    if not text:
        raise InvalidInput("user_id: must not be empty")
    # ASCII decimal digits only ("²".isdigit() is True and int() refuses it) and at
    # most 19 of them (int() refuses over 4,300 digits): anything else is a new user
    if text.isascii() and text.isdecimal() and len(text) <= 19 and int(text) < users:
        return int(text)
    return None


def _top_diverse(
    ids: np.ndarray, scores: np.ndarray, creators: np.ndarray, count: int, per_creator: int
) -> list[int]:
    """Positions of the best ``count`` items, at most ``per_creator`` per creator."""
    order = np.argsort(-scores, kind="stable")
    if per_creator >= count:  # the cap cannot bind on a page of ``count``
        return order[:count].tolist()
    taken: list[int] = []
    per: dict[int, int] = {}
    # plain ints: one numpy scalar per candidate cost more than the whole sort
    for pos, creator in zip(order.tolist(), creators[ids[order]].tolist(), strict=True):
        had = per.get(creator, 0)
        if had < per_creator:
            per[creator] = had + 1
            taken.append(pos)
            if len(taken) == count:
                break
    return taken


def _keep_slots(
    top: list[int], scores: np.ndarray, wanted: np.ndarray, count: int, slots: int
) -> list[int]:
    """``top`` with at least ``slots`` positions where ``wanted`` (the best-scored of
    them), taking the places of the lowest-scored others; best first."""
    have = int(np.count_nonzero(wanted[top]))
    want = np.flatnonzero(wanted)
    if have >= slots or len(want) <= have:  # enough of them, or none left to add
        return top
    taken = set(top)
    best_first = want[np.argsort(-scores[want], kind="stable")].tolist()
    extra = [p for p in best_first if p not in taken][: max(0, min(slots, count) - have)]
    if not extra:
        return top
    keep = list(top)
    while len(keep) + len(extra) > count:
        drop = next(p for p in reversed(keep) if not wanted[p])
        keep.remove(drop)
    return sorted(keep + extra, key=lambda p: -scores[p])


def _absent(ids: np.ndarray, others: np.ndarray, items: int) -> np.ndarray:
    """``~np.isin(ids, others)`` for item ids in [0, items): a mask over the catalogue
    instead of a sort (several times faster for a page's worth of ids)."""
    mask = np.zeros(items, bool)
    mask[others[(others >= 0) & (others < items)]] = True
    return ~mask[ids]


def exact_recall(embeddings: np.ndarray, vec: np.ndarray, k: int):
    """The ``k`` items nearest ``vec`` by dot product, best first, and their scores
    (CPU work over every item: run it off the event loop)."""
    scores = embeddings @ vec
    k = min(k, len(scores))
    top = np.argpartition(scores, len(scores) - k)[len(scores) - k :]
    top = top[np.argsort(-scores[top], kind="stable")]
    return top.astype(np.int64), scores[top]


class FeedPipeline:
    def __init__(self, settings: FeedSettings, assets: FeedAssets, models: ModelClient) -> None:
        self.settings = settings
        self.assets = assets
        self.models = models
        unknown = sorted(set(settings.weights) - set(HEADS))
        if unknown:
            raise ValueError(f"feed.weights: unknown heads {unknown}; heads: {list(HEADS)}")
        self.weights = np.array([settings.weights.get(h, 0.0) for h in HEADS], np.float32)
        if settings.recall_model and assets.recall_k is None:
            raise ValueError(
                f"feed.recall_model {settings.recall_model!r}: the model repository has no "
                "recall model (feed_assets.json has no recall_k; built before it existed): "
                "rebuild with `tenfold models build`, or set feed.recall_model to '' to "
                "recall in the gateway"
            )
        if settings.recall_model and settings.recall_candidates > assets.recall_k:
            raise ValueError(
                f"feed.recall_candidates {settings.recall_candidates} is more than the "
                f"recall model returns ({assets.recall_k})"
            )

    def _inputs(self, body: FeedBody) -> tuple[int | None, np.ndarray, np.ndarray]:
        a, s = self.assets, self.settings
        user = _user_index(body.user_id, a.users)
        history = np.asarray(body.history[-a.history :], dtype=np.int64)
        bad = np.flatnonzero((history < 0) | (history >= len(a.embeddings)))
        if bad.size:
            raise InvalidInput(f"history: unknown item id {int(history[bad[0]])}")
        padded = np.zeros((1, a.history), np.int64)
        padded[0, : len(history)] = history + 1
        ctx = np.array(
            [
                [
                    0 if user is None else user + 1,
                    body.context.hour,
                    _index("device", body.context.device, s.devices),
                    _index("network", body.context.network, s.networks),
                ]
            ],
            np.int64,
        )
        return user, ctx, padded

    async def _recall(self, ctx, history, deadline: float, request_id: str):
        """The user's embedding and recalled items with their scores, best first."""
        s = self.settings
        inputs = {"user_ctx": ctx, "history": history}
        if s.recall_model:
            out, _ = await self.models.infer(
                s.recall_model, inputs, deadline, request_id=request_id
            )
            k = s.recall_candidates
            return out["embedding"][0], out["recall_ids"][0][:k], out["recall_scores"][0][:k]
        out, _ = await self.models.infer(
            s.user_tower_model, inputs, deadline, request_id=request_id
        )
        vec = out["embedding"][0]
        loop = asyncio.get_running_loop()
        ids, scores = await loop.run_in_executor(
            None, exact_recall, self.assets.embeddings, vec, s.recall_candidates
        )
        return vec, ids, scores

    def _pool(self, trending: Trending | None) -> tuple[np.ndarray, np.ndarray]:
        """The cold-start pool with the live trending items first, and each one's
        origin (COLD_START or TRENDING)."""
        a = self.assets
        items = len(a.embeddings)
        live = np.empty(0, np.int64) if trending is None else trending.ids
        live = live[(live >= 0) & (live < items)]
        if not len(live):
            return a.pool, np.full(len(a.pool), COLD_START, np.int8)
        rest = a.pool[_absent(a.pool, live, items)]
        origin = np.full(len(live) + len(rest), COLD_START, np.int8)
        origin[: len(live)] = TRENDING
        return np.concatenate([live, rest]), origin

    def _candidates(self, vec, recalled, recall_scores, seen: list[int], trending=None):
        """Candidate ids, where each came from (SOURCES codes), and a cheap pre-score
        (the recall dot product; pool order for a user without an embedding). The
        cascade keeps a few trending candidates whatever their pre-score."""
        a, s = self.assets, self.settings
        pool, pool_origin = self._pool(trending)
        if vec is None:
            ids, origin = pool, pool_origin
            pre = -np.arange(len(ids), dtype=np.float32)
        else:
            cut = s.cold_start_candidates
            pool, pool_origin = pool[:cut], pool_origin[:cut]
            fresh = _absent(pool, recalled, len(a.embeddings))
            pool, pool_origin = pool[fresh], pool_origin[fresh]
            ids = np.concatenate([recalled, pool])
            origin = np.concatenate([np.full(len(recalled), RECALL, np.int8), pool_origin])
            pre = np.concatenate([recall_scores, a.embeddings[pool] @ vec])
        if seen:
            keep = _absent(ids, np.asarray(seen, dtype=np.int64), len(a.embeddings))
            ids, origin, pre = ids[keep], origin[keep], pre[keep]
        if s.rank_candidates and len(ids) > s.rank_candidates:
            kept = np.flatnonzero(origin == TRENDING)
            kept = kept[: TRENDING_RANKED_PER_SLOT * (trending.slots if trending else 0)]
            best = np.argpartition(-pre, s.rank_candidates - 1)[: s.rank_candidates]
            best = np.union1d(best, kept) if len(kept) else np.sort(best)
            ids, origin = ids[best], origin[best]
        return ids, origin

    async def _rank(self, ranker, version, ctx, history, ids, deadline, request_id):
        """The ranker's heads for each candidate: [n, heads] and the version served."""
        n = len(ids)
        if self.assets.ranker_layout(ranker) == "lists":
            items = np.zeros((1, -(-n // LIST_PAD) * LIST_PAD), np.int64)
            items[0, :n] = ids + 1
            inputs = {"user_ctx": ctx, "history": history, "items": items}
        else:
            inputs = {
                "user_ctx": np.repeat(ctx, n, axis=0),
                "history": np.repeat(history, n, axis=0),
                "item": (ids[:, None] + 1).astype(np.int64),
            }
        heads, served = await self.models.infer(
            ranker, inputs, deadline, version=version, request_id=request_id
        )
        return np.stack([heads[h].reshape(-1)[:n] for h in HEADS], 1), served

    async def recall(self, body: FeedBody, deadline: float, request_id: str) -> Recalled:
        """The first half of a feed: the body's inputs checked, the user's embedding and
        recalled items (none for a user the models know nothing of)."""
        user, ctx, history = self._inputs(body)
        if user is None and not history.any():
            return Recalled(ctx, history)
        vec, ids, scores = await self._recall(ctx, history, deadline, request_id)
        return Recalled(ctx, history, vec, ids, scores)

    async def rank(
        self,
        recalled: Recalled,
        body: FeedBody,
        arm: Arm,
        deadline: float,
        request_id: str,
        trending: Trending | None = None,
    ) -> FeedResult:
        """The second half: candidates (recalled, the pool, ``body.seen`` dropped), one
        ranker call, the page."""
        r = recalled
        ids, origin = self._candidates(r.vec, r.ids, r.scores, body.seen, trending)
        if not len(ids):
            return FeedResult([], "")
        ranker = arm.ranker_model or self.settings.ranker_model
        heads, version = await self._rank(
            ranker,
            arm.ranker_version or self.settings.ranker_version,
            r.ctx,
            r.history,
            ids,
            deadline,
            request_id,
        )
        scores = heads @ self.weights
        top = _top_diverse(
            ids, scores, self.assets.creators, body.count, self.settings.max_per_creator
        )
        if trending is not None and trending.slots:
            top = _keep_slots(top, scores, origin == TRENDING, body.count, trending.slots)
        picked = zip(ids[top].tolist(), scores[top].tolist(), origin[top].tolist(), strict=True)
        items = [(item, score, SOURCES[code]) for item, score, code in picked]
        return FeedResult(items, f"{ranker}:{version}")

    async def run(
        self,
        body: FeedBody,
        arm: Arm,
        deadline: float,
        request_id: str,
        trending: Trending | None = None,
    ) -> FeedResult:
        recalled = await self.recall(body, deadline, request_id)
        return await self.rank(recalled, body, arm, deadline, request_id, trending)
