"""``tenfold models build``: simulate logs, train the default models, export them into
a Triton-layout model repository with assets and a report (torch extra).

Repository written (see docs/models.md for the formats):

    <out>/feed_user_tower/{config.pbtxt, 1/model.onnx, item_embeddings.npy, cold_start_pool.npy,
                           item_creator.npy, feed_assets.json}
    <out>/feed_ranker/{config.pbtxt, 1/model.onnx}
    <out>/effects_cartoon/{config.pbtxt, 1/model.onnx, before_after.png, pytorch/day_one.pt}
    each model also: validation.npz and pytorch/model.pt (for ``tenfold optimize``)
    <out>/build_report.json
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from tenfold.models import effects, feed, feed_quality, validation
from tenfold.models.export import export, level_agreement, parity, topk_overlap
from tenfold.models.feed_nets import MMoERanker, UserTower
from tenfold.models.feed_serving import ListRanker, Recall, list_ranker_parity
from tenfold.models.simulate import (
    HISTORY,
    N_DEVICES,
    N_HOURS,
    N_NETWORKS,
    SimConfig,
    simulate,
)

PARITY_TOLERANCE = 1e-4
COLD_START_POOL = 500

USER_TOWER_CONFIG = """\
name: "feed_user_tower"
platform: "onnxruntime_onnx"
max_batch_size: 64
input [
  { name: "user_ctx" data_type: TYPE_INT64 dims: [ 4 ] },
  { name: "history" data_type: TYPE_INT64 dims: [ %(history)d ] }
]
output [ { name: "embedding" data_type: TYPE_FP32 dims: [ %(dim)d ] } ]
dynamic_batching { max_queue_delay_microseconds: 500 default_queue_policy { max_queue_size: 1024 } }
instance_group [ { count: 1 kind: KIND_CPU } ]
"""

RANKER_CONFIG = """\
name: "feed_ranker"
platform: "onnxruntime_onnx"
max_batch_size: 1024
input [
  { name: "user_ctx" data_type: TYPE_INT64 dims: [ 4 ] },
  { name: "history" data_type: TYPE_INT64 dims: [ %(history)d ] },
  { name: "item" data_type: TYPE_INT64 dims: [ 1 ] }
]
output [
  { name: "p_finish" data_type: TYPE_FP32 dims: [ 1 ] },
  { name: "p_like" data_type: TYPE_FP32 dims: [ 1 ] },
  { name: "p_share" data_type: TYPE_FP32 dims: [ 1 ] },
  { name: "watch" data_type: TYPE_FP32 dims: [ 1 ] }
]
dynamic_batching {
  preferred_batch_size: [ 512, 1024 ]
  max_queue_delay_microseconds: 1000
  default_queue_policy { max_queue_size: 256 }
}
instance_group [ { count: 1 kind: KIND_CPU } ]
"""


# two instances of one thread: make run's pod has 1 intra-op thread per session, and
# one instance left a core idle (effects 29.7 -> 49.8 req/s end to end, issue 14);
# uint8 HWC pixels in and out (effects.Uint8Image): what the gateway decodes and encodes;
# batches of one: the dynamic batcher's queue (and its bound), but each request runs
# alone, at once (a client may still send up to 8 images in one request). Merging does
# not pay for this network on CPU: 4 images cost 12 % more per image than 1 (one
# thread), and the 2 ms batch wait idled an instance; under load, merged batches of up
# to 8 raised latency until the gateway's limit shed (docs/benchmarks.md, "Effects")
EFFECTS_CONFIG = """\
name: "effects_cartoon"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "image" data_type: TYPE_UINT8 dims: [ -1, -1, 3 ] } ]
output [ { name: "stylized" data_type: TYPE_UINT8 dims: [ -1, -1, 3 ] } ]
dynamic_batching { preferred_batch_size: [ 1 ] default_queue_policy { max_queue_size: 64 } }
instance_group [ { count: 2 kind: KIND_CPU } ]
model_warmup [ {
  name: "256x256" batch_size: 1
  inputs { key: "image" value: { data_type: TYPE_UINT8 dims: [ 256, 256, 3 ] zero_data: true } }
} ]
"""
#: the served uint8 model against its PyTorch module: levels may differ by one where
#: the float result sits within ~1e-5 of a rounding boundary, never by more
EFFECTS_MAX_LEVEL_DIFF = 1


RECALL_K = 400
#: ONNX Runtime and PyTorch may order near-ties differently: the recalled sets agree
RECALL_OVERLAP = 0.999
RECALL_CONFIG = """\
name: "feed_recall"
platform: "onnxruntime_onnx"
max_batch_size: 64
input [
  { name: "user_ctx" data_type: TYPE_INT64 dims: [ 4 ] },
  { name: "history" data_type: TYPE_INT64 dims: [ %(history)d ] }
]
output [
  { name: "embedding" data_type: TYPE_FP32 dims: [ %(dim)d ] },
  { name: "recall_ids" data_type: TYPE_INT64 dims: [ %(k)d ] },
  { name: "recall_scores" data_type: TYPE_FP32 dims: [ %(k)d ] }
]
dynamic_batching { max_queue_delay_microseconds: 500 default_queue_policy { max_queue_size: 1024 } }
instance_group [ { count: 1 kind: KIND_CPU } ]
"""

LIST_RANKER_CONFIG = """\
name: "feed_list_ranker"
platform: "onnxruntime_onnx"
max_batch_size: 64
input [
  { name: "user_ctx" data_type: TYPE_INT64 dims: [ 4 ] },
  { name: "history" data_type: TYPE_INT64 dims: [ %(history)d ] },
  { name: "items" data_type: TYPE_INT64 dims: [ -1 ] }
]
output [
  { name: "p_finish" data_type: TYPE_FP32 dims: [ -1 ] },
  { name: "p_like" data_type: TYPE_FP32 dims: [ -1 ] },
  { name: "p_share" data_type: TYPE_FP32 dims: [ -1 ] },
  { name: "watch" data_type: TYPE_FP32 dims: [ -1 ] }
]
dynamic_batching { max_queue_delay_microseconds: 500 default_queue_policy { max_queue_size: 1024 } }
instance_group [ { count: 1 kind: KIND_CPU } ]
"""


class BuildError(Exception):
    pass


@dataclass(frozen=True)
class Built:
    report: dict
    #: the trained PyTorch modules, by model name (for parity checks by callers)
    modules: dict[str, torch.nn.Module]
    #: held-out inputs of each model, as sent to the pod
    held_out: dict[str, dict[str, np.ndarray]]


def build(out: Path, quick: bool = False, seed: int = 7, console=None) -> Built:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    cfg = SimConfig.quick() if quick else SimConfig()
    cfg = SimConfig(**{**cfg.__dict__, "seed": seed})
    epochs = {"ranker": 2, "recall": 5} if quick else {"ranker": 1, "recall": 1}
    #: the served painting network (PaintUNet) and the day-one one (EffectNet, the naive
    #: peer's model and the picture's third column)
    effect_steps, effect_crop = (900, 96) if quick else (7200, 128)
    day_one_steps = 200 if quick else 1200
    report: dict = {"quick": quick, "seed": seed, "sizes": cfg.__dict__, "timings_s": {}}
    start = time.perf_counter()
    columns = (
        TextColumn("{task.description:<22}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        tasks = {
            name: bar.add_task(name, total=1.0)
            for name in ("simulate logs", "ranker", "recall", "effects", "export + parity")
        }

        def progress(name: str, fraction: float) -> None:
            bar.update(tasks[name], completed=fraction)

        world, logs = simulate(cfg, progress=lambda f: progress("simulate logs", f))
        progress("simulate logs", 1.0)
        data = feed.FeedData.split(cfg, world, logs)
        report["timings_s"]["simulate"] = time.perf_counter() - start
        report["impressions"] = {"train": len(data.train), "test": len(data.test)}

        ranker = feed.train_ranker(data, epochs["ranker"], progress, seed)
        progress("ranker", 1.0)
        report["ranker"] = feed.evaluate_ranker(ranker, data)
        two_tower = feed.train_two_tower(data, epochs["recall"], progress, seed)
        progress("recall", 1.0)
        embeddings = feed.item_embeddings(two_tower, cfg.items)
        pool = feed.cold_start_pool(data, COLD_START_POOL)
        report["recall"] = feed.evaluate_recall(two_tower, data, embeddings, pool)
        # the bar: the day-one network first (a step of it costs ~2x the served one's)
        share = 2 * day_one_steps / (2 * day_one_steps + effect_steps)
        day_one, photos = effects.train(
            day_one_steps, 96, lambda f: progress("effects", share * f), seed
        )
        effect_net, _ = effects.train(
            effect_steps,
            effect_crop,
            lambda f: progress("effects", share + (1 - share) * f),
            seed,
            net=effects.PaintUNet,
            augment=True,
        )
        progress("effects", 1.0)
        report["effects"] = effects.evaluate(effect_net, photos)
        report["effects_day_one"] = effects.evaluate(day_one, photos)
        report["timings_s"]["train"] = time.perf_counter() - start

        modules, held_out = _export_feed(out, data, ranker, two_tower, embeddings, pool)
        effects_dir = out / "effects_cartoon"
        images = np.concatenate([effects.to_hwc(img) for img in photos.values()])
        served = effects.Uint8Image(effect_net).eval()
        export(
            served,
            {"image": images},
            ["stylized"],
            effects_dir / "1" / "model.onnx",
            dynamic={
                "image": {0: "batch", 1: "height", 2: "width"},
                "stylized": {0: "batch", 1: "height", 2: "width"},
            },
        )
        (effects_dir / "config.pbtxt").write_text(EFFECTS_CONFIG)
        effects.before_after(
            {"day one": day_one, "served": effect_net}, photos, effects_dir / "before_after.png"
        )
        effects_parity, report["effects_levels"] = _effects_parity(
            effect_net, served, effects_dir, images
        )
        modules["effects_cartoon"] = served
        held_out["effects_cartoon"] = {"image": images}
        report["parity_max_abs_diff"] = {
            name: parity(modules[name], out / name / "1" / "model.onnx", held_out[name])
            for name in modules
            if name != "effects_cartoon"  # uint8 out: its network's parity, and levels
        }
        report["parity_max_abs_diff"]["effects_cartoon"] = effects_parity
        overlap = topk_overlap(
            modules["feed_recall"],
            out / "feed_recall" / "1" / "model.onnx",
            held_out["feed_recall"],
            1,
        )
        report["recall_ids_overlap"] = overlap
        if overlap < RECALL_OVERLAP:
            raise BuildError(
                f"feed_recall: ONNX and PyTorch agree on {overlap:.4f} of recalled items "
                f"(< {RECALL_OVERLAP})"
            )
        # the list ranker is the row ranker rearranged: the same scores
        report["parity_max_abs_diff"]["feed_list_ranker_vs_rows"] = list_ranker_parity(
            modules["feed_list_ranker"], held_out["feed_ranker"]
        )
        # the served feed, end to end in process (tenfold/models/feed_quality.py)
        report["served_feed"] = feed_quality.feed_report(out, data, n_users=300)
        validation.write_ranker(out / "feed_ranker", data, seed)
        probe = feed.recall_probe(data)  # a sort over every item per user: made once
        validation.write_true_top(out / "feed_user_tower", "tower", probe)
        validation.write_image(effects_dir, seed, photos)
        validation.write_true_top(out / "feed_recall", "recall", probe)
        validation.write_inputs(out / "feed_list_ranker", held_out["feed_list_ranker"])
        for name, module in modules.items():
            validation.save_module(module, out / name)
        validation.save_module(day_one, effects_dir, "day_one.pt")
        progress("export + parity", 1.0)
    report["timings_s"]["total"] = time.perf_counter() - start
    levels = report["effects_levels"]["max_level_diff"]
    if levels > EFFECTS_MAX_LEVEL_DIFF:
        raise BuildError(
            f"effects_cartoon: the served uint8 model differs from PyTorch by {levels} "
            f"levels (> {EFFECTS_MAX_LEVEL_DIFF})"
        )
    forms = report["effects_levels"]["forms_max_level_diff"]
    if forms > EFFECTS_MAX_LEVEL_DIFF:
        raise BuildError(
            f"effects_cartoon: the served form (effects.Uint8Image) is {forms} levels from "
            f"the network's own forward (> {EFFECTS_MAX_LEVEL_DIFF})"
        )
    for name, diff in report["parity_max_abs_diff"].items():
        if not diff <= PARITY_TOLERANCE:
            raise BuildError(
                f"{name}: ONNX differs from PyTorch by {diff:.2e} (> {PARITY_TOLERANCE})"
            )
    (out / "build_report.json").write_text(json.dumps(report, indent=2))
    return Built(report, modules, held_out)


def _effects_parity(net, served, effects_dir: Path, images: np.ndarray) -> tuple[float, dict]:
    """The painting network's float parity (exported alone, to a temporary file) and the
    served uint8 model's agreement with PyTorch, in levels."""
    chw = np.ascontiguousarray(images.transpose(0, 3, 1, 2), np.float32) / 255.0
    with tempfile.TemporaryDirectory() as work:
        network = Path(work) / "network.onnx"
        export(
            net,
            {"image": chw},
            ["stylized"],
            network,
            dynamic={"image": {0: "batch", 2: "height", 3: "width"}},
        )
        float_diff = parity(net, network, {"image": chw})
    levels = level_agreement(served, effects_dir / "1" / "model.onnx", {"image": images})
    # the served form (exp instead of logit, shuffles as convolutions) against the
    # network's own forward, both in PyTorch
    with torch.inference_mode():
        pixels = torch.from_numpy(images)
        forms = served(pixels).to(torch.int16) - served.reference(pixels).to(torch.int16)
    levels["forms_max_level_diff"] = int(forms.abs().max())
    levels["forms_share_equal"] = float((forms == 0).double().mean())
    return float_diff, levels


