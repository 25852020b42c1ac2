"""Serving forms of the trained feed models (torch extra): the same weights, arranged
so that a feed costs one recall call and one ranker call per user, with the work
that depends only on the user done once per feed instead of once per candidate.

- ``Recall`` (model ``feed_recall``): the user tower plus exact dot-product recall
  over the item embeddings (an initializer of the graph) and TopK, so the pod does the
  nearest-neighbour search in C++, batched across requests, and the gateway never
  touches the 100k-item score vector.
- ``ListRanker`` (model ``feed_list_ranker``): the MMoE ranker for one user's list of
  candidates. Each expert's and gate's first layer is linear in the concatenation
  [user features, item features, cross feature], so its user share is computed once
  per list and added to the per-candidate share. Outputs equal the row ranker's
  (``feed_ranker``) up to float rounding (the build checks it).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from tenfold.models.feed_nets import MMoERanker, UserTower


class Recall(nn.Module):
    """user_ctx [b,4], history [b,H] -> embedding [b,D], recall_ids [b,K] (0-based item
    ids, best first), recall_scores [b,K]."""

    def __init__(self, tower: UserTower, embeddings: np.ndarray, k: int) -> None:
        super().__init__()
        self.tower = tower
        self.k = int(k)
        self.register_buffer("items_t", torch.as_tensor(embeddings, dtype=torch.float32).T)

    def forward(self, user_ctx: torch.Tensor, history: torch.Tensor):
        vec = self.tower(user_ctx, history)
        top = torch.topk(vec @ self.items_t, self.k, dim=1)
        return vec, top.indices, top.values


class ListRanker(nn.Module):
    """user_ctx [b,4], history [b,H], items [b,N] (item ids + 1; 0 = padding, its
    scores are meaningless) -> p_finish, p_like, p_share, watch, each [b,N]."""

    HEADS = MMoERanker.HEADS

    def __init__(self, ranker: MMoERanker) -> None:
        super().__init__()
        self.ranker = ranker
        user_dim = ranker.users.out_dim
        firsts = [expert[0] for expert in ranker.experts]
        weight = torch.cat([f.weight for f in firsts] + [g.weight for g in ranker.gates], 0)
        bias = torch.cat([f.bias for f in firsts] + [g.bias for g in ranker.gates], 0)
        # the first layer's columns: [user features | item features | cross feature]
        self.register_buffer("w_user", weight[:, :user_dim].T.detach().clone())
        self.register_buffer("w_item", weight[:, user_dim:-1].T.detach().clone())
        self.register_buffer("w_same", weight[:, -1].detach().clone())
        self.register_buffer("bias", bias.detach().clone())
        self.hidden = firsts[0].out_features
        self.n_experts = len(firsts)

    def forward(self, user_ctx: torch.Tensor, history: torch.Tensor, items: torch.Tensor):
        r, t = self.ranker, self.ranker.tables
        b, n = items.shape
        user = r.users(user_ctx, history)  # [b, U]: once per list
        item_topic = t.topic[items]  # [b, N]
        hist_topic = t.topic[history]  # [b, H]
        same = (
            ((item_topic.unsqueeze(2) == hist_topic.unsqueeze(1)) & (history > 0).unsqueeze(1))
            .float()
            .mean(2)
        )  # [b, N]
        item_x = torch.cat(
            [r.item(items), r.topic(item_topic), r.creator(t.creator[items]), t.dense[items]],
            dim=2,
        )  # [b, N, F]
        pre = (
            (user @ self.w_user + self.bias).unsqueeze(1)
            + item_x @ self.w_item
            + same.unsqueeze(2) * self.w_same
        )  # [b, N, E*hidden + heads*E]
        width = self.n_experts * self.hidden
        hidden = torch.relu(pre[:, :, :width]).reshape(b, n, self.n_experts, self.hidden)
        gates = pre[:, :, width:].reshape(b, n, len(self.HEADS), self.n_experts)
        experts = torch.stack(
            [
                torch.relu(expert[2](hidden[:, :, e]))  # the expert's second layer + ReLU
                for e, expert in enumerate(r.experts)
            ],
            dim=2,
        )  # [b, N, E, D]
        outs = []
        for k, tower in enumerate(r.towers):
            w = torch.softmax(gates[:, :, k], dim=2).unsqueeze(-1)
            outs.append(torch.sigmoid(tower((experts * w).sum(2))).squeeze(-1))
        return tuple(outs)


def list_ranker_parity(
    list_ranker: ListRanker, inputs: dict[str, np.ndarray], per_list: int = 50
) -> float:
    """Max abs difference between the list ranker and the row ranker it came from, on
    ``inputs`` (row layout) grouped ``per_list`` candidates per user."""
    rows = len(inputs["item"]) // per_list * per_list
    ctx = torch.as_tensor(inputs["user_ctx"][:rows])
    hist = torch.as_tensor(inputs["history"][:rows])
    item = torch.as_tensor(inputs["item"][:rows])
    with torch.inference_mode():
        # each list: the user of its first row, the items of all its rows
        lists = list_ranker(ctx[::per_list], hist[::per_list], item[:, 0].reshape(-1, per_list))
        expected = list_ranker.ranker(
            ctx[::per_list].repeat_interleave(per_list, 0),
            hist[::per_list].repeat_interleave(per_list, 0),
            item,
        )
    return float(
        max(
            (got.reshape(-1) - want[:, 0]).abs().max().item()
            for got, want in zip(lists, expected, strict=True)
        )
    )
