"""PyTorch definitions of the feed models (torch extra only).

Both models take the same user side: ``user_ctx`` INT64[b,4] = (user id + 1, hour,
device, network; user id 0 = unknown) and ``history`` INT64[b,20] (recent positive
item ids + 1, 0-padded). Item side features (topic, creator, age, popularity) are
constant tables inside the models, looked up by item id, so callers send ids only.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from tenfold.models.simulate import N_DEVICES, N_HOURS, N_NETWORKS


class ItemTables(nn.Module):
    def __init__(self, topic, creator, dense) -> None:
        super().__init__()
        pad = lambda t: torch.cat([t[:1] * 0, t])  # noqa: E731  row 0 = padding / unknown
        self.register_buffer("topic", pad(torch.as_tensor(topic, dtype=torch.long)))
        self.register_buffer("creator", pad(torch.as_tensor(creator, dtype=torch.long) + 1))
        self.register_buffer("dense", pad(torch.as_tensor(dense, dtype=torch.float32)))


class UserEncoder(nn.Module):
    """Embeds user id, pooled history (item ids and their topics) and context."""

    def __init__(
        self,
        n_users: int,
        item_emb: nn.Embedding,
        topic_emb: nn.Embedding,
        tables: ItemTables,
        dim: int = 16,
        sparse: bool = False,
    ) -> None:
        super().__init__()
        self.user = nn.Embedding(n_users + 1, dim, sparse=sparse)
        self.item_emb = item_emb
        self.topic_emb = topic_emb
        self.tables = tables
        self.hour = nn.Embedding(N_HOURS, 4)
        self.device = nn.Embedding(N_DEVICES, 2)
        self.network = nn.Embedding(N_NETWORKS, 2)
        self.out_dim = dim + item_emb.embedding_dim + topic_emb.embedding_dim + 8

    def forward(self, user_ctx: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        mask = (history > 0).float().unsqueeze(-1)
        count = mask.sum(1).clamp(min=1.0)
        pooled = (self.item_emb(history) * mask).sum(1) / count
        topics = (self.topic_emb(self.tables.topic[history]) * mask).sum(1) / count
        return torch.cat(
            [
                self.user(user_ctx[:, 0]),
                pooled,
                topics,
                self.hour(user_ctx[:, 1]),
                self.device(user_ctx[:, 2]),
                self.network(user_ctx[:, 3]),
            ],
            dim=1,
        )


def mlp(sizes: list[int], last_act: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2 or last_act:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class TwoTower(nn.Module):
    def __init__(self, n_users, n_items, n_topics, n_creators, tables: ItemTables, dim=32):
        super().__init__()
        self.tables = tables
        # the id tables are large and each batch touches few rows: sparse gradients
        self.item_id = nn.Embedding(n_items + 1, 32, padding_idx=0, sparse=True)
        self.hist_emb = nn.Embedding(n_items + 1, 16, padding_idx=0, sparse=True)
        self.topic = nn.Embedding(n_topics, 8)
        self.creator = nn.Embedding(n_creators + 1, 8)
        self.users = UserEncoder(n_users, self.hist_emb, self.topic, tables, sparse=True)
        self.user_mlp = mlp([self.users.out_dim, 64, dim])
        self.item_mlp = mlp([32 + 8 + 8 + tables.dense.shape[1], 64, dim])

    def user_vec(self, user_ctx, history):
        return nn.functional.normalize(self.user_mlp(self.users(user_ctx, history)), dim=1)

    def item_vec(self, items):  # items: ids + 1
        t = self.tables
        x = torch.cat(
            [
                self.item_id(items),
                self.topic(t.topic[items]),
                self.creator(t.creator[items]),
                t.dense[items],
            ],
            dim=1,
        )
        return nn.functional.normalize(self.item_mlp(x), dim=1)


class UserTower(nn.Module):
    """What is exported: user_ctx, history -> embedding [b, dim]."""

    def __init__(self, model: TwoTower) -> None:
        super().__init__()
        self.model = model

    def forward(self, user_ctx, history):
        return self.model.user_vec(user_ctx, history)


class MMoERanker(nn.Module):
    """Multi-gate mixture of experts with heads p_finish, p_like, p_share, watch."""

    HEADS = ("p_finish", "p_like", "p_share", "watch")

    def __init__(
        self,
        n_users,
        n_items,
        n_topics,
        n_creators,
        tables: ItemTables,
        experts: int = 4,
        expert_dim: int = 64,
    ) -> None:
        super().__init__()
        self.tables = tables
        self.item = nn.Embedding(n_items + 1, 16, padding_idx=0, sparse=True)
        self.topic = nn.Embedding(n_topics, 8)
        self.creator = nn.Embedding(n_creators + 1, 8)
        self.users = UserEncoder(n_users, self.item, self.topic, tables, sparse=True)
        d = self.users.out_dim + 16 + 8 + 8 + tables.dense.shape[1] + 1
        self.experts = nn.ModuleList(
            mlp([d, 128, expert_dim], last_act=True) for _ in range(experts)
        )
        self.gates = nn.ModuleList(nn.Linear(d, experts) for _ in self.HEADS)
        self.towers = nn.ModuleList(mlp([expert_dim, 32, 1]) for _ in self.HEADS)

    def forward(self, user_ctx, history, item):
        items = item[:, 0]
        t = self.tables
        user = self.users(user_ctx, history)
        # how often the user's history hits this item's topic: a cheap cross feature
        hist_topics = t.topic[history]
        same = (
            ((hist_topics == t.topic[items].unsqueeze(1)) & (history > 0))
            .float()
            .mean(1, keepdim=True)
        )
        x = torch.cat(
            [
                user,
                self.item(items),
                self.topic(t.topic[items]),
                self.creator(t.creator[items]),
                t.dense[items],
                same,
            ],
            dim=1,
        )
        experts = torch.stack([e(x) for e in self.experts], dim=1)  # [b, E, D]
        outs = []
        for gate, tower in zip(self.gates, self.towers, strict=True):
            w = torch.softmax(gate(x), dim=1).unsqueeze(-1)
            outs.append(torch.sigmoid(tower((experts * w).sum(1))))
        return tuple(outs)
