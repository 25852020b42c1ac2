"""The in-process limit of tenfold's feed: the gateway's own ``FeedPipeline`` over ONNX
Runtime sessions in one process on one thread (no network, no HTTP, no JSON), fed the
same request mix the load generator sends (``loadtest.scenarios.FeedSessions``), and
where its time goes, model by model.

    python -m tenfold.models.feed_limit --repository var/model-repository \\
        [--seconds 5] [--history 5] [--form served|day-one]

prints one JSON object: ``feeds_per_s``, ``cpu_s`` and ``stages`` (mean ms per feed:
each model call, and the rest of the pipeline in Python/numpy). ``--form day-one``
runs the pipeline as it was before issue 13 (user tower + numpy recall over every
item in the gateway, the row ranker on every candidate), for the before/after table.
The feed benchmark (``tenfold loadtest bench feed``) runs one of these per core.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import time
from pathlib import Path

from gateway.experiments import CONTROL
from gateway.feed import FeedAssets, FeedBody, FeedPipeline
from gateway.settings import FeedSettings
from loadtest.scenarios import FeedSessions, ScenarioSpec
from tenfold.models.feed_quality import OrtModels

#: feed settings of each pipeline form (the rest are FeedSettings' defaults)
FORMS = {
    "served": {},
    "day-one": {"recall_model": "", "ranker_model": "feed_ranker", "rank_candidates": 0},
}


class TimedModels:
    """A ModelClient that adds up the time of each model's calls."""

    def __init__(self, inner: OrtModels) -> None:
        self.inner = inner
        self.seconds: dict[str, float] = {}

    async def infer(self, model, inputs, deadline, version="", request_id=""):
        start = time.perf_counter()
        answer = await self.inner.infer(model, inputs, deadline, version, request_id)
        self.seconds[model] = self.seconds.get(model, 0.0) + time.perf_counter() - start
        return answer


def measure(repository: Path, seconds: float, history: int, form: str, seed: int = 0) -> dict:
    settings = FeedSettings(assets_dir=repository / "feed_user_tower", **FORMS[form])
    assets = FeedAssets.load(settings.assets_dir)
    models = TimedModels(OrtModels(repository, threads=1))
    pipeline = FeedPipeline(settings, assets, models)
    spec = ScenarioSpec("feed", feed_history=history, items=len(assets.embeddings), seed=seed)
    sessions = FeedSessions(spec, random.Random(seed))

    async def one() -> None:
        user, seen, hist, ctx = sessions.next()
        body = FeedBody(user_id=user, count=spec.feed_count, history=hist, seen=seen, context=ctx)
        result = await pipeline.run(body, CONTROL, float("inf"), "")
        sessions.shown(user, seen, hist, [item for item, _, _ in result.items])

    async def loop(stop_after: float) -> int:
        done, end = 0, time.perf_counter() + stop_after
        while time.perf_counter() < end:
            await one()
            done += 1
        return done

    asyncio.run(loop(min(1.0, seconds / 4)))  # warm-up: sessions load, caches fill
    models.seconds.clear()
    cpu0, start = time.process_time(), time.perf_counter()
    feeds = asyncio.run(loop(seconds))
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu0
    stages = {f"model {name}": 1000 * s / feeds for name, s in sorted(models.seconds.items())}
    stages["pipeline (Python, numpy)"] = 1000 * wall / feeds - sum(stages.values())
    return {
        "form": form,
        "feeds": feeds,
        "feeds_per_s": round(feeds / wall, 1),
        "cpu_s": round(cpu, 2),
        "wall_s": round(wall, 2),
        "stages_ms": {k: round(v, 3) for k, v in stages.items()},
        "pid": os.getpid(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=Path("var/model-repository"))
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--history", type=int, default=5, help="history items per session")
    parser.add_argument("--form", choices=sorted(FORMS), default="served")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    result = measure(args.repository, args.seconds, args.history, args.form, args.seed)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
