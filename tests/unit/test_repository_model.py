"""The one model-directory reader: each fact it derives from config.pbtxt, and the pod's
loader serving what it says."""

from __future__ import annotations

import dataclasses

import pytest

from inference.repository.errors import RepositoryError
from inference.repository.loader import load_model
from inference.repository.model import THREADS_PARAMETER, read_model
from inference.runtime.onnx_model import SessionSettings
from protos.kserve.v2 import model_config_pb2
from tests.models import MULTI_IO_CONFIG, SCALE, scale, write_model


def model_dir(tmp_path, config: str | None, versions=(1,)):
    d = tmp_path / "m"
    d.mkdir(parents=True)
    if config is not None:
        (d / "config.pbtxt").write_text(config)
    for v in versions:
        (d / str(v)).mkdir()
    return read_model(d)


def threads_config(value: str) -> str:
    return (
        SCALE + f'parameters {{ key: "{THREADS_PARAMETER}" value {{ string_value: "{value}" }} }}'
    )


def test_without_config_pbtxt_reads_as_an_empty_config(tmp_path):
    model = model_dir(tmp_path, None, versions=(1, 2))
    assert not model.has_config and model.config == model_config_pb2.ModelConfig()
    assert model.name == "m" and model.versions == [2] and model.served_version == 2
    assert model.served_file == tmp_path / "m" / "2" / "model.onnx"
    assert model.graph_level is None and model.intra_op_threads is None
    assert model.instance_count == 1 and model.input_metadata() == []


def test_config_is_parsed(tmp_path):
    model = model_dir(tmp_path, SCALE)
    assert model.has_config and model.config.name == "m" and model.config.max_batch_size == 8
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.has_config = False


@pytest.mark.parametrize(
    ("write", "message"),
    [
        (lambda p: p.write_text(SCALE + "bogus_field: 1"), "model 'm': config.pbtxt: "),
        (lambda p: p.write_bytes(b"name: \xff"), "model 'm': config.pbtxt is not UTF-8 text"),
    ],
)
def test_unreadable_config(tmp_path, write, message):
    (tmp_path / "m").mkdir()
    write(tmp_path / "m" / "config.pbtxt")
    with pytest.raises(RepositoryError) as err:
        read_model(tmp_path / "m")
    assert str(err.value).startswith(message)


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("", [10]),  # latest 1 by default, in numeric order (10 after 3)
        ("version_policy: { latest { num_versions: 2 } }", [3, 10]),
        ("version_policy: { latest { num_versions: 9 } }", [1, 3, 10]),
        ("version_policy: { all { } }", [1, 3, 10]),
        ("version_policy: { specific { versions: [ 10, 1 ] } }", [1, 10]),
    ],
)
def test_version_policy(tmp_path, policy, expected):
    model = model_dir(tmp_path, SCALE + policy, versions=(1, 3, 10))
    (tmp_path / "m" / "7x").mkdir()  # not a version
    assert model.versions == expected and model.served_version == expected[-1]


@pytest.mark.parametrize(
    ("policy", "versions", "message"),
    [
        ("", (), "no version directories"),
        ("version_policy: { specific { versions: [ 2 ] } }", (1,), "missing versions [2]"),
        ("version_policy: { latest { num_versions: 0 } }", (1,), "num_versions >= 1"),
    ],
)
def test_version_policy_errors(tmp_path, policy, versions, message):
    model = model_dir(tmp_path, SCALE + policy, versions=versions)
    with pytest.raises(RepositoryError, match="model 'm': .*" + message.replace("[", r"\[")):
        _ = model.versions


def test_default_model_filename_is_honoured(tmp_path):
    model = model_dir(tmp_path, SCALE + 'default_model_filename: "opt.onnx"', versions=(1, 2))
    assert model.model_file(1) == tmp_path / "m" / "1" / "opt.onnx"
    assert model.served_file == tmp_path / "m" / "2" / "opt.onnx"
    assert model_dir(tmp_path / "b", SCALE).served_file.name == "model.onnx"


@pytest.mark.parametrize(
    ("extra", "level"),
    [("", None), ("optimization { priority: PRIORITY_MAX }", None)]
    + [(f"optimization {{ graph {{ level: {n} }} }}", n) for n in (-1, 0, 2)],
)
def test_graph_level(tmp_path, extra, level):
    assert model_dir(tmp_path, SCALE + extra).graph_level == level


@pytest.mark.parametrize(("value", "threads"), [("3", 3), ("0", 0), ("12", 12)])
def test_threads_parameter(tmp_path, value, threads):
    assert model_dir(tmp_path, threads_config(value)).intra_op_threads == threads


@pytest.mark.parametrize("value", ["", "two", "-1", "1.5"])
def test_threads_parameter_must_be_a_whole_number(tmp_path, value):
    model = model_dir(tmp_path, threads_config(value))
    with pytest.raises(RepositoryError) as err:
        _ = model.intra_op_threads
    assert str(err.value) == (
        f"model 'm': parameter intra_op_thread_count must be a whole number >= 0, not {value!r}"
    )


@pytest.mark.parametrize(
    ("groups", "count"),
    [
        ("", 1),
        ("instance_group [ { count: 2 } ]", 2),
        ("instance_group [ { kind: KIND_CPU } ]", 1),
        ("instance_group [ { count: 2 }, { kind: KIND_CPU }, { count: 3 } ]", 6),
    ],
)
def test_instance_counts_are_summed(tmp_path, groups, count):
    assert model_dir(tmp_path, SCALE + groups).instance_count == count


def test_negative_instance_count(tmp_path):
    model = model_dir(tmp_path, SCALE + "instance_group [ { count: 2 }, { count: -1 } ]")
    with pytest.raises(RepositoryError, match="instance_group count must not be negative"):
        _ = model.instance_count


def test_input_metadata(tmp_path):
    model = model_dir(tmp_path, MULTI_IO_CONFIG)
    assert model.input_metadata() == [
        {"name": "x", "datatype": "FP32", "shape": [-1, 4]},
        {"name": "ids", "datatype": "INT64", "shape": [-1, 3]},
        {"name": "tag", "datatype": "BYTES", "shape": [-1, 1]},
    ]


def test_the_loader_serves_what_the_reader_says(tmp_path):
    config = (
        threads_config("3")
        + 'default_model_filename: "s.onnx"\n'
        + "optimization { graph { level: 1 } }\n"
        + "instance_group [ { count: 2 } ]\n"
    )
    write_model(tmp_path, "m", scale(1.0), config)
    (tmp_path / "m" / "1" / "model.onnx").rename(tmp_path / "m" / "1" / "s.onnx")
    (loaded,) = load_model(tmp_path / "m", SessionSettings(intra_op_threads=1), 4)
    assert loaded.path == tmp_path / "m" / "1" / "s.onnx"
    assert loaded.spec.default_model_filename == "s.onnx"
    assert loaded.spec.graph_level == 1 and loaded.spec.instance_count == 2
    assert len(loaded.sessions) == 2
    assert {s.get_session_options().intra_op_num_threads for s in loaded.sessions} == {3}


def test_the_loader_refuses_a_bad_threads_parameter(tmp_path):
    write_model(tmp_path, "m", scale(1.0), threads_config("x"))
    with pytest.raises(RepositoryError, match="must be a whole number"):
        load_model(tmp_path / "m", SessionSettings(intra_op_threads=1), 4)
