"""config.pbtxt parsing, validation against the model, version policy, auto-completion."""

from __future__ import annotations

import re

import pytest

from inference.repository.errors import RepositoryError
from inference.repository.loader import load_model
from inference.runtime.onnx_model import SessionSettings
from tests.models import MULTI_IO_CONFIG, SCALE, multi_io, scale, write_model

SETTINGS = SessionSettings(intra_op_threads=1)


def load(tmp_path, config: str | None, model=None, versions=(1,)):
    for v in versions:
        write_model(tmp_path, "m", model or scale(1.0), config, version=v)
    return load_model(tmp_path / "m", SETTINGS, default_max_batch_size=4)


def test_full_config_is_honoured(tmp_path):
    config = (
        SCALE
        + """
dynamic_batching {
  preferred_batch_size: [ 2, 4 ]
  max_queue_delay_microseconds: 1500
  default_queue_policy { max_queue_size: 7 default_timeout_microseconds: 2000
                         timeout_action: DELAY allow_timeout_override: true }
}
instance_group [ { count: 2 kind: KIND_CPU } ]
"""
    )
    (loaded,) = load(tmp_path, config)
    spec = loaded.spec
    assert spec.max_batch_size == 8 and spec.instance_count == 2 and len(loaded.sessions) == 2
    b = spec.batching
    assert b.preferred_batch_sizes == (2, 4) and b.max_queue_delay_s == 0.0015
    assert b.max_queue_size == 7 and b.default_timeout_s == 0.002
    assert b.timeout_action == "DELAY" and b.allow_timeout_override


def test_multi_io_types(tmp_path):
    write_model(tmp_path, "multi_io", multi_io(), MULTI_IO_CONFIG)
    (loaded,) = load_model(tmp_path / "multi_io", SETTINGS, 4)
    assert [(t.name, t.datatype) for t in loaded.spec.inputs] == [
        ("x", "FP32"),
        ("ids", "INT64"),
        ("tag", "BYTES"),
    ]


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        (SCALE.replace('name: "x"', 'name: "z"'), "config input 'z' is not an input"),
        (
            SCALE.replace(
                "TYPE_FP32 dims: [ 2 ] } ]\noutput", "TYPE_INT64 dims: [ 2 ] } ]\noutput"
            ),
            "input 'x' is INT64 in config.pbtxt but FP32 in the model",
        ),
        (
            SCALE.replace("dims: [ 2 ] } ]\noutput", "dims: [ 3 ] } ]\noutput"),
            "config dims [3] do not match the model's shape [2]",
        ),
        (SCALE.replace('name: "m"', 'name: "other"'), "does not match its directory"),
        (
            SCALE.replace('platform: "onnxruntime_onnx"', 'platform: "tensorflow_savedmodel"'),
            "not served by tenfold",
        ),
        (SCALE + "dynamic_batching { preferred_batch_size: [ 16 ] }", "preferred_batch_size 16"),
        (SCALE + "bogus_field: 1", "config.pbtxt"),
        (SCALE.replace('name: "y"', 'name: "nope"'), "config output 'nope' is not an output"),
        (SCALE + "version_policy: { specific { versions: [ 3 ] } }", "missing versions [3]"),
    ],
)
def test_bad_configs_name_the_model_and_problem(tmp_path, config, needle):
    with pytest.raises(RepositoryError) as err:
        load(tmp_path, config)
    assert err.value.model == "m"
    assert needle in str(err.value)


def test_missing_model_file(tmp_path):
    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "m" / "config.pbtxt").write_text(SCALE)
    with pytest.raises(RepositoryError, match=r"model file .* is missing"):
        load_model(tmp_path / "m", SETTINGS, 4)


def test_not_an_onnx_file(tmp_path):
    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "m" / "1" / "model.onnx").write_bytes(b"not a model")
    with pytest.raises(RepositoryError, match="ONNX Runtime cannot load"):
        load_model(tmp_path / "m", SETTINGS, 4)