def _export_feed(out, data, ranker, two_tower, embeddings, pool):
    tower = UserTower(two_tower).eval()
    held_out = data.test.take(np.arange(min(512, len(data.test))))
    user_inputs = {"user_ctx": data.user_ctx(held_out), "history": held_out.history}
    tower_dir = out / "feed_user_tower"
    export(tower, user_inputs, ["embedding"], tower_dir / "1" / "model.onnx")
    (tower_dir / "config.pbtxt").write_text(
        USER_TOWER_CONFIG % {"history": HISTORY, "dim": embeddings.shape[1]}
    )
    np.save(tower_dir / "item_embeddings.npy", embeddings)
    np.save(tower_dir / "cold_start_pool.npy", pool)
    np.save(tower_dir / "item_creator.npy", data.world.item_creator.astype(np.int64))
    manifest = {
        "users": data.cfg.users,
        "items": data.cfg.items,
        "history": HISTORY,
        "recall_k": RECALL_K,
        "rankers": {"feed_ranker": "rows", "feed_list_ranker": "lists"},
    }
    (tower_dir / "feed_assets.json").write_text(json.dumps(manifest, indent=2))
    ranker_inputs = feed.ranker_inputs(data, held_out)
    ranker_dir = out / "feed_ranker"
    export(ranker, ranker_inputs, list(MMoERanker.HEADS), ranker_dir / "1" / "model.onnx")
    (ranker_dir / "config.pbtxt").write_text(RANKER_CONFIG % {"history": HISTORY})

    modules, held = export_serving_forms(out, tower, ranker, embeddings, user_inputs, ranker_inputs)
    write_value_ranges(out, data.cfg.users, data.cfg.items)
    modules.update({"feed_user_tower": tower, "feed_ranker": ranker})
    held.update({"feed_user_tower": user_inputs, "feed_ranker": ranker_inputs})
    return modules, held


