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
  per list and added to the per-candidate share. The experts' second layers, the
  heads' mixtures and the heads' towers each run as one batched matmul over all
  experts or heads (the row ranker loops over them; after onnxslim's cleanup 126
  graph nodes against 73, and about a third less time a list on one core). Outputs
  equal the row ranker's (``feed_ranker``) up to float rounding (the build checks it).
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

        def keep(name: str, value: torch.Tensor) -> None:
            self.register_buffer(name, value.detach().clone())

        # the first layer's columns: [user features | item features, cross feature]
        keep("w_user", weight[:, :user_dim].T)
        keep("w_item", weight[:, user_dim:].T)
        keep("bias", bias)
        # the experts' second layers and the towers, stacked: one batched matmul each
        keep("w_expert", torch.stack([e[2].weight.T for e in ranker.experts]))  # [E, h, D]
        keep("b_expert", torch.stack([e[2].bias for e in ranker.experts]).unsqueeze(1))
        keep("w_tower1", torch.stack([t[0].weight.T for t in ranker.towers]))  # [K, D, h']
        keep("b_tower1", torch.stack([t[0].bias for t in ranker.towers]).unsqueeze(1))
        keep("w_tower2", torch.stack([t[2].weight.T for t in ranker.towers]))  # [K, h', 1]
        keep("b_tower2", torch.stack([t[2].bias for t in ranker.towers]).unsqueeze(1))
        self.hidden = firsts[0].out_features
        self.n_experts = len(firsts)

    def forward(self, user_ctx: torch.Tensor, history: torch.Tensor, items: torch.Tensor):
        r, t = self.ranker, self.ranker.tables
        b, n = items.shape
        experts, heads = self.n_experts, len(self.HEADS)
        user = r.users(user_ctx, history)  # [b, U]: once per list
        item_topic = t.topic[items]  # [b, N]
        hist_topic = t.topic[history]  # [b, H]
        same = (
            ((item_topic.unsqueeze(2) == hist_topic.unsqueeze(1)) & (history > 0).unsqueeze(1))
            .float()
            .mean(2, keepdim=True)
        )  # [b, N, 1]
        item_x = torch.cat(
            [r.item(items), r.topic(item_topic), r.creator(t.creator[items]), t.dense[items], same],
            dim=2,
        )  # [b, N, F + 1]
        pre = item_x @ self.w_item + (user @ self.w_user + self.bias).unsqueeze(1)
        pre = pre.reshape(b * n, -1)  # [bN, E*hidden + heads*E]
        width = experts * self.hidden
        hidden = torch.relu(pre[:, :width]).reshape(b * n, experts, self.hidden)
        # every expert's second layer at once: [E, bN, hidden] @ [E, hidden, D]
        out = torch.relu(hidden.transpose(0, 1) @ self.w_expert + self.b_expert)
        gates = torch.softmax(pre[:, width:].reshape(b * n, heads, experts), dim=2)
        # each head's mixture of the experts: [bN, heads, E] @ [bN, E, D] -> [heads, bN, D]
        mixed = (gates @ out.transpose(0, 1)).transpose(0, 1)
        towers = torch.relu(mixed @ self.w_tower1 + self.b_tower1)
        scores = torch.sigmoid(towers @ self.w_tower2 + self.b_tower2).reshape(heads, b, n)
        return tuple(scores[k] for k in range(heads))


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
