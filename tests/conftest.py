"""Shared fixtures: a throw-away GREC_HOME per test, and the MovieLens files `make test` fetched."""

import os
from pathlib import Path

import pytest

from grec_dagster.cli import init_home

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SHARED_DATA = Path(os.environ.get("GREC_HOME", ".grec")).resolve() / "data"


@pytest.fixture(scope="session")
def movielens_folder() -> Path:
    """The verified MovieLens-100K files; `make test` fetches them before the tests run."""
    from grec_dagster.data.movielens import is_cached

    folder = SHARED_DATA / "ml-100k"
    if not is_cached(folder):
        pytest.fail(f"MovieLens-100K is not in {folder}: run `grec data fetch` (make test does)")
    return folder


@pytest.fixture
def grec_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty GREC_HOME (and DAGSTER_HOME inside it) for one test."""
    home = tmp_path / "grec"
    monkeypatch.setenv("GREC_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    monkeypatch.delenv("GREC_CONFIG", raising=False)
    init_home()
    return home
