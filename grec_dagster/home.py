"""Where grec keeps its state: everything under GREC_HOME (default ./.grec), each part movable."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

MLFLOW_EXPERIMENT = "grec"
"""The experiment training runs go to unless GREC_CONFIG names another."""


def grec_home() -> Path:
    return Path(os.environ.get("GREC_HOME", ".grec")).expanduser().resolve()


def default_paths(home: Path | None = None) -> dict[str, str]:
    """The embedded defaults: one DuckDB file, a SQLite MLflow store, checkpoints, a data cache."""
    home = home or grec_home()
    return {
        "warehouse": str(home / "warehouse.duckdb"),
        "mlflow_tracking_uri": f"sqlite:///{home / 'mlflow.db'}",
        "mlflow_artifacts": (home / "mlartifacts").as_uri(),
        "checkpoints": str(home / "checkpoints"),
        "data_cache": str(home / "data"),
        "dagster_home": str(home / "dagster"),
    }


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
