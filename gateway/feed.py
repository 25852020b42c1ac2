"""The feed pipeline: user tower -> nearest neighbours ∪ cold-start pool -> drop seen ->
one batched ranker call -> weighted score -> top-K with at most N items per creator."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
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
    count: int = Field(20, ge=1, le=100, description="items wanted")
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
    source: str = Field(description="recall | cold_start")


class FeedAnswer(BaseModel):
    """Answer of ``POST /v1/feed``."""

    items: list[FeedItemOut]
    model_version: str
    experiment: str
    request_id: str


@dataclass(frozen=True)
class FeedAssets:
    embeddings: np.ndarray  # [items, dim] float32
    pool: np.ndarray  # [k] int64, best first
    creators: np.ndarray  # [items] int64
    users: int
    history: int

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
        return cls(
            np.ascontiguousarray(embeddings, dtype=np.float32),
            pool.astype(np.int64),
            creators.astype(np.int64),
            int(manifest["users"]),
            int(manifest["history"]),
        )


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
    if text.isdigit() and int(text) < users:
        return int(text)
    return None


def _top_diverse(
    ids: np.ndarray, scores: np.ndarray, creators: np.ndarray, count: int, per_creator: int
) -> list[int]:
    """Positions of the best ``count`` items, at most ``per_creator`` per creator."""
    taken: list[int] = []
    per: dict[int, int] = {}
    for pos in np.argsort(-scores, kind="stable"):
        creator = int(creators[ids[pos]])
        if per.get(creator, 0) < per_creator:
            per[creator] = per.get(creator, 0) + 1
            taken.append(int(pos))
            if len(taken) == count:
                break
    return taken


class FeedPipeline:
    def __init__(self, settings: FeedSettings, assets: FeedAssets, models: ModelClient) -> None:
        self.settings = settings
        self.assets = assets
        self.models = models
        unknown = sorted(set(settings.weights) - set(HEADS))
        if unknown:
            raise ValueError(f"feed.weights: unknown heads {unknown}; heads: {list(HEADS)}")
        self.weights = np.array([settings.weights.get(h, 0.0) for h in HEADS], np.float32)

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

    def _candidates(self, vec: np.ndarray | None, seen: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Candidate ids and whether each came from recall (CPU work: run off the loop)."""
        a, s = self.assets, self.settings
        pool = a.pool[: s.cold_start_candidates] if vec is not None else a.pool
        if vec is not None:
            scores = a.embeddings @ vec
            k = min(s.recall_candidates, len(scores))
            recalled = np.argpartition(-scores, k - 1)[:k]
        else:
            recalled = np.empty(0, np.int64)
        ids = np.concatenate([recalled, pool[~np.isin(pool, recalled)]])
        from_recall = np.arange(len(ids)) < len(recalled)
        if seen:
            keep = ~np.isin(ids, np.asarray(seen, dtype=np.int64))
            ids, from_recall = ids[keep], from_recall[keep]
        return ids, from_recall

    async def run(self, body: FeedBody, arm: Arm, deadline: float, request_id: str) -> FeedResult:
        user, ctx, history = self._inputs(body)
        loop = asyncio.get_running_loop()
        vec = None
        if user is not None or history.any():
            out, _ = await self.models.infer(
                self.settings.user_tower_model,
                {"user_ctx": ctx, "history": history},
                deadline,
                request_id=request_id,
            )
            vec = out["embedding"][0]
        ids, from_recall = await loop.run_in_executor(None, self._candidates, vec, body.seen)
        if not len(ids):
            return FeedResult([], "")
        n = len(ids)
        ranker = arm.ranker_model or self.settings.ranker_model
        heads, version = await self.models.infer(
            ranker,
            {
                "user_ctx": np.repeat(ctx, n, axis=0),
                "history": np.repeat(history, n, axis=0),
                "item": (ids[:, None] + 1).astype(np.int64),
            },
            deadline,
            version=arm.ranker_version or self.settings.ranker_version,
            request_id=request_id,
        )
        scores = np.stack([heads[h].reshape(-1) for h in HEADS], 1) @ self.weights
        top = _top_diverse(
            ids, scores, self.assets.creators, body.count, self.settings.max_per_creator
        )
        items = [
            (int(ids[p]), float(scores[p]), "recall" if from_recall[p] else "cold_start")
            for p in top
        ]
        return FeedResult(items, f"{ranker}:{version}")
