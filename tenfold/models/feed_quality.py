"""The served feed, judged end to end: the gateway's own feed pipeline
(``gateway.feed.FeedPipeline``) run in process over ONNX Runtime sessions of a model
repository, for held-out simulated users, scored on the items each user finished in
the held-out part of the log (hit rate and NDCG at the page size), against the
popularity feed (the cold-start pool's first page).

The same in-process runner (``OrtModels``) is the "no network" limit of tenfold's
pipeline that the feed benchmark compares the served stack with.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from gateway.experiments import CONTROL
from gateway.feed import FeedAssets, FeedBody, FeedPipeline
from gateway.settings import FeedSettings

DEVICES = ("android", "ios", "web")
NETWORKS = ("wifi", "5g", "4g")


class OrtModels:
    """The gateway's ModelClient, answered in process by ONNX Runtime (one session per
    model, its highest version, ``threads`` intra-op threads)."""

    def __init__(self, repository: Path, threads: int = 1) -> None:
        self.repository = Path(repository)
        self.threads = threads
        self.sessions: dict[str, tuple[ort.InferenceSession, list[str], str]] = {}

    def session(self, model: str):
        if model not in self.sessions:
            versions = sorted(
                int(p.name) for p in (self.repository / model).iterdir() if p.name.isdigit()
            )
            if not versions:
                raise ValueError(f"{model}: no version in {self.repository / model}")
            options = ort.SessionOptions()
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
            path = self.repository / model / str(versions[-1]) / "model.onnx"
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            names = [o.name for o in session.get_outputs()]
            self.sessions[model] = (session, names, str(versions[-1]))
        return self.sessions[model]

    async def infer(self, model, inputs, deadline, version="", request_id=""):
        session, names, served = self.session(model)
        return dict(zip(names, session.run(None, inputs), strict=True)), served


@dataclass(frozen=True)
class Probe:
    """One held-out user's feed request and the items they finished afterwards."""

    body: FeedBody
    relevant: frozenset[int]
    #: the user's 100 best items by the simulation's true engagement (ground truth)
    best: frozenset[int]


def probes(data, n_users: int = 400, with_history: bool = True, seed: int = 5) -> list[Probe]:
    """Seeded held-out users: each one's request at the end of the training log
    (context from the simulated world, hour 20) and their held-out finishes."""
    from tenfold.models.simulate import latest_histories

    test = data.test
    positives: dict[int, set[int]] = {}
    for user, item in zip(test.user[test.finish > 0], test.item[test.finish > 0], strict=True):
        positives.setdefault(int(user), set()).add(int(item))
    users = np.array(sorted(positives))
    rng = np.random.default_rng(seed)
    users = np.sort(rng.choice(users, size=min(n_users, len(users)), replace=False))
    histories = latest_histories(data.train, data.cfg.users)
    best = np.argsort(-data.world.true_score(users), axis=1)[:, :100]
    out = []
    for user, top in zip(users, best, strict=True):
        hist = histories[user]
        history = [int(h) - 1 for h in hist[hist > 0]] if with_history else []
        body = FeedBody(
            user_id=int(user),
            count=20,
            history=history,
            context={
                "hour": 20,
                "device": DEVICES[int(data.world.user_device[user])],
                "network": NETWORKS[int(data.world.user_network[user])],
            },
        )
        out.append(Probe(body, frozenset(positives[int(user)]), frozenset(int(i) for i in top)))
    return out


def page_metrics(pages: list[list[int]], probes_: list[Probe], k: int = 20) -> dict:
    """Hit rate and NDCG at ``k`` (binary relevance) of the held-out finishes, and the
    share of each page that is among the user's 100 truly best items."""
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    hits, ndcgs, best = [], [], []
    for page, probe in zip(pages, probes_, strict=True):
        best.append(sum(item in probe.best for item in page[:k]) / k)
        gains = np.array([item in probe.relevant for item in page[:k]], dtype=float)
        hits.append(float(gains.any()))
        ideal = discounts[: min(k, len(probe.relevant))].sum()
        ndcgs.append(float((gains * discounts[: len(gains)]).sum() / ideal))
    return {
        "hit_rate": float(np.mean(hits)),
        "ndcg": float(np.mean(ndcgs)),
        "in_true_top100": float(np.mean(best)),
    }


def served_feed(repository: Path, probes_: list[Probe], **feed_settings) -> dict:
    """The pipeline's pages for the probes ("pages"), their metrics, the recall share,
    and the in-process rate (feeds/s on one thread; the limit without network)."""
    settings = FeedSettings(assets_dir=repository / "feed_user_tower", **feed_settings)
    pipeline = FeedPipeline(
        settings, FeedAssets.load(settings.assets_dir), OrtModels(repository, threads=1)
    )

    async def run_all(some):
        out = []
        for probe in some:
            out.append(await pipeline.run(probe.body, CONTROL, float("inf"), ""))
        return out

    asyncio.run(run_all(probes_[:20]))  # warm-up: sessions load, caches fill
    start = time.perf_counter()
    results = asyncio.run(run_all(probes_))
    elapsed = time.perf_counter() - start
    pages = [[item for item, _, _ in r.items] for r in results]
    sources = [source for r in results for _, _, source in r.items]
    return {
        **page_metrics(pages, probes_),
        "from_recall": sources.count("recall") / max(1, len(sources)),
        "feeds_per_s": len(probes_) / elapsed,
        "pages": pages,
    }


def popularity_feed(repository: Path, probes_: list[Probe]) -> dict:
    """The popularity baseline: everyone gets the cold-start pool's first page."""
    assets = FeedAssets.load(repository / "feed_user_tower")
    page = [int(i) for i in assets.pool[:20]]
    return page_metrics([page] * len(probes_), probes_)


def feed_report(repository: Path, data, cascades=(0, 200, 100), n_users: int = 400) -> dict:
    """The served feed's quality (with and without the client sending history) for
    each cascade size, against the popularity feed."""
    report: dict = {"users": n_users, "page": 20}
    for label, with_history in (("with_history", True), ("without_history", False)):
        probes_ = probes(data, n_users, with_history)
        rows = {"popularity": popularity_feed(repository, probes_)}
        for cascade in cascades:
            row = served_feed(repository, probes_, rank_candidates=cascade)
            row.pop("pages")
            rows[f"rank_{cascade or 'all'}"] = row
        report[label] = rows
    return report
