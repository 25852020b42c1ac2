"""Configs tenfold writes and reads also parse, unchanged, against Triton's own complete
ModelConfig schema (the copy generated inside tritonclient), and our ModelConfig
messages decode there field for field."""

from __future__ import annotations

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as triton_config

from inference.examples import DEMO_CONFIG
from inference.repository.model import read_model
from tests.models import MLP_CONFIG, MULTI_IO_CONFIG, SCALE_CONFIG


@pytest.mark.parametrize("text", [DEMO_CONFIG, MLP_CONFIG, MULTI_IO_CONFIG, SCALE_CONFIG])
def test_configs_parse_in_tritons_schema(tmp_path, text):
    (tmp_path / "config.pbtxt").write_text(text)
    ours = read_model(tmp_path).config
    theirs = text_format.Parse(text, triton_config.ModelConfig())
    assert theirs.name == ours.name and theirs.max_batch_size == ours.max_batch_size
    decoded = triton_config.ModelConfig.FromString(ours.SerializeToString())
    assert decoded == theirs
