"""Parity judges: run a candidate model on held-out data and compare it with the fp32
reference on what matters for that kind of model (AUC and ranking for the ranker,
recall for the user tower and the recall model, PSNR for images); a raw output
difference otherwise.

The data come from ``<model>/validation.npz`` written by ``tenfold models build``
(format in docs/models.md); a model without it gets the generic judge on seeded
random inputs shaped by its config."""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from inference.protocol.datatypes import numpy_dtype
from inference.repository.spec import ModelSpec
from optimizers.errors import OptimizeError
from optimizers.quality import auc
from optimizers.settings import ParitySettings

#: runs a model: feeds -> outputs by name
Runner = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]

CHUNK = 1024
#: what numpy raises on a missing, truncated or corrupt .npz/.npy file
UNREADABLE = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)


@dataclass(frozen=True)
class Evaluation:
    """What a model produced on the held-out data, and its quality figures."""

    outputs: dict[str, np.ndarray]
    figures: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Verdict:
    figures: dict[str, float]
    #: thresholds missed, in words; empty: the pass keeps parity
    failures: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.failures


def _run_chunked(run: Runner, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    n = len(next(iter(feeds.values())))
    parts = [run({k: v[i : i + CHUNK] for k, v in feeds.items()}) for i in range(0, n, CHUNK)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _max_abs(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    return float(max(np.abs(a[k].astype(np.float64) - b[k]).max() for k in a))


class Judge:
    kind = "generic"

    def __init__(self, spec: ModelSpec, data: dict[str, np.ndarray], parity: ParitySettings):
        self.spec = spec
        self.data = data
        self.parity = parity

    def inputs(self) -> dict[str, np.ndarray]:
        """Held-out model inputs (rows are samples)."""
        return {t.name: self.data[t.name] for t in self.spec.inputs}

    def sample(self, batch: int) -> dict[str, np.ndarray]:
        """``batch`` rows of real inputs, for timing."""
        inputs = self.inputs()
        n = len(next(iter(inputs.values())))
        rows = np.arange(batch) % n
        return {k: np.ascontiguousarray(v[rows]) for k, v in inputs.items()}

    def calibration(self) -> list[dict[str, np.ndarray]]:
        """Feeds for static quantisation: the training distribution where known."""
        return [self.sample(8)]

    def evaluate(self, run: Runner) -> Evaluation:
        return Evaluation(_run_chunked(run, self.inputs()))

    def verdict(self, reference: Evaluation, candidate: Evaluation) -> Verdict:
        diff = _max_abs(reference.outputs, candidate.outputs)
        limit = self.parity.generic_max_abs_diff
        fails = (f"max abs diff {diff:.3g} > {limit:g}",) if diff > limit else ()
        return Verdict({"max_abs_diff": diff}, fails)


class RankerJudge(Judge):
    kind = "ranker"

    def evaluate(self, run: Runner) -> Evaluation:
        outputs = _run_chunked(run, self.inputs())
        figures = {
            f"auc_{name}": auc(self.data[f"label_{name}"], outputs[name].ravel())
            for name in outputs
            if f"label_{name}" in self.data
        }
        users, cands = self.data["topk_items"].shape
        feeds = {
            "user_ctx": np.repeat(self.data["topk_user_ctx"], cands, axis=0),
            "history": np.repeat(self.data["topk_history"], cands, axis=0),
            "item": self.data["topk_items"].reshape(-1, 1),
        }
        scores = _run_chunked(run, feeds)
        total = sum(v.reshape(users, cands) for v in scores.values())
        outputs["top10"] = np.argsort(-total, axis=1, kind="stable")[:, :10]
        return Evaluation(outputs, figures)

    def verdict(self, reference: Evaluation, candidate: Evaluation) -> Verdict:
        heads = [k for k in reference.outputs if k != "top10"]
        diff = _max_abs({k: reference.outputs[k] for k in heads}, candidate.outputs)
        drops = {k: reference.figures[k] - candidate.figures[k] for k in reference.figures}
        agreement = float(
            np.mean(
                [
                    len(np.intersect1d(a, b)) / 10
                    for a, b in zip(
                        reference.outputs["top10"], candidate.outputs["top10"], strict=True
                    )
                ]
            )
        )
        p = self.parity
        fails = []
        if diff > p.ranker_max_abs_diff:
            fails.append(
                f"max abs diff of head probabilities {diff:.3g} > {p.ranker_max_abs_diff:g}"
            )
        for k, drop in drops.items():
            if not drop <= p.ranker_max_auc_drop:
                fails.append(f"{k} dropped by {drop:.4f} > {p.ranker_max_auc_drop:g}")
        if agreement < p.ranker_min_top10_agreement:
            fails.append(f"top-10 agreement {agreement:.3f} < {p.ranker_min_top10_agreement:g}")
        figures = {"max_abs_diff": diff, "top10_agreement": agreement}
        figures["worst_auc_change"] = -max(drops.values(), default=0.0)
        figures |= {f"{k}_change": -d for k, d in drops.items()}
        figures |= candidate.figures
        return Verdict(figures, tuple(fails))


class _TrueTopJudge(Judge):
    """A model judged by the recall@100 of what it retrieves for held-out users against
    each one's true top 100 (``truth``): the user tower and the recall model."""

    def retrieved(self, outputs: dict[str, np.ndarray], k: int) -> np.ndarray:
        """Each user's ``k`` retrieved item ids, from the model's ``outputs``."""
        raise NotImplementedError

    def evaluate(self, run: Runner) -> Evaluation:
        outputs = _run_chunked(run, self.inputs())
        truth = self.data["truth"]
        k = truth.shape[1]
        retrieved = self.retrieved(outputs, k)
        hits = [len(np.intersect1d(t, r)) / k for t, r in zip(truth, retrieved, strict=True)]
        return Evaluation(outputs, {"recall_at_100": float(np.mean(hits))})

    def _recall_verdict(
        self, reference: Evaluation, candidate: Evaluation, figures: dict[str, float]
    ) -> Verdict:
        """``figures`` with the recall@100 change; failed when the drop passes the limit."""
        drop = reference.figures["recall_at_100"] - candidate.figures["recall_at_100"]
        limit = self.parity.tower_max_recall_drop
        fails = (f"recall@100 dropped by {drop:.4f} > {limit:g}",) if drop > limit else ()
        return Verdict(figures | {"recall_at_100_change": -drop} | candidate.figures, fails)


class TowerJudge(_TrueTopJudge):
    kind = "tower"

    def __init__(self, spec, data, parity, item_embeddings: np.ndarray):
        super().__init__(spec, data, parity)
        self.items = item_embeddings

    def retrieved(self, outputs: dict[str, np.ndarray], k: int) -> np.ndarray:
        vecs = next(iter(outputs.values()))
        return np.argpartition(-(vecs @ self.items.T), k, axis=1)[:, :k]

    def verdict(self, reference: Evaluation, candidate: Evaluation) -> Verdict:
        diff = _max_abs(reference.outputs, candidate.outputs)
        return self._recall_verdict(reference, candidate, {"max_abs_diff": diff})


class RecallJudge(_TrueTopJudge):
    """A recall model (user inputs -> embedding, recalled item ids best first, their
    scores), judged as the user tower is: recall@100 of its first 100 recalled ids
    against each held-out user's true top 100. The ids are compared as sets, never
    numerically: a pass may swap near-ties, and the difference of two item ids is a
    distance between items, not an error."""

    kind = "recall"

    def _ids(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        ids = [v for v in outputs.values() if np.issubdtype(v.dtype, np.integer)]
        if len(ids) != 1:
            raise OptimizeError(
                f"model '{self.spec.name}': a recall model has one integer output (the "
                f"recalled ids); this one has {len(ids)}"
            )
        return ids[0]

    def retrieved(self, outputs: dict[str, np.ndarray], k: int) -> np.ndarray:
        return self._ids(outputs)[:, :k]

    def verdict(self, reference: Evaluation, candidate: Evaluation) -> Verdict:
        before, after = self._ids(reference.outputs), self._ids(candidate.outputs)
        pairs = zip(before, after, strict=True)
        overlap = float(np.mean([np.intersect1d(a, b).size / a.size for a, b in pairs]))
        floats = {k: v for k, v in reference.outputs.items() if v is not before}
        diff = _max_abs(floats, candidate.outputs) if floats else 0.0
        figures = {"max_abs_diff": diff, "recalled_ids_overlap": overlap}
        return self._recall_verdict(reference, candidate, figures)


class ImageJudge(Judge):
    """Images stored as uint8 in the model's own layout (``validation.npz``): a uint8
    model takes them as they are, a float one as 0..1; outputs are compared in 0..1
    (a uint8 output's levels / 255)."""

    kind = "image"

    def __init__(self, spec, data, parity, calibration_images: int = 16):
        super().__init__(spec, data, parity)
        self.calibration_images = calibration_images
        self.name = spec.inputs[0].name
        self.dtype = numpy_dtype(spec.inputs[0].datatype)

    def _pixels(self, images: np.ndarray) -> np.ndarray:
        if np.issubdtype(self.dtype, np.floating):
            return images.astype(self.dtype) / 255.0
        return images.astype(self.dtype)

    def inputs(self) -> dict[str, np.ndarray]:
        return {self.name: self._pixels(self.data["held_out"])}

    def calibration(self) -> list[dict[str, np.ndarray]]:
        images = self._pixels(self.data["calibration"][: self.calibration_images])
        return [{self.name: img[None]} for img in images]

    def evaluate(self, run: Runner) -> Evaluation:
        feeds = self.inputs()
        images = feeds[self.name]
        parts = [run({self.name: images[i : i + 1]}) for i in range(len(images))]
        return Evaluation({k: np.concatenate([p[k] for p in parts]) for k in parts[0]})

    def verdict(self, reference: Evaluation, candidate: Evaluation) -> Verdict:
        ref = _unit(next(iter(reference.outputs.values())))
        out = _unit(next(iter(candidate.outputs.values())))
        mse = ((ref - out) ** 2).reshape(len(ref), -1).mean(axis=1)
        psnr = float(np.min(10 * np.log10(1.0 / np.maximum(mse, 1e-12))))
        limit = self.parity.image_min_psnr_db
        fails = (f"PSNR {psnr:.1f} dB < {limit:g} dB",) if psnr < limit else ()
        return Verdict({"min_psnr_db": psnr, "max_abs_diff": float(np.abs(ref - out).max())}, fails)


def _unit(pixels: np.ndarray) -> np.ndarray:
    """Pixels in 0..1 as float64: integer levels / 255, floats as they are."""
    if np.issubdtype(pixels.dtype, np.integer):
        return pixels.astype(np.float64) / 255.0
    return pixels.astype(np.float64)


def _random_inputs(spec: ModelSpec, rows: int = 64) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    data = {}
    for t in spec.inputs:
        if t.datatype == "BYTES":
            raise OptimizeError(
                f"model '{spec.name}': input '{t.name}' is {t.datatype}; without "
                "validation.npz only numeric inputs can be generated"
            )
        shape = (rows if spec.batched else 1, *(d if d > 0 else 16 for d in t.dims))
        dtype = numpy_dtype(t.datatype)
        if np.issubdtype(dtype, np.floating):
            data[t.name] = rng.standard_normal(shape).astype(dtype)
        else:  # ids and flags: zeros are valid for any table
            data[t.name] = np.zeros(shape, dtype)
    return data


def judge_for(directory: Path, spec: ModelSpec, parity: ParitySettings, calibration_images: int):
    path = directory / "validation.npz"
    if not path.exists():
        return Judge(spec, _random_inputs(spec), parity)
    try:
        with np.load(path) as npz:
            data = {k: npz[k] for k in npz.files}
    except UNREADABLE as exc:
        raise OptimizeError(
            f"model '{spec.name}': cannot read {path}: {type(exc).__name__}: {exc}"
        ) from None
    kind = str(data.pop("kind", "generic"))
    needed = {
        "ranker": [t.name for t in spec.inputs] + ["topk_user_ctx", "topk_history", "topk_items"],
        "tower": [t.name for t in spec.inputs] + ["truth"],
        "recall": [t.name for t in spec.inputs] + ["truth"],
        "image": ["calibration", "held_out"],
    }.get(kind, [t.name for t in spec.inputs])
    missing = [k for k in needed if k not in data]
    if missing:
        raise OptimizeError(f"model '{spec.name}': {path} ({kind}) has no arrays {missing}")
    try:
        if kind == "ranker":
            return RankerJudge(spec, data, parity)
        if kind == "recall":
            return RecallJudge(spec, data, parity)
        if kind == "tower":
            items = np.load(directory / "item_embeddings.npy")
            return TowerJudge(spec, data, parity, items)
        if kind == "image":
            return ImageJudge(spec, data, parity, calibration_images)
    except UNREADABLE as exc:
        raise OptimizeError(
            f"model '{spec.name}': cannot read its item embeddings: {type(exc).__name__}: {exc}"
        ) from None
    return Judge(spec, data, parity)
