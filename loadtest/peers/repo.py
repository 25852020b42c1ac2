"""What the peers need to know of a tenfold model directory, read as the pod reads it."""

from __future__ import annotations

from pathlib import Path

from inference.protocol.datatypes import from_config_type
from inference.repository.config import read_config, select_versions
from protos.kserve.v2 import model_config_pb2

THREADS = "intra_op_thread_count"


def served(model_dir: Path) -> tuple[model_config_pb2.ModelConfig, Path]:
    """The model's config and the ONNX file of the version a pod serves (the latest)."""
    config = read_config(model_dir)
    if config is None:
        raise FileNotFoundError(f"{model_dir} has no config.pbtxt")
    version = select_versions(model_dir.name, model_dir, config)[-1]
    return config, (model_dir / str(version) / "model.onnx").resolve()


def parallelism(config: model_config_pb2.ModelConfig) -> tuple[int, int]:
    """(instances, ONNX Runtime threads per instance) the config asks for."""
    instances = sum(g.count or 1 for g in config.instance_group) or 1
    return instances, int(config.parameters[THREADS].string_value or 1)


def metadata(config: model_config_pb2.ModelConfig) -> list[dict]:
    """The inputs as KServe v2 metadata lists them (batch dimension first)."""
    return [
        {
            "name": i.name,
            "datatype": from_config_type(model_config_pb2.DataType.Name(i.data_type)),
            "shape": [-1, *i.dims],
        }
        for i in config.input
    ]
