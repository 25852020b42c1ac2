"""Settings precedence (flags > env > YAML > defaults) and errors that name the field."""

from __future__ import annotations

import pytest

from inference.settings import InferenceSettings
from servicekit.settings import SettingsError, load_settings


def test_defaults_match_triton_ports(tmp_path):
    s = load_settings(InferenceSettings, model_repository=tmp_path)
    assert (s.http_port, s.grpc_port, s.metrics_port) == (8000, 8001, 8002)


def test_precedence(tmp_path, monkeypatch):
    config = tmp_path / "pod.yaml"
    config.write_text(
        f"model_repository: {tmp_path}\nhttp_port: 9100\ngrpc_port: 9101\nintra_op_threads: 3\n"
    )
    monkeypatch.setenv("TENFOLD_INFERENCE_GRPC_PORT", "9201")
    monkeypatch.setenv("TENFOLD_INFERENCE_INTRA_OP_THREADS", "2")
    s = load_settings(InferenceSettings, config, intra_op_threads=1)
    assert s.http_port == 9100  # YAML
    assert s.grpc_port == 9201  # env over YAML
    assert s.intra_op_threads == 1  # flag over env
    assert s.model_repository == tmp_path


@pytest.mark.parametrize(
    ("yaml_text", "needle"),
    [
        ("http_port: 70000\n", "http_port"),
        ("graph_optimization: turbo\n", "graph_optimization"),
        ("no_such_setting: 1\n", "unknown settings ['no_such_setting']"),
        ("http_port: [\n", "not valid YAML"),
        ("http_port: 9000\ngrpc_port: 9000\n", "must differ"),
    ],
)
def test_bad_config_names_the_field(tmp_path, yaml_text, needle):
    config = tmp_path / "bad.yaml"
    config.write_text(f"model_repository: {tmp_path}\n" + yaml_text)
    with pytest.raises(SettingsError) as err:
        load_settings(InferenceSettings, config)
    assert needle in str(err.value)


def test_yaml_must_be_a_mapping(tmp_path):
    config = tmp_path / "list.yaml"
    config.write_text("- a\n- b\n")
    with pytest.raises(SettingsError, match="must hold a mapping"):
        load_settings(InferenceSettings, config)


def test_missing_repository_is_reported(monkeypatch):
    monkeypatch.delenv("TENFOLD_INFERENCE_MODEL_REPOSITORY", raising=False)
    with pytest.raises(SettingsError, match="model_repository"):
        load_settings(InferenceSettings)


def test_route_concurrency_layers_the_routes_changes_over_the_shared_settings():
    from gateway.settings import GatewaySettings

    s = GatewaySettings(concurrency={"min_limit": 2, "initial_limit": 8})
    effects, feed = s.route_concurrency("effects"), s.route_concurrency("feed")
    # the default change for effects (buffer 3) over the shared fields given
    assert (effects.buffer, effects.min_limit, effects.initial_limit) == (3.0, 2, 8)
    assert (effects.latency_target_ms, feed.latency_target_ms) == (100.0, 40.0)
    assert (feed.buffer, feed.min_limit) == (1.0, 2)
    given = GatewaySettings(concurrency_routes={"feed": {"buffer": 0.5}})
    assert given.route_concurrency("feed").buffer == 0.5
    assert given.route_concurrency("effects").buffer == 1.0  # a value given replaces the default


@pytest.mark.parametrize(
    ("routes", "needle"),
    [
        ({"videos": {"buffer": 2}}, "no route 'videos'"),
        ({"effects": {"bufer": 2}}, "concurrency_routes.effects"),
        ({"effects": {"buffer": -1}}, "buffer"),
        ({"effects": {"min_limit": 50}}, "min_limit <= initial_limit"),
    ],
)
def test_bad_route_concurrency_names_the_route_and_field(routes, needle):
    from pydantic import ValidationError

    from gateway.settings import GatewaySettings

    with pytest.raises(ValidationError, match=needle):
        GatewaySettings(concurrency_routes=routes)
