"""Validation data and PyTorch modules written beside each model, for the optimizers
(``tenfold optimize``): held-out inputs with what makes them meaningful (labels, true
preferences, photos), so a pass can be judged on quality, not only on raw outputs.

``<model>/validation.npz`` (numpy ``savez_compressed``; formats in docs/models.md):

- ``kind``: "ranker", "tower", "recall", "image" or "generic" (0-d string array)
- ranker: ``user_ctx``, ``history``, ``item`` (held-out impressions, model inputs),
  ``label_<head>`` FP32 0/1 per head; ``topk_user_ctx`` [U,4], ``topk_history`` [U,20],
  ``topk_items`` [U,C] (candidate item ids + 1 per user, for top-10 agreement)
- tower: ``user_ctx``, ``history`` [U,...] and ``truth`` [U,100] (each user's true top
  items, ids into ``item_embeddings.npy``)
- recall: the same arrays as the tower's, for the recall model (``feed_recall``), which
  is judged on the recall@100 of the ids it returns
- image: ``calibration`` and ``held_out`` UINT8 in the model's input layout, here
  [N,256,256,3] (training-distribution images for static quantisation; photos never
  trained on, for parity); a float model gets them as 0..1
- generic: the model's held-out inputs by input name; a pass is judged by the largest
  difference of any output (the serving form ``feed_list_ranker``, whose ranking
  quality is its source model's)

``<model>/pytorch/model.pt``: the trained module (``torch.save``), the PyTorch eager
baseline of the optimizer's report.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tenfold.models import effects, feed
from tenfold.models.feed_nets import MMoERanker

RANKER_IMPRESSIONS = 30_000
TOPK_USERS, TOPK_CANDIDATES = 200, 300


def save_module(module: torch.nn.Module, model_dir: Path, name: str = "model.pt") -> None:
    (model_dir / "pytorch").mkdir(parents=True, exist_ok=True)
    torch.save(module, model_dir / "pytorch" / name)


def _save(model_dir: Path, kind: str, arrays: dict[str, np.ndarray]) -> None:
    np.savez_compressed(model_dir / "validation.npz", kind=np.array(kind), **arrays)


def write_ranker(model_dir: Path, data: feed.FeedData, seed: int) -> None:
    rng = np.random.default_rng(seed + 101)
    test = data.test
    rows = np.sort(rng.choice(len(test), min(RANKER_IMPRESSIONS, len(test)), replace=False))
    held_out = test.take(rows)
    arrays = dict(feed.ranker_inputs(data, held_out))
    labels = {
        "p_finish": held_out.finish,
        "p_like": held_out.like,
        "p_share": held_out.share,
        "watch": held_out.watch > 0.5,
    }
    arrays |= {f"label_{h}": labels[h].astype(np.float32) for h in MMoERanker.HEADS}
    users = rng.choice(len(test), TOPK_USERS, replace=False)
    probe = test.take(users)
    arrays["topk_user_ctx"] = data.user_ctx(probe)
    arrays["topk_history"] = probe.history.astype(np.int64)
    arrays["topk_items"] = (
        rng.choice(data.cfg.items, (TOPK_USERS, TOPK_CANDIDATES), replace=True).astype(np.int64) + 1
    )
    _save(model_dir, "ranker", arrays)


def write_inputs(model_dir: Path, inputs: dict[str, np.ndarray], rows: int = 256) -> None:
    _save(model_dir, "generic", {k: np.ascontiguousarray(v[:rows]) for k, v in inputs.items()})


def write_true_top(
    model_dir: Path, kind: str, probe: tuple[dict[str, np.ndarray], np.ndarray]
) -> None:
    """``probe`` (``feed.recall_probe``: held-out users' inputs and true top items) as
    ``kind`` "tower" or "recall" data; one probe serves both models."""
    inputs, truth = probe
    _save(model_dir, kind, {**inputs, "truth": truth.astype(np.int64)})


def write_image(model_dir: Path, seed: int, held_out: dict[str, np.ndarray]) -> None:
    """Training-distribution images for calibration and the held-out photos, as the
    served model takes them: uint8 [n, 256, 256, 3]."""
    calibration = [effects.to_hwc(img) for img in effects.training_images(seed)]
    _save(
        model_dir,
        "image",
        {
            "calibration": np.concatenate(calibration),
            "held_out": np.concatenate([effects.to_hwc(img) for img in held_out.values()]),
        },
    )
