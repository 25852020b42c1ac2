"""The one reader of a model directory: ``config.pbtxt`` parsed once, and the facts the
pod, the optimizer and the benchmark peers derive from it.

``config.pbtxt`` is parsed by protobuf's ``text_format`` against
protos/kserve/v2/model_config.proto. Everything else is computed on access, so a
caller meets only the errors of what it asks for, in the order it asks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format

from inference.protocol.datatypes import from_config_type
from inference.repository.errors import RepositoryError
from protos.kserve.v2 import model_config_pb2

DEFAULT_FILENAME = "model.onnx"
#: Triton's ONNX Runtime backend parameter, written by ``tenfold optimize``'s tuning
THREADS_PARAMETER = "intra_op_thread_count"


@dataclass(frozen=True, slots=True)
class ModelDir:
    """One ``<repo>/<model>/`` directory. ``config`` is shared: copy it to change it."""

    directory: Path
    #: the parsed config.pbtxt, or an empty ModelConfig when there is none
    config: model_config_pb2.ModelConfig
    has_config: bool

    @property
    def name(self) -> str:
        return self.directory.name

    @property
    def versions(self) -> list[int]:
        """Version directories to load, per ``version_policy`` (default: latest 1)."""
        d = self.directory
        available = sorted(int(p.name) for p in d.iterdir() if p.is_dir() and p.name.isdigit())
        if not available:
            raise RepositoryError(self.name, f"no version directories (e.g. {d}/1/) found")
        policy = self.config.version_policy
        which = policy.WhichOneof("policy_choice")
        if which == "all":
            return available
        if which == "specific":
            wanted = sorted(int(v) for v in policy.specific.versions)
            missing = [v for v in wanted if v not in available]
            if missing:
                raise RepositoryError(
                    self.name, f"version_policy asks for missing versions {missing}"
                )
            return wanted
        num = policy.latest.num_versions if which == "latest" else 1
        if num < 1:
            raise RepositoryError(self.name, "version_policy latest needs num_versions >= 1")
        return available[-num:]

    @property
    def served_version(self) -> int:
        """The version a request without a version gets: the latest selected."""
        return self.versions[-1]

    @property
    def model_filename(self) -> str:
        return self.config.default_model_filename or DEFAULT_FILENAME

    def model_file(self, version: int) -> Path:
        return self.directory / str(version) / self.model_filename

    @property
    def served_file(self) -> Path:
        return self.model_file(self.served_version)

    @property
    def graph_level(self) -> int | None:
        """ORT graph optimisation level from ``optimization { graph { level } }``."""
        if not self.config.optimization.HasField("graph"):
            return None
        return self.config.optimization.graph.level

    @property
    def intra_op_threads(self) -> int | None:
        """``parameters { key: "intra_op_thread_count" }``: overrides the pod's setting."""
        if THREADS_PARAMETER not in self.config.parameters:
            return None
        text = self.config.parameters[THREADS_PARAMETER].string_value
        if not text.isdigit():
            raise RepositoryError(
                self.name,
                f"parameter {THREADS_PARAMETER} must be a whole number >= 0, not {text!r}",
            )
        return int(text)

    @property
    def instance_count(self) -> int:
        """ONNX Runtime sessions: ``instance_group`` counts summed (an unset count is 1)."""
        counts = [g.count for g in self.config.instance_group] or [1]
        if any(c < 0 for c in counts):
            raise RepositoryError(self.name, "instance_group count must not be negative")
        return max(1, sum(c or 1 for c in counts))

    def input_metadata(self) -> list[dict]:
        """The config's inputs as KServe v2 metadata lists them (batch dimension first)."""
        return [
            {
                "name": i.name,
                "datatype": from_config_type(model_config_pb2.DataType.Name(i.data_type)),
                "shape": [-1, *i.dims],
            }
            for i in self.config.input
        ]


def read_model(model_dir: Path) -> ModelDir:
    """Parse ``model_dir/config.pbtxt`` once; a model without one is auto-completed
    later from its ONNX file, so it reads as an empty config."""
    path = model_dir / "config.pbtxt"
    config = model_config_pb2.ModelConfig()
    if not path.exists():
        return ModelDir(model_dir, config, has_config=False)
    try:
        text_format.Parse(path.read_text(encoding="utf-8"), config)
    except text_format.ParseError as exc:
        raise RepositoryError(model_dir.name, f"config.pbtxt: {exc}") from None
    except UnicodeDecodeError:
        raise RepositoryError(model_dir.name, "config.pbtxt is not UTF-8 text") from None
    return ModelDir(model_dir, config, has_config=True)