#: the feed models' integer inputs (docs/models.md): ids + 1 with 0 for unknown/padding
FEED_INPUTS = {
    "feed_user_tower": ("user_ctx", "history"),
    "feed_ranker": ("user_ctx", "history", "item"),
    "feed_recall": ("user_ctx", "history"),
    "feed_list_ranker": ("user_ctx", "history", "items"),
}


def write_value_ranges(out: Path, users: int, items: int) -> None:
    """Declare each feed input's valid values in its config (``tenfold.value_range.*``
    parameters): the pod refuses others with 400 instead of letting ONNX Runtime fail
    the whole batch on a too-large id or wrap a negative one onto another row."""
    ranges = {
        "user_ctx": f"0:{users},0:{N_HOURS - 1},0:{N_DEVICES - 1},0:{N_NETWORKS - 1}",
        "history": f"0:{items}",
        "item": f"0:{items}",
        "items": f"0:{items}",
    }
    for model, inputs in FEED_INPUTS.items():
        with (out / model / "config.pbtxt").open("a") as config:
            for name in inputs:
                config.write(
                    f'parameters {{ key: "tenfold.value_range.{name}" '
                    f'value {{ string_value: "{ranges[name]}" }} }}\n'
                )


def export_serving_forms(out, tower, ranker, embeddings, user_inputs, ranker_inputs):
    """Export ``feed_recall`` and ``feed_list_ranker`` (tenfold/models/feed_serving.py:
    the trained tower and ranker rearranged, same weights) into ``out``; their modules
    and held-out inputs by model name."""
    recall = Recall(tower, embeddings, RECALL_K).eval()
    recall_dir = out / "feed_recall"
    export(
        recall,
        user_inputs,
        ["embedding", "recall_ids", "recall_scores"],
        recall_dir / "1" / "model.onnx",
    )
    (recall_dir / "config.pbtxt").write_text(
        RECALL_CONFIG % {"history": HISTORY, "dim": embeddings.shape[1], "k": RECALL_K}
    )
    lists = ListRanker(ranker).eval()
    per_list = 32
    rows = len(ranker_inputs["item"]) // per_list * per_list
    list_inputs = {
        "user_ctx": ranker_inputs["user_ctx"][:rows:per_list],
        "history": ranker_inputs["history"][:rows:per_list],
        "items": ranker_inputs["item"][:rows, 0].reshape(-1, per_list),
    }
    candidates = {0: "batch", 1: "candidates"}
    export(
        lists,
        list_inputs,
        list(ListRanker.HEADS),
        out / "feed_list_ranker" / "1" / "model.onnx",
        dynamic={
            "user_ctx": {0: "batch"},
            "history": {0: "batch"},
            "items": candidates,
            **{head: candidates for head in ListRanker.HEADS},
        },
    )
    (out / "feed_list_ranker" / "config.pbtxt").write_text(
        LIST_RANKER_CONFIG % {"history": HISTORY}
    )
    modules = {"feed_recall": recall, "feed_list_ranker": lists}
    held = {"feed_recall": user_inputs, "feed_list_ranker": list_inputs}
    return modules, held
