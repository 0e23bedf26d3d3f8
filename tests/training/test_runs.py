"""MLflow runs across seeds and commits, on real SQLite stores: every run is tagged with the source
tree it ran from, and `compare_runs` puts each model's seeds side by side per commit."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from grec_dagster.training.runs import compare_runs
from grec_dagster.training.tracking import COMMIT_TAG, DIFF_TAG, DIRTY_TAG, PACKAGE_DIR, source_tags, tracked_run

COMMIT_A, COMMIT_B = "a" * 40, "b" * 40


def git(repo: Path, *args: str) -> str:
    command = ["git", "-c", "user.name=grec", "-c", "user.email=grec@example.com", *args]
    return subprocess.run(command, cwd=repo, capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A git checkout holding a package (its `__init__.py` tracked), one commit deep."""
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    (repo / "pkg" / "__init__.py").write_text("")
    (repo / "pkg" / "model.py").write_text("DIM = 64\n")
    (repo / ".gitignore").write_text("venv/\n")
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "first")
    return repo


def test_a_run_knows_its_commit_and_how_its_tree_differed(checkout: Path, tmp_path: Path):
    package = checkout / "pkg"
    head = git(checkout, "rev-parse", "HEAD")
    assert source_tags(package) == {COMMIT_TAG: head, DIRTY_TAG: "false"}

    (package / "model.py").write_text("DIM = 32\n")
    edited = source_tags(package)
    assert edited[COMMIT_TAG] == head and edited[DIRTY_TAG] == "true"
    assert source_tags(package) == edited  # the same tree, the same digest
    (package / "extra.py").write_text("X = 1\n")
    with_new_file = source_tags(package)[DIFF_TAG]
    (package / "extra.py").write_text("X = 2\n")
    assert len({edited[DIFF_TAG], with_new_file, source_tags(package)[DIFF_TAG]}) == 3

    (package / "model.py").write_text("DIM = 64\n")
    (package / "extra.py").unlink()
    assert source_tags(package) == {COMMIT_TAG: head, DIRTY_TAG: "false"}  # back to the commit

    outside = tmp_path / "installed" / "pkg"
    outside.mkdir(parents=True)
    (outside / "__init__.py").write_text("")
    in_a_virtualenv = checkout / "venv" / "pkg"  # inside the checkout, but ignored: not its tree
    in_a_virtualenv.mkdir(parents=True)
    (in_a_virtualenv / "__init__.py").write_text("")
    for package in (outside, in_a_virtualenv):
        assert source_tags(package) == {COMMIT_TAG: "unknown", DIRTY_TAG: "unknown"}


