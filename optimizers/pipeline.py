"""``tenfold optimize``: run the passes, keep those that hold parity, write the result as
a new model version with its manifest, tune the config, check a pod loads it, and
measure every stage side by side against PyTorch eager."""

from __future__ import annotations

import json
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import onnxruntime as ort

from inference.repository.errors import RepositoryError
from inference.repository.loader import load_model
from inference.repository.model import read_model
from inference.runtime.onnx_model import SessionSettings
from optimizers import bench, report
from optimizers.errors import OptimizeError
from optimizers.judges import Evaluation, Judge, judge_for
from optimizers.passes import PassContext, plan
from optimizers.settings import OptimizeSettings
from optimizers.target import ModelTarget, open_target
from optimizers.tune import Tuning, config_text, tune, tuned_config

MANIFEST = "optimize_manifest.json"
#: passes that change numerics: they must pay in speed, not only hold parity
LOSSY = frozenset({"int8", "fp16"})
#: passes whose parity is only meaningful on a GPU
NEEDS_GPU = frozenset({"fp16"})
Step = Callable[[str], None]


@dataclass
class PassRecord:
    name: str
    #: kept, rejected (missed a threshold), failed (raised), unverified (not checkable here)
    status: str
    detail: str = ""
    seconds: float = 0.0
    parity: dict[str, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)


@dataclass
class Outcome:
    manifest: dict
    #: the new version, or None when no pass was kept
    version: int | None

    @property
    def passes(self) -> list[dict]:
        return self.manifest["passes"]


def _providers(target: str) -> tuple[str, ...]:
    if target == "gpu" and "CUDAExecutionProvider" in ort.get_available_providers():
        return ("CUDAExecutionProvider", "CPUExecutionProvider")
    return ("CPUExecutionProvider",)


def _evaluate(judge: Judge, path: Path, threads: int, providers=()) -> Evaluation:
    return judge.evaluate(bench.runner(bench.session(path, threads, "disable", providers)))


def speed_failures(
    name: str, previous_ms: float, ms: float, batch: int, s: OptimizeSettings
) -> list[str]:
    """The speed gate, for a pass that holds parity: why it is rejected (empty: kept).

    ``previous_ms`` is the median latency of the model as kept so far, ``ms`` the
    candidate's, at ``batch``. A lossy pass must be ``lossy_min_speedup`` times faster;
    any pass may be at most ``max_slowdown`` slower. ``max_slowdown=inf`` with
    ``lossy_min_speedup=0`` turns the gate off (parity alone decides)."""
    if name in LOSSY and previous_ms < s.lossy_min_speedup * ms:
        return [
            f"does not pay: {ms:.3g} ms vs {previous_ms:.3g} ms at batch {batch} "
            f"(a lossy pass must be {s.lossy_min_speedup:g}x faster)"
        ]
    if ms > previous_ms * (1 + s.max_slowdown):
        return [f"slower: {ms:.3g} ms vs {previous_ms:.3g} ms at batch {batch}"]
    return []


def _run_passes(target: ModelTarget, judge: Judge, s: OptimizeSettings, work: Path, step: Step):
    threads = s.benchmark.threads or bench.cores()
    reference = _evaluate(judge, target.path, threads)
    ctx = PassContext(judge, s.quant, s.target, work)
    has_gpu = "CUDAExecutionProvider" in ort.get_available_providers()
    current, records, kept = target.path, [], []
    batch = 4 if judge.kind == "image" else min(128, max(1, target.spec.max_batch_size))
    feeds = judge.sample(batch)

    def call(path: Path, level: str) -> Callable[[], object]:
        sess = bench.session(path, threads, level)
        return lambda: sess.run(None, feeds)

    current_call = call(target.path, "all")
    for i, (name, fn) in enumerate(plan(s.target, s.passes)):
        step(f"pass {name}")
        dst = work / f"{i}-{name}.onnx"
        start = time.perf_counter()
        try:
            detail = fn(current, dst, ctx)
        except ImportError as exc:
            records.append(
                PassRecord(name, "failed", f"{exc.name} is missing: install the optimize extra")
            )
            continue
        except Exception as exc:  # a library refusing this graph: reported, not fatal
            records.append(PassRecord(name, "failed", f"{type(exc).__name__}: {exc}"))
            continue
        record = PassRecord(name, "kept", detail)
        gpu_checkable = name not in NEEDS_GPU or has_gpu
        try:
            verdict = judge.verdict(reference, _evaluate(judge, dst, threads, _providers(s.target)))
            record.parity, record.failures = verdict.figures, list(verdict.failures)
            record.status = "kept" if verdict.ok else "rejected"
        except Exception as exc:
            if gpu_checkable:
                record.status = "failed"
                record.failures = [f"cannot run the result: {type(exc).__name__}: {exc}"]
            else:
                record.status = "unverified"
        if not gpu_checkable and record.status != "failed":
            record.status = "unverified"
            record.failures.append("no CUDA execution provider here: parity on the GPU unchecked")
        if record.status == "unverified" and s.allow_unverified:
            record.status = "kept"
            record.detail += " (kept unverified: --allow-unverified)"
        if record.status == "kept" and s.target == "cpu":
            offline = name == "ort" or any(n == "ort" for n, _ in kept)
            candidate = call(dst, "basic" if offline else "all")
            current_ms, ms = bench.compare(current_call, candidate, 1.0, 8)
            record.parity[f"latency_ms_batch_{batch}"] = ms
            record.parity[f"previous_latency_ms_batch_{batch}"] = current_ms
            slow = speed_failures(name, current_ms, ms, batch, s)
            if slow:
                record.status = "rejected"
                record.failures.extend(slow)
            else:
                current_call = candidate
        record.seconds = time.perf_counter() - start
        records.append(record)
        if record.status == "kept":
            current = dst
            kept.append((name, dst))
    return reference, records, kept


