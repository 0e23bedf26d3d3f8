import numpy as np
import pandas as pd
import pytest

from grec_dagster.graph.interactions import TEST, TRAIN, VALID, InteractionGraph, build_graph
from grec_dagster.graph.splits import random_user_split, split_labels, temporal_split


def test_temporal_split_cuts_globally_by_time():
    ts = pd.Series(pd.to_datetime(np.arange(100), unit="h"))
    labels = temporal_split(ts)
    assert (labels == TRAIN).sum() == 80 and (labels == VALID).sum() == 10 and (labels == TEST).sum() == 10
    assert ts[labels == TRAIN].max() < ts[labels == VALID].min() <= ts[labels == VALID].max() < ts[labels == TEST].min()


def test_temporal_split_never_separates_simultaneous_events():
    ts = pd.Series(pd.to_datetime([0] * 50 + [1] * 50, unit="D"))
    labels = temporal_split(ts)
    assert len(set(labels[:50])) == 1 and len(set(labels[50:])) == 1


@pytest.mark.parametrize("count, expected", [(20, (16, 2, 2)), (29, (25, 2, 2)), (5, (3, 1, 1)), (2, (1, 0, 1))])
def test_random_split_counts_follow_recbole(count, expected):
    users = pd.Series(["u"] * count)
    labels = random_user_split(users, seed=0)
    assert tuple(int((labels == s).sum()) for s in (TRAIN, VALID, TEST)) == expected


def test_random_split_is_per_user_and_seeded():
    users = pd.Series(np.repeat([f"u{i}" for i in range(50)], 30))
    first, again, other = (random_user_split(users, seed=s) for s in (1, 1, 2))
    assert (first == again).all() and not (first == other).all()
    per_user = pd.DataFrame({"user": users, "label": first}).groupby("user").label.value_counts().unstack()
    assert (per_user[TRAIN] == 24).all() and (per_user[VALID] == 3).all() and (per_user[TEST] == 3).all()


def test_unknown_protocol_is_rejected():
    with pytest.raises(ValueError, match="leave-one-out"):
        split_labels(pd.DataFrame({"ts": [], "user_id": []}), "leave-one-out")


def test_graph_round_trips_with_ids(tmp_path):
    log = pd.DataFrame(
        {"user_id": ["b", "a", "b"], "item_id": ["x", "y", "y"], "ts": pd.to_datetime([1, 2, 3], unit="s")}
    )
    graph = build_graph(log, np.array([TRAIN, TRAIN, TEST]), "temporal")
    graph.save(tmp_path)
    loaded = InteractionGraph.load(tmp_path)
    assert list(loaded.user_ids) == ["b", "a"] and list(loaded.item_ids) == ["x", "y"]
    assert loaded.users.tolist() == [0, 1, 0] and loaded.ts.tolist() == [1, 2, 3]
    assert loaded.fingerprint() == graph.fingerprint()
    assert loaded.pairs(TRAIN).tolist() == [0 * 2 + 0, 1 * 2 + 1]
