"""Shared settings machinery: env prefix ``TENFOLD_<SERVICE>_``, an optional YAML file,
and explicit overrides (command-line flags), in that order of precedence:
flags > environment > YAML file > defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

S = TypeVar("S", bound=BaseSettings)


class SettingsError(Exception):
    """Bad configuration; the message names the field and the problem."""


class _YamlSource(PydanticBaseSettingsSource):
    def __init__(self, settings_cls: type[BaseSettings], data: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self._data = data

    def get_field_value(self, field, field_name):  # pragma: no cover - unused by __call__
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SettingsError(f"cannot read config file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise SettingsError(f"config file {path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(f"config file {path} must hold a mapping of settings")
    return data


def load_settings(cls: type[S], config_file: Path | None = None, **overrides: Any) -> S:
    """Build ``cls`` from flags (``overrides`` that are not None), env and YAML."""
    data = read_yaml(config_file) if config_file else {}
    known = set(cls.model_fields)
    unknown = sorted(set(data) - known)
    if unknown:
        raise SettingsError(f"config file {config_file}: unknown settings {unknown}")

    class _Loaded(cls):  # type: ignore[misc,valid-type]
        @classmethod
        def settings_customise_sources(
            cls_, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
        ):
            return (init_settings, env_settings, _YamlSource(settings_cls, data))

    _Loaded.__name__ = cls.__name__
    try:
        loaded = _Loaded(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '?'}: {err['msg']}" for err in exc.errors()
        )
        raise SettingsError(f"invalid {cls.__name__}: {problems}") from None
    return cls.model_validate(loaded.model_dump())
