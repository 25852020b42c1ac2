"""Settings of ``tenfold optimize`` (env ``TENFOLD_OPTIMIZE_``, YAML ``--config``, flags)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PASSES = ("cleanup", "int8", "ort", "fp16", "tune")


class ParitySettings(BaseModel):
    """Thresholds of the parity gate; a pass that misses one is rejected."""

    ranker_max_auc_drop: float = Field(0.002, ge=0, description="largest AUC drop of any head")
    ranker_min_top10_agreement: float = Field(
        0.95, ge=0, le=1, description="mean share of each user's top 10 that stays the same"
    )
    ranker_max_abs_diff: float = Field(
        0.05, ge=0, description="largest difference of any head probability"
    )
    tower_max_recall_drop: float = Field(0.002, ge=0, description="largest recall@100 drop")
    image_min_psnr_db: float = Field(
        35.0, description="lowest PSNR against the fp32 output on any held-out photo"
    )
    generic_max_abs_diff: float = Field(
        1e-3, ge=0, description="models without validation data: largest output difference"
    )


class QuantSettings(BaseModel):
    """int8 quantisation (ONNX Runtime's quantizers)."""

    per_channel: bool = Field(True, description="one scale per output channel of the weights")
    reduce_range: bool = Field(False, description="7-bit weights (older CPUs without VNNI)")
    calibration: Literal["minmax", "entropy", "percentile"] = Field(
        "minmax", description="how static quantisation picks activation ranges"
    )
    percentile: float = Field(
        99.999, gt=0, le=100, description="with calibration=percentile: the kept percentile"
    )
    calibration_images: int = Field(16, ge=1, description="images used to calibrate")


class BenchSettings(BaseModel):
    """The side-by-side benchmark of the report."""

    threads: int = Field(0, ge=0, description="intra-op threads of every runtime; 0: all cores")
    min_time_s: float = Field(0.4, gt=0, description="time each measurement at least this long")
    min_runs: int = Field(5, ge=1, description="and at least this many runs")
    batch_sizes: tuple[int, ...] = Field(
        (), description="batch sizes to measure; empty: 1,8,32,128 (images: 1,4,8)"
    )
    pytorch: bool = Field(True, description="measure PyTorch eager (needs the torch extra)")


class OptimizeSettings(BaseSettings):
    """``tenfold optimize``: which passes run for which target, and how they are judged."""

    model_config = SettingsConfigDict(env_prefix="TENFOLD_OPTIMIZE_", env_nested_delimiter="__")

    target: Literal["cpu", "gpu"] = Field("cpu", description="hardware the pods run on")
    passes: tuple[str, ...] = Field(PASSES, description="passes to try, in pipeline order")
    allow_unverified: bool = Field(
        False,
        description="keep a pass whose parity cannot be checked here (fp16 without a GPU)",
    )
    bench: bool = Field(True, description="measure the report's latency/throughput table")
    lossy_min_speedup: float = Field(
        1.05,
        ge=0,
        description="a pass that changes numerics (int8) must make the model at least this "
        "much faster at a serving batch size, or it is rejected (0: no bar)",
    )
    max_slowdown: float = Field(
        0.05,
        ge=0,
        description="a pass that holds parity is still rejected when it makes the model this "
        "much slower (0.05: 5%) at a serving batch size (inf: no limit; with "
        "lossy_min_speedup 0 the speed gate is off and parity alone decides)",
    )
    pod_cores: int = Field(
        0,
        ge=0,
        description="cores one pod may use, for the tuner's threads x instances (0: all of "
        "this machine's; less where the pod shares them, e.g. with a gateway)",
    )
    parity: ParitySettings = Field(default_factory=ParitySettings)
    quant: QuantSettings = Field(default_factory=QuantSettings)
    benchmark: BenchSettings = Field(default_factory=BenchSettings)

    @field_validator("passes")
    @classmethod
    def _known_passes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [p for p in value if p not in PASSES]
        if unknown:
            raise ValueError(f"unknown passes {unknown}; known: {list(PASSES)}")
        return tuple(p for p in PASSES if p in value)  # pipeline order, whatever the order given
