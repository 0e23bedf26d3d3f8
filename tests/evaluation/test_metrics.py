import math

import numpy as np
import pandas as pd
import pytest
import torch

from grec_dagster.evaluation.evaluator import evaluate
from grec_dagster.evaluation.metrics import RankingTask, rank_users
from grec_dagster.graph.interactions import TEST, TRAIN, VALID, build_graph

N_ITEMS = 5
SCORES = torch.tensor(
    [
        [9.0, 8.0, 1.0, 7.0, 2.0],  # user 0: item 0 seen; relevant {1, 3}
        [5.0, 4.0, 3.0, 2.0, 1.0],  # user 1: nothing seen; relevant {2}
        [1.0, 5.0, 2.0, 3.0, 4.0],  # user 2: item 1 seen; relevant {0, 4}
    ]
)


def keys(pairs: list[tuple[int, int]]) -> torch.Tensor:
    return torch.tensor(sorted(u * N_ITEMS + i for u, i in pairs))


@pytest.fixture
def per_user():
    task = RankingTask.from_pairs(
        truth=keys([(0, 1), (0, 3), (1, 2), (2, 0), (2, 4)]), seen=keys([(0, 0), (2, 1)]), n_items=N_ITEMS
    )
    segment = torch.tensor([True, False, True, False, False])
    return rank_users(lambda users: SCORES[users], task, ks=(1, 3), item_segments={"seg": segment}, batch_size=2)


def test_metrics_match_hand_computed_values(per_user):
    log3, log4 = math.log2(3), math.log2(4)
    expected = {
        ("recall", 1): [0.5, 0.0, 0.5],
        ("ndcg", 1): [1.0, 0.0, 1.0],
        ("mrr", 1): [1.0, 0.0, 1.0],
        ("hit", 1): [1.0, 0.0, 1.0],
        ("recall", 3): [1.0, 1.0, 0.5],
        ("ndcg", 3): [1.0, 1 / log4, 1 / (1 + 1 / log3)],
        ("mrr", 3): [1.0, 1 / 3, 1.0],
        ("hit", 3): [1.0, 1.0, 1.0],
    }
    for (metric, k), values in expected.items():
        assert per_user[("all", metric, k)].tolist() == pytest.approx(values), (metric, k)


def test_item_segment_keeps_only_its_relevant_items(per_user):
    recall = per_user[("seg", "recall", 3)]
    assert math.isnan(recall[0])  # user 0 has no relevant item in the segment
    assert recall[1:].tolist() == pytest.approx([1.0, 0.0])
    assert per_user[("seg", "ndcg", 3)][1:].tolist() == pytest.approx([1 / math.log2(4), 0.0])


def test_seen_items_never_count_as_hits():
    task = RankingTask.from_pairs(truth=keys([(0, 0)]), seen=keys([(0, 0)]), n_items=N_ITEMS)
    assert len(task.users) == 0  # an item already seen is not something to recommend


def test_evaluate_reports_user_and_item_segments():
    log = pd.DataFrame(
        {
            "user_id": ["a", "b", "b", "b", "a", "c"],
            "item_id": ["x", "x", "y", "z", "z", "w"],
            "ts": pd.to_datetime([1, 2, 3, 4, 5, 6], unit="D"),
        }
    )
    graph = build_graph(log, np.array([TRAIN, TRAIN, TRAIN, VALID, TEST, TEST]), "temporal")
    order = {"z": 4.0, "w": 3.0, "x": 2.0, "y": 1.0}
    scores = torch.tensor([[order[i] for i in graph.item_ids]] * graph.n_users)
    table = evaluate(lambda users: scores[users], graph, "z-first", TEST, ks=(1,))
    recall = table[table.metric == "recall"].set_index("segment")
    # a (warm) finds z once x is excluded; c (cold, wants w) gets z first.
    assert recall.loc["all", "value"] == pytest.approx(0.5)
    assert recall.loc["warm_users", "value"] == pytest.approx(1.0)
    assert recall.loc["cold_users", "value"] == pytest.approx(0.0)
    assert recall.loc["cold_items", "value"] == pytest.approx(0.5)  # z and w never appear in training
    assert recall.loc["head_items", "users"] == 0


def test_testing_excludes_what_the_user_met_in_validation_and_validation_excludes_only_training():
    """User a met x in train and y in valid, and is tested on z; every model puts y above z. At test y is
    history (the user met it before the cut): excluded, so z comes first. At validation only training
    events are history, so y, the validation target, is ranked and found."""
    log = pd.DataFrame(
        {
            "user_id": ["a", "a", "a", "b"],
            "item_id": ["x", "y", "z", "y"],
            "ts": pd.to_datetime([1, 2, 3, 4], unit="D"),
        }
    )
    graph = build_graph(log, np.array([TRAIN, VALID, TEST, TRAIN]), "temporal")
    order = {"x": 3.0, "y": 2.0, "z": 1.0}
    scores = torch.tensor([[order[i] for i in graph.item_ids]] * graph.n_users)
    hit = {}
    for split in (VALID, TEST):
        table = evaluate(lambda users: scores[users], graph, "y-before-z", split, ks=(1,))
        hit[split] = table[(table.metric == "hit") & (table.segment == "all")].value.item()
    assert hit == {VALID: 1.0, TEST: 1.0}
    # had validation items not been excluded at test, y would take rank 1 and z would be missed
    unexcluded = RankingTask.from_pairs(graph.pairs(TEST), graph.pairs(TRAIN), graph.n_items)
    assert rank_users(lambda users: scores[users], unexcluded, ks=(1,))[("all", "hit", 1)].tolist() == [0.0]