def _next_version(directory: Path) -> int:
    return max(int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit()) + 1


def _install(
    target: ModelTarget,
    final: Path,
    config_after: str,
    manifest: dict,
    check: Callable[[bench.Runner], list[str]] | None,
) -> int:
    """Write the new version and config; undo both if a pod cannot load the result or
    it misses parity as loaded (with the new config's graph level)."""
    version = _next_version(target.directory)
    vdir = target.directory / str(version)
    config_path = target.directory / "config.pbtxt"
    before = config_path.read_text()
    vdir.mkdir()
    shutil.copyfile(final, vdir / target.spec.default_model_filename)
    config_path.write_text(config_after)
    if check is None:  # a GPU model on a machine without one: nothing to load it with
        (vdir / MANIFEST).write_text(json.dumps(manifest | {"version": version}, indent=2))
        return version
    try:
        loaded = load_model(target.directory, SessionSettings(), 0)[-1]
        if loaded.version != version:
            raise RepositoryError(target.name, f"the pod would serve version {loaded.version}")
        failures = check(bench.runner(loaded.sessions[0]))
        if failures:
            raise RepositoryError(target.name, f"as served it misses parity: {failures}")
    except RepositoryError as exc:
        shutil.rmtree(vdir)
        config_path.write_text(before)
        raise OptimizeError(f"the optimised model does not load as a pod would: {exc}") from None
    (vdir / MANIFEST).write_text(json.dumps(manifest | {"version": version}, indent=2))
    return version


def _bench(target, judge, s, kept, tuned_level, step) -> dict:
    threads = s.benchmark.threads or bench.cores()
    default = (1, 4, 8) if judge.kind == "image" else (1, 8, 32, 128)
    batches = [
        b for b in (s.benchmark.batch_sizes or default) if b <= max(1, target.spec.max_batch_size)
    ]
    rows = []

    def timings(call: Callable[[dict], object]) -> list[dict]:
        out = []
        for b in batches:
            feeds = judge.sample(b)
            timing = bench.measure(
                lambda f=feeds: call(f), b, s.benchmark.min_time_s, s.benchmark.min_runs
            )
            out.append(timing.as_dict())
        return out

    torch_path = target.directory / "pytorch" / "model.pt"
    if s.benchmark.pytorch and torch_path.exists():
        try:
            run = bench.torch_runner(torch_path, threads, [t.name for t in target.spec.inputs])
        except ImportError:
            run = None
        if run is not None:
            step("bench pytorch eager")
            rows.append({"stage": "pytorch eager fp32", "level": "-", "timings": timings(run)})
    stages = [
        ("onnxruntime unoptimised", target.path, "disable"),
        ("onnxruntime online (pod default)", target.path, "all"),
    ]
    names = [n for n, _ in kept]
    for i, (name, path) in enumerate(kept):
        offline = "ort" in names[: i + 1]
        stages.append((f"+ {name}", path, tuned_level if offline else "all"))
    for label, path, level in stages:
        step(f"bench {label}")
        sess = bench.session(path, threads, level)
        rows.append(
            {"stage": label, "level": level, "timings": timings(lambda f, x=sess: x.run(None, f))}
        )
    return {"threads": threads, "batch_sizes": batches, "rows": report.with_speedups(rows)}


def optimize(
    repository: Path,
    name: str,
    settings: OptimizeSettings | None = None,
    step: Step = lambda _: None,
) -> Outcome:
    s = settings or OptimizeSettings()
    target = open_target(repository, name)
    judge = judge_for(target.directory, target.spec, s.parity, s.quant.calibration_images)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=".optimize-", dir=target.directory) as tmp:
        reference, records, kept = _run_passes(target, judge, s, Path(tmp), step)
        manifest = {
            "model": name,
            "source_version": target.version,
            "kind": judge.kind,
            "target": s.target,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "settings": s.model_dump(mode="json"),
            "reference": reference.figures,
            "passes": [asdict(r) for r in records],
            "environment": {
                "cpu": platform.processor() or platform.machine(),
                "cores": bench.cores(),
                "onnxruntime": ort.__version__,
            },
        }
        if not kept:
            manifest["seconds"] = time.perf_counter() - started
            return Outcome(manifest, None)
        final = kept[-1][1]
        offline = any(n == "ort" for n, _ in kept)
        level = "basic" if offline else "all"
        tuning: Tuning | None = None
        if s.target == "cpu" and "tune" in s.passes:
            step("tune threads, instances, batch sizes")
            tuning = tune(final, judge, target.spec.max_batch_size, level, pod_cores=s.pod_cores)
            manifest["tuning"] = asdict(tuning) | {
                "by_batch": {str(k): v for k, v in tuning.by_batch.items()}
            }
        config = read_model(target.directory).config
        manifest["config_before"] = config_text(config)
        manifest["config_after"] = config_text(tuned_config(config, s.target, tuning, offline))
        if s.bench:
            manifest["benchmark"] = _bench(target, judge, s, kept, level, step)
        manifest["seconds"] = time.perf_counter() - started
        step("install the new version")
        checkable = s.target == "cpu" or _providers(s.target)[0] != "CPUExecutionProvider"
        manifest["load_check"] = "pod load + parity" if checkable else "skipped: no GPU here"
        version = _install(
            target,
            final,
            manifest["config_after"],
            manifest,
            (lambda run: list(judge.verdict(reference, judge.evaluate(run)).failures))
            if checkable
            else None,
        )
    manifest["version"] = version
    return Outcome(manifest, version)
