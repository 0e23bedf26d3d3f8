"""The `grec` command over a materialized GREC_HOME: recommend (blend, attribution, its cached
index) and runs compare. `grec ui` is exercised by the end-to-end UI test."""

import os
import subprocess
import sys

import duckdb
import numpy as np
import pytest

from grec_dagster.serving.blend import DotTower, ItemTower, blend
from grec_dagster.serving.index import IndexInputs, load_index


def grec(materialized, *args: str) -> subprocess.CompletedProcess:
    env = os.environ | materialized.env
    return subprocess.run([sys.executable, "-m", "grec_dagster.cli", *args], env=env, capture_output=True, text=True)


def table_rows(stdout: str) -> list[list[str]]:
    """The rows under the `rank item tower score title` header, split into those five fields."""
    lines = stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["rank", "item"])
    return [line.split(maxsplit=4) for line in lines[header + 1 :] if line.strip()]


def test_blend_ranks_by_weighted_standardized_scores_and_names_the_driving_tower():
    taste = DotTower("lightgcn", np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([[3.0, 0], [0, 3.0], [1, 1], [0, 0]]))
    popular = ItemTower("popularity", np.array([0.0, 0.0, 0.0, 100.0]))
    picks = blend([taste, popular], {"lightgcn": 1.0, "popularity": 0.5}, user=0, exclude=np.array([2]), k=3)
    assert [p.item for p in picks] == [0, 3, 1]
    assert [p.tower for p in picks] == ["lightgcn", "popularity", "popularity"]
    assert picks[0].score == pytest.approx(sum(picks[0].shares.values()))
    assert picks[0].score > picks[1].score > picks[2].score
    cold = blend([taste, popular], {"lightgcn": 1.0, "popularity": 0.5}, user=None, exclude=np.array([]), k=2)
    assert [(p.item, p.tower, list(p.shares)) for p in cold][0] == (3, "popularity", ["popularity"])
    assert len(blend([popular], {"popularity": 1.0}, None, np.arange(3), k=10)) == 1  # only one item left


def test_recommend_prints_unseen_titled_items_with_their_tower(materialized):
    (materialized.home / "serving" / "recommend_index.npz").unlink(missing_ok=True)
    with duckdb.connect(str(materialized.home / "warehouse.duckdb"), read_only=True) as con:
        user, seen = con.execute(
            "SELECT user_id, list(DISTINCT item_id) FROM interactions GROUP BY user_id ORDER BY count(*) DESC LIMIT 1"
        ).fetchone()
        titles = dict(con.execute("SELECT item_id, title FROM items").fetchall())
    first = grec(materialized, "recommend", user, "-k", "7")
    assert first.returncode == 0, first.stderr
    rows = table_rows(first.stdout)
    assert [int(rank) for rank, *_ in rows] == list(range(1, 8))
    assert all(item not in seen and title == titles[item] for _, item, _, _, title in rows)
    assert {tower for _, _, tower, _, _ in rows} <= {"lightgcn", "popularity"}
    assert "lightgcn" in {tower for _, _, tower, _, _ in rows}  # a user with history gets collaborative picks
    scores = [float(score) for *_, score, _ in rows]
    assert scores == sorted(scores, reverse=True)

    index_file = materialized.home / "serving" / "recommend_index.npz"
    built = index_file.stat().st_mtime_ns
    again = grec(materialized, "recommend", user, "-k", "7")
    assert again.stdout == first.stdout and index_file.stat().st_mtime_ns == built  # answered from the index

    stranger = grec(materialized, "recommend", "nobody-at-all", "-k", "3")
    assert "unknown user" in stranger.stdout
    assert [tower for _, _, tower, _, _ in table_rows(stranger.stdout)] == ["popularity"] * 3


def test_the_index_follows_a_retrained_checkpoint(materialized, tmp_path):
    inputs = IndexInputs(materialized.home / "checkpoints", materialized.home / "warehouse.duckdb")
    cache = tmp_path / "index.npz"
    before = load_index(inputs, cache)
    assert [tower.name for tower in before.towers] == ["lightgcn", "popularity"] and before.notes == []
    stamp = cache.stat().st_mtime_ns
    load_index(inputs, cache)
    assert cache.stat().st_mtime_ns == stamp
    checkpoint = inputs.checkpoints / "lightgcn" / "model.safetensors"
    os.utime(checkpoint, ns=(checkpoint.stat().st_atime_ns, checkpoint.stat().st_mtime_ns + 1))  # as a retrain would
    load_index(inputs, cache)
    assert cache.stat().st_mtime_ns != stamp


def test_without_a_readable_warehouse_the_index_shows_item_ids(materialized, tmp_path):
    inputs = IndexInputs(materialized.home / "checkpoints", tmp_path / "elsewhere.duckdb")
    index = load_index(inputs, tmp_path / "index.npz")
    assert (index.titles == index.item_ids).all()
    assert [note.split(":")[0] for note in index.notes] == ["titles"]


def test_runs_compare_puts_each_model_side_by_side(materialized):
    done = grec(materialized, "runs", "compare")
    assert done.returncode == 0, done.stderr
    header, *rows = done.stdout.splitlines()
    assert {"lightgcn", "graphsage", "temporal"} <= set(header.split())
    metrics = {row.split()[0]: row.split()[1:] for row in rows}
    assert {"test_ndcg_at_20", "test_recall_at_20"} <= set(metrics)
    assert all(value != "-" for value in metrics["test_ndcg_at_20"])  # every model reports it: comparable
    missing = grec(materialized, "runs", "compare", "--experiment", "no-such-experiment")
    assert missing.returncode == 1 and "no MLflow experiment 'no-such-experiment'" in missing.stderr
