"""Train, evaluate and export the feed models: two-tower recall, cold-start pool and
the multi-task ranker (torch extra)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from optimizers.quality import auc
from tenfold.models.feed_nets import ItemTables, MMoERanker, TwoTower, UserTower
from tenfold.models.simulate import Logs, SimConfig, World, latest_histories

Progress = Callable[[str, float], None]
#: strength of the logQ correction of in-batch negatives (0: none, 1: full)
LOGQ_WEIGHT = 0.5


@dataclass(frozen=True)
class FeedData:
    cfg: SimConfig
    world: World
    train: Logs
    test: Logs
    #: [items, 3] age/30, log popularity, smoothed finish rate (from training logs)
    item_dense: np.ndarray
    item_positives: np.ndarray  # positives per item in training logs

    @classmethod
    def split(cls, cfg: SimConfig, world: World, logs: Logs, test_fraction=0.1) -> FeedData:
        cut = int(len(logs) * (1 - test_fraction))
        train, test = logs.take(np.arange(cut)), logs.take(np.arange(cut, len(logs)))
        shown = np.bincount(train.item, minlength=cfg.items)
        positives = np.bincount(train.item, weights=train.finish, minlength=cfg.items)
        finish_rate = (positives + 1.0) / (shown + 4.0)  # smoothed towards 1/4
        popularity = np.log1p(shown) / np.log1p(shown.max())
        dense = np.stack([world.item_age / 30.0, popularity, finish_rate], 1)
        return cls(cfg, world, train, test, dense.astype(np.float32), positives)

    def tables(self) -> ItemTables:
        return ItemTables(self.world.item_topic, self.world.item_creator, self.item_dense)

    def user_ctx(self, logs: Logs) -> np.ndarray:
        return np.stack([logs.user + 1, logs.hour, logs.device, logs.network], 1).astype(np.int64)


def _batches(n: int, size: int, rng) -> list[np.ndarray]:
    order = rng.permutation(n)
    return [order[i : i + size] for i in range(0, n, size)]


def _fit(model, opt, batches, loss_of, progress: Progress, name: str):
    """One optimiser step per batch of row indices; ``loss_of(idx)`` gives the loss."""
    model.train()
    for step, idx in enumerate(batches):
        loss = loss_of(torch.as_tensor(idx))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 20 == 0:
            progress(name, step / len(batches))
    model.eval()
    return model


class _SplitAdam:
    """Adam for dense parameters, SparseAdam for embeddings with sparse gradients."""

    def __init__(self, model: torch.nn.Module, lr: float) -> None:
        sparse = {
            id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding) and m.sparse
        }
        params = list(model.parameters())
        self.opts = [
            torch.optim.Adam([p for p in params if id(p) not in sparse], lr=lr),
            torch.optim.SparseAdam([p for p in params if id(p) in sparse], lr=lr),
        ]

    def zero_grad(self) -> None:
        for opt in self.opts:
            opt.zero_grad()

    def step(self) -> None:
        for opt in self.opts:
            opt.step()


def train_ranker(data: FeedData, epochs: int, progress: Progress, seed: int = 0) -> MMoERanker:
    torch.manual_seed(seed)
    cfg = data.cfg
    model = MMoERanker(cfg.users, cfg.items, cfg.topics, cfg.creators, data.tables())
    opt = _SplitAdam(model, lr=2e-3)
    logs = data.train
    ctx, hist, item = (torch.as_tensor(v) for v in ranker_inputs(data, logs).values())
    labels = torch.as_tensor(np.stack([logs.finish, logs.like, logs.share, logs.watch], 1))
    rng = np.random.default_rng(seed)
    batches = [b for _ in range(epochs) for b in _batches(len(logs), 1024, rng)]

    def loss_of(idx):
        outs = model(ctx[idx], hist[idx], item[idx])
        return sum(
            torch.nn.functional.binary_cross_entropy(o[:, 0], labels[idx, k])
            for k, o in enumerate(outs)
        )

    return _fit(model, opt, batches, loss_of, progress, "ranker")


def ranker_inputs(data: FeedData, logs: Logs) -> dict[str, np.ndarray]:
    return {
        "user_ctx": data.user_ctx(logs),
        "history": logs.history,
        "item": (logs.item[:, None] + 1).astype(np.int64),
    }


def evaluate_ranker(model: MMoERanker, data: FeedData) -> dict:
    feeds = {k: torch.as_tensor(v) for k, v in ranker_inputs(data, data.test).items()}
    with torch.inference_mode():
        outs = [o[:, 0].numpy() for o in model(**feeds)]
    test = data.test
    truth = {
        "p_finish": test.finish,
        "p_like": test.like,
        "p_share": test.share,
        "watch": (test.watch > 0.5).astype(np.float32),
    }
    popularity = data.item_positives[test.item]
    report = {}
    for name, score in zip(MMoERanker.HEADS, outs, strict=True):
        report[name] = {
            "auc": auc(truth[name], score),
            "popularity_auc": auc(truth[name], popularity),
        }
    return report


def train_two_tower(data: FeedData, epochs: int, progress: Progress, seed: int = 0) -> TwoTower:
    torch.manual_seed(seed)
    cfg = data.cfg
    model = TwoTower(cfg.users, cfg.items, cfg.topics, cfg.creators, data.tables())
    opt = _SplitAdam(model, lr=3e-3)
    logs = data.train
    keep = np.flatnonzero(logs.finish > 0)
    ctx = torch.as_tensor(data.user_ctx(logs)[keep])
    hist = torch.as_tensor(logs.history[keep])
    items = torch.as_tensor(logs.item[keep] + 1)
    # logQ correction: in-batch negatives over-sample popular items
    freq = np.bincount(logs.item[keep], minlength=cfg.items) + 1.0
    log_q = torch.as_tensor(np.log(freq / freq.sum()), dtype=torch.float32)
    rng = np.random.default_rng(seed)
    batches = [b for _ in range(epochs) for b in _batches(len(keep), 256, rng)]

    def loss_of(idx):
        u = model.user_vec(ctx[idx], hist[idx])
        v = model.item_vec(items[idx])
        logits = u @ v.T / 0.05 - LOGQ_WEIGHT * log_q[items[idx] - 1][None, :]
        same = items[idx][:, None] == items[idx][None, :]
        logits = logits.masked_fill(same & ~torch.eye(len(idx), dtype=torch.bool), -1e9)
        return torch.nn.functional.cross_entropy(logits, torch.arange(len(idx)))

    return _fit(model, opt, batches, loss_of, progress, "recall")


def item_embeddings(model: TwoTower, n_items: int) -> np.ndarray:
    with torch.inference_mode():
        return model.item_vec(torch.arange(1, n_items + 1)).numpy().astype(np.float32)


def cold_start_pool(data: FeedData, size: int) -> np.ndarray:
    """Popular, fresh and high-quality items (observable signals only), best first."""
    shown = np.bincount(data.train.item, minlength=data.cfg.items)
    finish_rate = (data.item_positives + 1.0) / (shown + 4.0)  # smoothed
    popularity = np.log1p(data.item_positives) / np.log1p(data.item_positives.max())
    freshness = np.exp(-data.world.item_age / 7.0)
    score = 0.5 * popularity + 0.3 * finish_rate + 0.2 * freshness
    return np.argsort(-score, kind="stable")[:size].astype(np.int64)


def serving_user_inputs(data: FeedData, users: np.ndarray) -> dict[str, np.ndarray]:
    """Inputs of the user tower for ``users`` after the whole log (hour fixed at 20)."""
    hist = latest_histories(data.train, data.cfg.users)[users]
    ctx = np.stack(
        [
            users + 1,
            np.full_like(users, 20),
            data.world.user_device[users],
            data.world.user_network[users],
        ],
        1,
    ).astype(np.int64)
    return {"user_ctx": ctx, "history": hist}


def recall_probe(
    data: FeedData, k: int = 100, n_users: int = 1000
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """User-tower inputs of a seeded set of users and each one's true top ``k`` items."""
    rng = np.random.default_rng(11)
    users = np.sort(rng.choice(data.cfg.users, size=min(n_users, data.cfg.users), replace=False))
    truth = np.argsort(-data.world.true_score(users), axis=1)[:, :k]
    return serving_user_inputs(data, users), truth


def evaluate_recall(
    model: TwoTower,
    data: FeedData,
    embeddings: np.ndarray,
    pool: np.ndarray,
    k: int = 100,
    n_users: int = 1000,
) -> dict:
    inputs, truth = recall_probe(data, k, n_users)
    feeds = {n: torch.as_tensor(v) for n, v in inputs.items()}
    with torch.inference_mode():
        vecs = UserTower(model)(**feeds).numpy()
    retrieved = np.argsort(-(vecs @ embeddings.T), axis=1)[:, :k]
    hits = [len(np.intersect1d(t, r)) / k for t, r in zip(truth, retrieved, strict=True)]
    pool_hits = [len(np.intersect1d(t, pool[:k])) / k for t in truth]
    return {
        "recall_at_100": float(np.mean(hits)),
        "popularity_pool_recall_at_100": float(np.mean(pool_hits)),
        "users": len(truth),
    }
