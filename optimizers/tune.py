"""Tuning: measure thread/instance splits and batch sizes on this machine and write the
best into the model's config.pbtxt (Triton's fields, which tenfold pods honour too)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format

from inference.repository.model import THREADS_PARAMETER
from optimizers.bench import cores, measure, measure_parallel, session
from optimizers.judges import Judge
from protos.kserve.v2 import model_config_pb2


@dataclass(frozen=True)
class Tuning:
    threads: int
    instances: int
    preferred_batch_sizes: tuple[int, ...]
    #: every split tried: {"threads", "instances", "rows_per_s"}
    candidates: tuple[dict, ...]
    #: rows/s by batch size with the chosen split (one caller)
    by_batch: dict[int, float]


def _batch_grid(max_batch: int) -> list[int]:
    grid = [b for b in (1, 8, 32, 128, 512, 1024, 4096) if b <= max(max_batch, 1)]
    return grid or [1]


def tune(
    path: Path,
    judge: Judge,
    max_batch: int,
    level: str,
    seconds: float = 0.3,
    pod_cores: int = 0,
) -> Tuning:
    """Pick threads x instances (at most one thread per core in all, of ``pod_cores``
    or every core) by rows/s at the largest batch, then the smallest batch that reaches
    90% of the best rows/s."""
    n = min(pod_cores, cores()) if pod_cores else cores()
    grid = _batch_grid(max_batch)
    big = judge.sample(grid[-1])
    candidates = []
    for threads in range(1, n + 1):
        for instances in range(1, n // threads + 1):
            sessions = [session(path, threads, level) for _ in range(instances)]
            rate = measure_parallel(sessions, big, grid[-1], seconds)
            candidates.append({"threads": threads, "instances": instances, "rows_per_s": rate})
    best = max(candidates, key=lambda c: c["rows_per_s"])
    one = session(path, best["threads"], level)
    by_batch = {}
    for b in grid:
        feeds = judge.sample(b)
        by_batch[b] = measure(lambda f=feeds: one.run(None, f), b, seconds, 3).rows_per_s
    top = max(by_batch.values())
    knee = next(b for b in grid if by_batch[b] >= 0.9 * top)
    preferred = tuple(sorted({knee, grid[-1]})) if max_batch > 0 else ()
    return Tuning(best["threads"], best["instances"], preferred, tuple(candidates), by_batch)


def tuned_config(
    config: model_config_pb2.ModelConfig,
    target: str,
    tuning: Tuning | None,
    optimized_offline: bool,
) -> model_config_pb2.ModelConfig:
    """A copy of ``config`` with the tuning and the serving hints of the passes."""
    out = model_config_pb2.ModelConfig()
    out.CopyFrom(config)
    if optimized_offline:
        # the file is already optimised: pods run only the basic level at load
        out.optimization.graph.level = -1
    if target == "gpu":
        del out.instance_group[:]
        out.instance_group.add(count=1, kind=model_config_pb2.ModelInstanceGroup.KIND_GPU)
        accel = out.optimization.execution_accelerators
        del accel.gpu_execution_accelerator[:]
        trt = accel.gpu_execution_accelerator.add(name="tensorrt")
        trt.parameters["precision_mode"] = "FP16"
        trt.parameters["max_workspace_size_bytes"] = str(1 << 30)
        return out
    if tuning is not None:
        del out.instance_group[:]
        out.instance_group.add(
            count=tuning.instances, kind=model_config_pb2.ModelInstanceGroup.KIND_CPU
        )
        out.parameters[THREADS_PARAMETER].string_value = str(tuning.threads)
        if out.HasField("dynamic_batching") and tuning.preferred_batch_sizes:
            del out.dynamic_batching.preferred_batch_size[:]
            out.dynamic_batching.preferred_batch_size.extend(tuning.preferred_batch_sizes)
    return out


def config_text(config: model_config_pb2.ModelConfig) -> str:
    return text_format.MessageToString(config)