def test_no_versions(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.pbtxt").write_text(SCALE)
    with pytest.raises(RepositoryError, match="no version directories"):
        load_model(tmp_path / "m", SETTINGS, 4)


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("", [3]),
        ("version_policy: { latest { num_versions: 2 } }", [2, 3]),
        ("version_policy: { all { } }", [1, 2, 3]),
        ("version_policy: { specific { versions: [ 1, 3 ] } }", [1, 3]),
    ],
)
def test_version_policy(tmp_path, policy, expected):
    loaded = load(tmp_path, SCALE + policy, versions=(1, 2, 3))
    assert [v.version for v in loaded] == expected


def test_autocomplete_without_config(tmp_path):
    (loaded,) = load(tmp_path, None)
    config = loaded.spec.config
    assert config.name == "m" and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 4 and config.HasField("dynamic_batching")
    assert [(i.name, list(i.dims)) for i in config.input] == [("x", [2])]
    assert loaded.spec.batching is not None


def test_autocomplete_keeps_given_fields(tmp_path):
    (loaded,) = load(tmp_path, "max_batch_size: 2\ninstance_group [ { count: 3 } ]")
    assert loaded.spec.max_batch_size == 2 and loaded.spec.instance_count == 3
    assert loaded.spec.batching is None  # the given config asked for no dynamic batching


RANGED = (
    MULTI_IO_CONFIG + 'parameters { key: "tenfold.value_range.ids" value { string_value: "%s" } }\n'
)


def test_value_ranges_are_read_and_enforced(tmp_path):
    # docs/models.md (value ranges): one range for every element, or one per position
    import numpy as np

    from inference.protocol.errors import InvalidInput
    from inference.protocol.tensors import InferRequest, Tensor
    from inference.validation import model_inputs

    write_model(tmp_path, "multi_io", multi_io(), RANGED % "0:9,0:99,-5:5")
    (loaded,) = load_model(tmp_path / "multi_io", SETTINGS, 4)
    assert loaded.spec.input("ids").value_range == ((0, 9), (0, 99), (-5, 5))
    assert loaded.spec.input("x").value_range is None

    def request(ids) -> InferRequest:
        ids = np.array(ids, np.int64)
        rows = len(ids)
        return InferRequest(
            "multi_io",
            "",
            (
                Tensor("x", "FP32", (rows, 4), np.zeros((rows, 4), np.float32)),
                Tensor("ids", "INT64", ids.shape, ids),
                Tensor("tag", "BYTES", (rows, 1), np.array([[b"t"]] * rows, dtype=object)),
            ),
        )

    feed, rows = model_inputs(loaded.spec, request([[9, 99, -5], [0, 0, 5]]))
    assert rows == 2 and feed["ids"].tolist() == [[9, 99, -5], [0, 0, 5]]
    for bad, where, bounds in (
        ([[0, 0, 0], [10, 0, 0]], "[1, 0]", "[0, 9]"),
        ([[0, -1, 0]], "[0, 1]", "[0, 99]"),
        ([[0, 0, 6]], "[0, 2]", "[-5, 5]"),
    ):
        with pytest.raises(
            InvalidInput,
            match=re.escape(f"at index {where} is outside {bounds}"),
        ):
            model_inputs(loaded.spec, request(bad))


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("0:9,0:99", "2 ranges, but the last dimension of 'ids' is 3"),
        ("nine", "is not lo:hi"),
        ("5:1", "lo > hi"),
    ],
)
def test_bad_value_ranges_name_the_parameter(tmp_path, value, needle):
    write_model(tmp_path, "multi_io", multi_io(), RANGED % value)
    with pytest.raises(RepositoryError, match=needle):
        load_model(tmp_path / "multi_io", SETTINGS, 4)


def test_a_value_range_needs_an_integer_input(tmp_path):
    config = MULTI_IO_CONFIG + (
        'parameters { key: "tenfold.value_range.x" value { string_value: "0:1" } }\n'
    )
    write_model(tmp_path, "multi_io", multi_io(), config)
    with pytest.raises(RepositoryError, match="no integer input named 'x'"):
        load_model(tmp_path / "multi_io", SETTINGS, 4)
