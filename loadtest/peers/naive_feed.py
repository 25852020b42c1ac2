"""The "naive PyTorch feed" peer: what a team writes on day one. An aiohttp server
whose ``POST /v1/feed`` handler runs the whole feed pipeline in PyTorch eager, one
request at a time, no batching: the user tower, a dot product against every item
embedding and TopK, the cold-start pool mixed in, seen items dropped, the row ranker
(``feed_ranker``, the user's features repeated for each of the ~500 candidates), the
weighted score and the top items with at most N per creator. Same trained weights
(``<model>/pytorch/model.pt`` of the repository), same request body and answer shape
as tenfold's ``/v1/feed`` so the same load reaches both.

    python -m loadtest.peers.naive_feed --repository DIR [--threads 1] [--ready-file F]
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from aiohttp import web

from loadtest.peers.serving import peer_arguments, serve
from servicekit.web import json_response

HEADS = ("p_finish", "p_like", "p_share", "watch")
WEIGHTS = torch.tensor([1.0, 2.0, 4.0, 1.0])  # tenfold's default feed.weights
DEVICES, NETWORKS = ["android", "ios", "web"], ["wifi", "5g", "4g"]


class NaiveFeed:
    def __init__(self, repository: Path, recall: int = 400, pool: int = 100) -> None:
        assets = repository / "feed_user_tower"
        manifest = json.loads((assets / "feed_assets.json").read_text())
        self.users, self.history = int(manifest["users"]), int(manifest["history"])
        load = lambda d: torch.load(d / "pytorch" / "model.pt", weights_only=False).eval()  # noqa: E731
        self.tower = load(assets)
        self.ranker = load(repository / "feed_ranker")
        self.embeddings = torch.from_numpy(np.load(assets / "item_embeddings.npy"))
        self.pool = torch.from_numpy(np.load(assets / "cold_start_pool.npy"))
        self.creators = np.load(assets / "item_creator.npy")
        self.recall, self.pool_size = recall, pool

    def feed(self, body: dict) -> list[dict]:
        user_id = str(body["user_id"])
        user = int(user_id) if user_id.isdigit() and int(user_id) < self.users else None
        ctx = body.get("context", {})
        history = torch.zeros((1, self.history), dtype=torch.long)
        recent = body.get("history", [])[-self.history :]
        history[0, : len(recent)] = torch.tensor(recent, dtype=torch.long) + 1
        user_ctx = torch.tensor(
            [
                [
                    0 if user is None else user + 1,
                    int(ctx.get("hour", 12)),
                    DEVICES.index(ctx.get("device", "android")),
                    NETWORKS.index(ctx.get("network", "wifi")),
                ]
            ]
        )
        with torch.inference_mode():
            if user is None and not recent:
                ids = self.pool
            else:
                vec = self.tower(user_ctx, history)[0]
                recalled = torch.topk(self.embeddings @ vec, self.recall).indices
                pool = self.pool[: self.pool_size]
                ids = torch.cat([recalled, pool[~torch.isin(pool, recalled)]])
            seen = body.get("seen", [])
            if seen:
                ids = ids[~torch.isin(ids, torch.tensor(seen, dtype=torch.long))]
            n = len(ids)
            heads = self.ranker(user_ctx.repeat(n, 1), history.repeat(n, 1), (ids + 1).unsqueeze(1))
            scores = torch.cat(heads, 1) @ WEIGHTS
        order = torch.argsort(scores, descending=True).numpy()
        ids_np, scores_np = ids.numpy(), scores.numpy()
        items, per = [], {}
        for pos in order:
            creator = int(self.creators[ids_np[pos]])
            if per.get(creator, 0) < 2:
                per[creator] = per.get(creator, 0) + 1
                items.append({"item_id": int(ids_np[pos]), "score": float(scores_np[pos])})
                if len(items) == int(body.get("count", 20)):
                    break
        return items


def create_app(feed: NaiveFeed) -> web.Application:
    async def ready(request: web.Request) -> web.Response:
        return json_response({"ready": True})

    async def handle(request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        return json_response({"items": feed.feed(body)})  # on the event loop, one at a time

    app = web.Application()
    app.router.add_get("/readyz", ready)
    app.router.add_post("/v1/feed", handle)
    return app


def main() -> None:
    args = peer_arguments(__doc__.split("\n\n")[0]).parse_args()
    torch.set_num_threads(args.threads)
    serve(create_app(NaiveFeed(args.repository)), "naive feed", args.port, args.ready_file)


if __name__ == "__main__":
    main()
