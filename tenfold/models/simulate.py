"""A deterministic simulator of a short-video app's logs.

Users have latent tastes over topics (sparse Dirichlet), an activity level, a device
and a network. Items have a topic, a creator, a quality, a long-tailed popularity prior
and an age. Sessions show items drawn from a mix of popular and on-taste items; the
outcomes (watch fraction, finish, like, share, skip) come from the user's *true*
preference, the item's quality and freshness. Everything is drawn from one seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

N_HOURS, N_DEVICES, N_NETWORKS = 24, 3, 3
HISTORY = 20  # recent positives kept per user (0-padded, ids shifted by +1)


@dataclass(frozen=True)
class SimConfig:
    users: int = 50_000
    items: int = 100_000
    topics: int = 48
    creators: int = 5_000
    impressions: int = 3_000_000
    seed: int = 7

    @classmethod
    def quick(cls) -> SimConfig:
        return cls(users=3_000, items=6_000, topics=24, creators=400, impressions=200_000)


@dataclass(frozen=True)
class World:
    """Ground truth the logs are drawn from (the models never see tastes/quality)."""

    taste: np.ndarray  # [users, topics] true preference
    user_device: np.ndarray
    user_network: np.ndarray
    item_topic: np.ndarray
    item_creator: np.ndarray
    item_quality: np.ndarray
    item_pop: np.ndarray  # popularity prior, sums to 1
    item_age: np.ndarray  # days

    def true_score(self, users: np.ndarray) -> np.ndarray:
        """[len(users), items] expected engagement used for recall ground truth."""
        return self.taste[users][:, self.item_topic] * (0.5 + self.item_quality)


@dataclass(frozen=True)
class Logs:
    """One row per impression, in time order."""

    user: np.ndarray
    item: np.ndarray
    hour: np.ndarray
    device: np.ndarray
    network: np.ndarray
    history: np.ndarray  # [n, HISTORY] the user's recent positives before this impression
    watch: np.ndarray  # watch fraction 0..1
    finish: np.ndarray
    like: np.ndarray
    share: np.ndarray

    def __len__(self) -> int:
        return len(self.user)

    def take(self, idx: np.ndarray) -> Logs:
        return Logs(**{k: v[idx] for k, v in self.__dict__.items()})


def make_world(cfg: SimConfig) -> World:
    rng = np.random.default_rng(cfg.seed)
    taste = rng.dirichlet(np.full(cfg.topics, 0.15), size=cfg.users).astype(np.float32)
    topic_weight = rng.dirichlet(np.full(cfg.topics, 2.0))
    creator_topic = rng.choice(cfg.topics, size=cfg.creators, p=topic_weight)
    item_creator = rng.integers(0, cfg.creators, size=cfg.items)
    same = rng.random(cfg.items) < 0.8  # creators mostly stay on their topic
    item_topic = np.where(
        same, creator_topic[item_creator], rng.choice(cfg.topics, size=cfg.items, p=topic_weight)
    )
    quality = rng.beta(2.0, 4.0, size=cfg.items).astype(np.float32)
    pop = rng.lognormal(0.0, 1.6, size=cfg.items) * (0.3 + quality)
    return World(
        taste=taste,
        user_device=rng.integers(0, N_DEVICES, size=cfg.users),
        user_network=rng.integers(0, N_NETWORKS, size=cfg.users),
        item_topic=item_topic,
        item_creator=item_creator,
        item_quality=quality,
        item_pop=(pop / pop.sum()).astype(np.float64),
        item_age=rng.exponential(7.0, size=cfg.items).astype(np.float32),
    )


def _sample_rows(probs: np.ndarray, rows: np.ndarray, rng, chunk: int = 200_000) -> np.ndarray:
    """One category per entry of ``rows``, drawn from ``probs[row]`` (inverse CDF)."""
    out = np.empty(len(rows), dtype=np.int64)
    for lo in range(0, len(rows), chunk):
        cdf = np.cumsum(probs[rows[lo : lo + chunk]], axis=1)
        u = rng.random(len(cdf))[:, None] * cdf[:, -1:]
        out[lo : lo + chunk] = np.minimum((cdf < u).sum(axis=1), probs.shape[1] - 1)
    return out


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def simulate(cfg: SimConfig, world: World | None = None, progress=None) -> tuple[World, Logs]:
    world = world or make_world(cfg)
    rng = np.random.default_rng(cfg.seed + 1)
    n = cfg.impressions
    activity = rng.lognormal(0.0, 1.0, size=cfg.users)
    user = rng.choice(cfg.users, size=n, p=activity / activity.sum())
    # half the feed is popular items, half comes from the user's favourite topics
    popular = rng.choice(cfg.items, size=n, p=world.item_pop)
    fav_topic = _sample_rows(world.taste, user[: n // 2], rng)
    by_topic = np.argsort(world.item_topic, kind="stable")
    counts = np.bincount(world.item_topic, minlength=cfg.topics)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    fav_topic = np.where(counts[fav_topic] > 0, fav_topic, world.item_topic[popular[: n // 2]])
    pick = (rng.random(n // 2) * counts[fav_topic]).astype(np.int64)
    on_taste = by_topic[starts[fav_topic] + pick]
    item = popular.copy()
    item[: n // 2] = on_taste
    order = rng.permutation(n)
    user, item = user[order], item[order]
    hour = rng.integers(0, N_HOURS, size=n)
    affinity = world.taste[user, world.item_topic[item]] * world.taste.shape[1]
    logit = (
        1.2 * np.log1p(affinity)
        + 2.0 * world.item_quality[item]
        - 0.05 * world.item_age[item]
        - 1.2
        + 0.15 * (world.user_network[user] == 0)
        + rng.normal(0, 0.3, size=n)
    )
    watch = np.clip(rng.beta(1 + 4 * _sigmoid(logit), 1 + 4 * (1 - _sigmoid(logit))), 0, 1)
    finish = (rng.random(n) < _sigmoid(logit)).astype(np.float32)
    like = (rng.random(n) < _sigmoid(logit - 3.0 + 1.5 * finish)).astype(np.float32)
    share = (rng.random(n) < _sigmoid(logit - 4.5 + world.item_quality[item] * 2)).astype(
        np.float32
    )
    history = _histories(user, item, finish, cfg.users, progress)
    return world, Logs(
        user=user,
        item=item,
        hour=hour,
        device=world.user_device[user],
        network=world.user_network[user],
        history=history,
        watch=watch.astype(np.float32),
        finish=finish,
        like=like,
        share=share,
    )


def _histories(user, item, positive, n_users, progress) -> np.ndarray:
    """Each impression's view of its user's last HISTORY positives (ids + 1; 0 pads)."""
    ring = np.zeros((n_users, HISTORY), dtype=np.int64)
    out = np.empty((len(user), HISTORY), dtype=np.int64)
    step = max(1, len(user) // 20)
    for i in range(len(user)):
        u = user[i]
        out[i] = ring[u]
        if positive[i]:
            ring[u, 1:] = ring[u, :-1]
            ring[u, 0] = item[i] + 1
        if progress is not None and i % step == 0:
            progress(i / len(user))
    return out


def latest_histories(logs: Logs, n_users: int) -> np.ndarray:
    """Each user's history after the whole log (for serving-time recall evaluation)."""
    out = np.zeros((n_users, HISTORY), dtype=np.int64)
    out[logs.user] = logs.history  # later rows overwrite earlier ones
    return out
