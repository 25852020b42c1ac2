"""Settings loading for every service: env prefix ``TENFOLD_<SERVICE>_``, an optional
YAML file (pydantic-settings' own ``YamlConfigSettingsSource``) and explicit overrides
(command-line flags), in that order of precedence: flags > environment > YAML file >
defaults. Bad configuration raises ``SettingsError`` with a message naming the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import ValidationError
from pydantic_settings import BaseSettings, YamlConfigSettingsSource

from servicekit.validation import validation_message

S = TypeVar("S", bound=BaseSettings)


class SettingsError(Exception):
    """Bad configuration; the message names the field and the problem."""


def _yaml_source(cls: type[BaseSettings], path: Path) -> YamlConfigSettingsSource:
    if not path.is_file():
        raise SettingsError(f"cannot read config file {path}: no such file")
    try:
        source = YamlConfigSettingsSource(cls, yaml_file=path, yaml_file_encoding="utf-8")
    except OSError as exc:
        raise SettingsError(f"cannot read config file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise SettingsError(f"config file {path} is not valid YAML: {exc}") from None
    except (TypeError, ValueError, AttributeError):
        raise SettingsError(f"config file {path} must hold a mapping of settings") from None
    if not isinstance(source.yaml_data, dict):
        raise SettingsError(f"config file {path} must hold a mapping of settings")
    unknown = sorted(set(source.yaml_data) - set(cls.model_fields))
    if unknown:
        raise SettingsError(f"config file {path}: unknown settings {unknown}")
    return source


def load_settings(cls: type[S], config_file: Path | None = None, **overrides: Any) -> S:
    """Build ``cls`` from flags (``overrides`` that are not None), env and YAML."""
    yaml_source = _yaml_source(cls, config_file) if config_file else None

    class _Loaded(cls):  # type: ignore[misc,valid-type]
        @classmethod
        def settings_customise_sources(
            cls_, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
        ):
            return (init_settings, env_settings, *([yaml_source] if yaml_source else []))

    _Loaded.__name__ = cls.__name__
    try:
        loaded = _Loaded(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        raise SettingsError(f"invalid {cls.__name__}: {validation_message(exc)}") from None
    return cls.model_validate(loaded.model_dump())
