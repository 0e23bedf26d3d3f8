"""What a user's GREC_CONFIG file says: resource settings over the embedded defaults of `layout`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

MLFLOW_EXPERIMENT = "grec"
"""The experiment training runs go to unless GREC_CONFIG names another."""


def load_user_config() -> dict:
    """Resource settings from the YAML file GREC_CONFIG names (see configs/), or nothing.

    Shape: `{resource_name: {field: value}}`, e.g. `{source: {kind: files, interactions_path: ...}}`,
    plus an optional `automation: {cron: ..., timezone: ...}` section (see `grec_dagster.automation`).
    """
    path = os.environ.get("GREC_CONFIG")
    if not path:
        return {}
    config_file = Path(path).expanduser()
    if not config_file.exists():
        raise FileNotFoundError(f"GREC_CONFIG names {config_file}, which does not exist")
    loaded = yaml.safe_load(config_file.read_text()) or {}
    if not isinstance(loaded, dict) or not all(isinstance(v, dict) for v in loaded.values()):
        raise ValueError(f"{config_file}: expected a mapping of resource name -> settings")
    return loaded


def user_setting(resource: str, field: str, default: Any) -> Any:
    """A resource field as GREC_CONFIG sets it, else `default` (the embedded one)."""
    return load_user_config().get(resource, {}).get(field, default)
