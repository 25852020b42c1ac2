"""Side-by-side timing: PyTorch eager and ONNX Runtime sessions, same threads, same
inputs, in one process and one run."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnxruntime as ort

from inference.runtime.onnx_model import SessionSettings, open_session

Feeds = dict[str, np.ndarray]
Runner = Callable[[Feeds], Feeds]


@dataclass(frozen=True, slots=True)
class Timing:
    batch: int
    latency_ms: float  # median of the runs
    rows_per_s: float

    def as_dict(self) -> dict:
        return {"batch": self.batch, "latency_ms": self.latency_ms, "rows_per_s": self.rows_per_s}


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def session(
    path: Path, threads: int, level: str = "disable", providers: tuple[str, ...] = ()
) -> ort.InferenceSession:
    """A session opened exactly as a pod opens one (no spinning, one inter-op thread),
    at graph optimisation ``level`` (disable, basic, extended, all)."""
    settings = SessionSettings(intra_op_threads=threads, graph_optimization=level)
    if providers:
        settings = replace(settings, providers=tuple(providers))
    return open_session(path, settings)


def runner(sess: ort.InferenceSession) -> Runner:
    names = [o.name for o in sess.get_outputs()]

    def run(feeds: Feeds) -> Feeds:
        return dict(zip(names, sess.run(names, feeds), strict=True))

    return run


def measure(fn: Callable[[], object], batch: int, min_time_s: float, min_runs: int) -> Timing:
    fn()  # warm-up (first-run allocations)
    times = []
    start = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < min_time_s:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    return Timing(batch, median * 1e3, batch / median)


def compare(
    a: Callable[[], object], b: Callable[[], object], min_time_s: float, min_runs: int
) -> tuple[float, float]:
    """Median latency (ms) of ``a`` and ``b``, run alternately so that drift and noise
    from the rest of the machine fall on both alike."""
    a(), b()
    times: tuple[list[float], list[float]] = ([], [])
    start = time.perf_counter()
    while len(times[0]) < min_runs or time.perf_counter() - start < min_time_s:
        for fn, out in ((a, times[0]), (b, times[1])):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return statistics.median(times[0]) * 1e3, statistics.median(times[1]) * 1e3


def measure_parallel(
    sessions: list[ort.InferenceSession], feeds: Feeds, batch: int, seconds: float
) -> float:
    """Rows per second with one caller per session running flat out (ORT drops the GIL)."""
    for s in sessions:
        s.run(None, feeds)
    deadline = time.perf_counter() + seconds

    def loop(s: ort.InferenceSession) -> int:
        n = 0
        while time.perf_counter() < deadline:
            s.run(None, feeds)
            n += 1
        return n

    start = time.perf_counter()
    with ThreadPoolExecutor(len(sessions)) as pool:
        runs = sum(pool.map(loop, sessions))
    return runs * batch / (time.perf_counter() - start)


def torch_runner(path: Path, threads: int, input_names: list[str]):
    """PyTorch eager (``torch.inference_mode``) on the module saved by the build."""
    import torch

    torch.set_num_threads(threads)
    module = torch.load(path, weights_only=False).eval()

    def run(feeds: Feeds) -> object:
        with torch.inference_mode():
            return module(*(torch.from_numpy(feeds[n]) for n in input_names))

    return run
