"""The `grec` command over a materialized GREC_HOME: recommend (the learned fusion, any tower, the
cold-start rule, its cached index) and runs compare. `grec ui` is exercised by the end-to-end UI test."""

import json
import os
import subprocess
import sys

import duckdb
import numpy as np

from grec_dagster.layout import GATED_FUSION, SERVABLE
from grec_dagster.serving.index import COLD_START, IndexInputs, load_index
from grec_dagster.serving.ranking import DotTower, ItemTower, stored_picks, top_items


def grec(materialized, *args: str) -> subprocess.CompletedProcess:
    env = os.environ | materialized.env
    return subprocess.run([sys.executable, "-m", "grec_dagster.cli", *args], env=env, capture_output=True, text=True)


def table_rows(stdout: str) -> list[list[str]]:
    """The rows under the `rank item tower score title` header, split into those five fields."""
    lines = stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["rank", "item"])
    return [line.split(maxsplit=4) for line in lines[header + 1 :] if line.strip()]


def test_a_tower_ranks_its_best_unseen_items_and_stored_picks_keep_their_driving_tower():
    taste = DotTower("lightgcn", np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([[3.0, 0], [0, 3.0], [1, 1], [0, 0]]))
    picks = top_items(taste.scores(0), exclude=np.array([0]), k=3, tower=taste.name)
    assert [(p.item, p.score, p.tower) for p in picks] == [(2, 1.0, "lightgcn"), (1, 0.0, "lightgcn"), (3, 0.0, "lightgcn")]
    assert len(top_items(ItemTower("popularity", np.zeros(3)).scores(0), np.arange(2), k=10, tower="p")) == 1
    stored = stored_picks(
        np.array([4, 1, -1]), np.array([2.0, 1.0, -np.inf]), np.array([1, 0, 0]), np.array(["ease", "lightgcn"]), k=5
    )
    assert [(p.item, p.tower) for p in stored] == [(4, "lightgcn"), (1, "ease")]  # the padding is not a pick


def test_recommend_serves_the_gated_fusion_the_pipeline_learned(materialized):
    (materialized.home / "serving" / "recommend_index.npz").unlink(missing_ok=True)
    with duckdb.connect(str(materialized.home / "warehouse.duckdb"), read_only=True) as con:
        user, seen = con.execute(
            "SELECT user_id, list(DISTINCT item_id) FROM interactions GROUP BY user_id ORDER BY count(*) DESC LIMIT 1"
        ).fetchone()
        titles = dict(con.execute("SELECT item_id, title FROM items").fetchall())
        stored = con.execute(
            "SELECT item_id, tower FROM recommendations WHERE user_id = ? ORDER BY rank LIMIT 7", [user]
        ).fetchall()
    first = grec(materialized, "recommend", user, "-k", "7")
    assert first.returncode == 0, first.stderr
    assert f"by {GATED_FUSION}" in first.stdout.splitlines()[0]
    rows = table_rows(first.stdout)
    assert [int(rank) for rank, *_ in rows] == list(range(1, 8))
    assert [(item, tower) for _, item, tower, _, _ in rows] == [(str(item), tower) for item, tower in stored]
    assert all(item not in seen and title == titles[item] for _, item, _, _, title in rows)
    scores = [float(score) for *_, score, _ in rows]
    assert scores == sorted(scores, reverse=True)

    index_file = materialized.home / "serving" / "recommend_index.npz"
    built = index_file.stat().st_mtime_ns
    again = grec(materialized, "recommend", user, "-k", "7")
    assert again.stdout == first.stdout and index_file.stat().st_mtime_ns == built  # answered from the index
    stranger = grec(materialized, "recommend", "nobody-at-all", "-k", "3")
    assert "unknown user" in stranger.stdout
    assert [tower for _, _, tower, _, _ in table_rows(stranger.stdout)] == [COLD_START] * 3


def test_any_tower_by_flag_and_the_cold_start_rule_for_users_it_never_trained_on(materialized, tmp_path):
    index = load_index(IndexInputs(materialized.home / "checkpoints", materialized.home / "warehouse.duckdb"), tmp_path / "i.npz")
    warm = str(index.user_ids[index.known][0])
    alone = grec(materialized, "recommend", warm, "-k", "5", "--model", "lightgcn", "--json")
    assert alone.returncode == 0, alone.stderr
    answer = json.loads(alone.stdout)
    assert answer["model"] == "lightgcn" and answer["rule"] is None
    assert [pick["rank"] for pick in answer["picks"]] == [1, 2, 3, 4, 5]
    assert {pick["tower"] for pick in answer["picks"]} == {"lightgcn"}
    assert [pick.item for pick in index.recommend(warm, 5, "lightgcn").picks] == [
        int(np.flatnonzero(index.item_ids == pick["item_id"])[0]) for pick in answer["picks"]
    ]
    cold = index.user_ids[~index.known]
    assert len(cold), "the small shop's temporal split has users first seen after the validation cut"
    served = index.recommend(str(cold[0]), 5, "lightgcn")
    assert "cold-start rule" in served.rule and {pick.tower for pick in served.picks} == {COLD_START}
    popular = index.recommend(str(cold[0]), 5, "popularity")  # needs no history: no rule to apply
    assert served.picks and [p.item for p in served.picks] == [p.item for p in popular.picks] and popular.rule is None
    unknown = grec(materialized, "recommend", warm, "--model", "no-such-tower")
    assert unknown.returncode == 2 and "invalid choice" in unknown.stderr


def test_the_index_follows_a_retrained_checkpoint(materialized, tmp_path):
    inputs = IndexInputs(materialized.home / "checkpoints", materialized.home / "warehouse.duckdb")
    cache = tmp_path / "index.npz"
    before = load_index(inputs, cache)
    assert before.models() == list(SERVABLE) and before.notes == []  # every tower and the fusion
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