def test_every_tracked_run_is_tagged_with_this_checkout(tmp_path: Path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with tracked_run(uri, "grec", "lightgcn", {"dagster.run_id": "r1"}, str(tmp_path / "artifacts")) as run:
        run.log_params({"seed": 3})
    tags = MlflowClient(uri).get_run(run.run_id).data.tags
    root = PACKAGE_DIR.parent
    assert tags[COMMIT_TAG] == git(root, "rev-parse", "HEAD")
    assert tags[DIRTY_TAG] == ("true" if git(root, "status", "--porcelain") else "false")
    assert tags["dagster.run_id"] == "r1"


def log_run(
    client: MlflowClient,
    experiment: str,
    name: str,
    started: int,
    metrics: dict[str, float],
    params: dict[str, object],
    tags: dict[str, str],
    status: str = "FINISHED",
) -> None:
    run = client.create_run(experiment, run_name=name, start_time=started, tags=tags)
    for key, value in params.items():
        client.log_param(run.info.run_id, key, value)
    for key, value in metrics.items():
        client.log_metric(run.info.run_id, key, value)
    client.set_terminated(run.info.run_id, status=status)


def clean(commit: str) -> dict[str, str]:
    return {COMMIT_TAG: commit, DIRTY_TAG: "false"}


def write_runs(uri: str) -> None:
    """lightgcn over three seeds at commit A and two at commit B, once more at A with another config
    and once from a dirty tree; graphsage once at A; one failed run; one run from before the tags."""
    client = MlflowClient(uri)
    experiment = client.create_experiment("grec")
    config = {"dim": 64, "protocol": "temporal"}
    runs = [
        ("lightgcn", 0.30, 0.5, {"seed": 0}, clean(COMMIT_A)),
        ("lightgcn", 0.32, 0.6, {"seed": 1}, clean(COMMIT_A)),
        ("lightgcn", 0.34, 0.7, {"seed": 2}, clean(COMMIT_A)),
        ("graphsage", 0.25, 0.4, {"seed": 0}, clean(COMMIT_A)),
        ("lightgcn", 0.40, 0.8, {"seed": 0}, clean(COMMIT_B)),
        ("lightgcn", 0.44, 0.9, {"seed": 1}, clean(COMMIT_B)),
        ("lightgcn", 0.10, 0.2, {"seed": 0, "dim": 32}, clean(COMMIT_B)),
        ("lightgcn", 0.50, 0.9, {"seed": 0}, {COMMIT_TAG: COMMIT_B, DIRTY_TAG: "true", DIFF_TAG: "d1ff" * 3}),
        ("lightgcn", 0.05, 0.1, {"seed": 0}, {}),
    ]
    for started, (name, ndcg, recall, params, tags) in enumerate(runs, start=1):
        metrics = {"test_ndcg_at_20": ndcg, "test_recall_at_20": recall, "train_loss": 1.0}
        log_run(client, experiment, name, started * 1000, metrics, config | params, tags)
    log_run(
        client,
        experiment,
        "lightgcn",
        99_000,
        {"test_ndcg_at_20": 0.99},
        config | {"seed": 5},
        clean(COMMIT_A),
        "FAILED",
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    uri = f"sqlite:///{tmp_path_factory.mktemp('runs') / 'mlflow.db'}"
    write_runs(uri)
    return uri


def test_compare_runs_over_seeds_groups_each_model_by_commit(store: str):
    table = compare_runs(store, "grec", last=100, prefix="test_", over_seeds=True)
    # Newest group first; a config that differs in more than the seeds is its own group. The values
    # are away from rounding boundaries, so the 4-decimal text compares exactly: std of 0.40 and
    # 0.44 is 0.02 * sqrt(2) = 0.028284...; of 0.30, 0.32, 0.34 it is 0.02 (sample std, n - 1).
    b_configs = [label for label in table.columns if label.startswith("lightgcn @bbbbbbb config")]
    assert list(table.columns) == [
        "lightgcn @unknown",
        "lightgcn @bbbbbbb+d1ffd1",
        b_configs[0],
        b_configs[1],
        "graphsage @aaaaaaa",
        "lightgcn @aaaaaaa",
    ]
    assert list(table.index) == ["runs", "seeds", "test_ndcg_at_20", "test_recall_at_20"]
    assert table["lightgcn @aaaaaaa"].tolist() == ["3", "0, 1, 2", "0.3200 ± 0.0200", "0.6000 ± 0.1000"]
    assert table["graphsage @aaaaaaa"].tolist() == ["1", "0", "0.2500", "0.4000"]
    by_runs = {table[label]["runs"]: table[label].tolist() for label in b_configs}
    assert by_runs == {"2": ["2", "0, 1", "0.4200 ± 0.0283", "0.8500 ± 0.0707"], "1": ["1", "0", "0.1000", "0.2000"]}
    assert "0.99" not in table.to_string()  # the failed run is no result


def test_compare_runs_one_column_per_run_names_seed_and_commit(store: str):
    table = compare_runs(store, "grec", last=3, prefix="test_")
    labels = list(table.columns)
    assert [label.split()[:3] for label in labels] == [["lightgcn", "seed", "5"], ["lightgcn", "seed", "0"]] + [
        ["lightgcn", "seed", "0"]
    ]
    assert labels[0].endswith("@aaaaaaa (FAILED)") and labels[1].endswith("@unknown")
    assert labels[2].endswith("@bbbbbbb+d1ffd1")
    assert table[labels[1]]["test_ndcg_at_20"] == 0.05 and list(table.index) == ["test_ndcg_at_20", "test_recall_at_20"]


def test_grec_runs_compare_over_seeds_prints_mean_and_std_per_commit(store: str, tmp_path: Path):
    config = tmp_path / "grec.yaml"
    config.write_text(f"mlflow: {{tracking_uri: '{store}'}}\n")
    env = os.environ | {"GREC_HOME": str(tmp_path / "grec"), "GREC_CONFIG": str(config)}
    command = [sys.executable, "-m", "grec_dagster.cli", "runs", "compare", "--over-seeds"]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    header, *rows = done.stdout.splitlines()
    assert header.split().count("lightgcn") == 5 and "@aaaaaaa" in header and "@bbbbbbb+d1ffd1" in header
    by_metric = {cells[0]: cells[1:] for cells in (re.split(r"\s{2,}", row.strip()) for row in rows)}
    assert by_metric["runs"] == ["1", "1", "1", "2", "1", "3"]  # newest group first, as compare_runs orders them
    assert by_metric["seeds"][-1] == "0, 1, 2"
    assert by_metric["test_ndcg_at_20"] == [
        "0.0500",
        "0.5000",
        "0.1000",
        "0.4200 ± 0.0283",
        "0.2500",
        "0.3200 ± 0.0200",
    ]
    assert "train_loss" not in by_metric  # only test_ metrics by default, as without --over-seeds
