"""EASE: the closed form is the one of the paper, it learns planted taste, and each cut reads only
the events before it (no test event reaches it; valid events do, at the test cut).

The shop is the text tower's (every user likes one cluster of items, popularity is flat), with
the TRAIN events of a fixed set of users moved to VALID: at the validation cut they have no
history, at the test cut their valid events are their history.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from grec_dagster.evaluation.evaluator import evaluate
from grec_dagster.evaluation.metrics import ScoreFn
from grec_dagster.evaluation.tables import headline_table
from grec_dagster.graph.interactions import TEST, TRAIN, VALID, InteractionGraph
from grec_dagster.models.ease import MAX_ITEMS, EASEParams, binary_matrix, check_catalog, ease_weights, gram
from grec_dagster.models.popularity import broadcast_scores, most_popular
from grec_dagster.training.embeddings import TrainedEmbeddings
from grec_dagster.training.train_ease import train_ease

from .test_text_tower import make_shop

N_VALID_ONLY = 20
PARAMS = EASEParams(lambdas=[10.0, 40.0, 160.0])


@pytest.fixture(scope="module")
def shop() -> InteractionGraph:
    graph = make_shop().graph
    valid_only = torch.isin(graph.users, torch.arange(N_VALID_ONLY)) & (graph.split == TRAIN)
    return dataclasses.replace(graph, split=graph.split.masked_fill(valid_only, VALID))


@pytest.fixture(scope="module")
def trained(shop: InteractionGraph) -> TrainedEmbeddings:
    return train_ease(shop, PARAMS)


def test_closed_form_matches_a_direct_numpy_solve() -> None:
    rng = np.random.default_rng(0)
    x = (rng.random((40, 12)) < 0.3).astype(np.float64)
    reg = 5.0
    system = x.T @ x + reg * np.eye(12)
    inverse = np.linalg.inv(system)
    expected = np.eye(12) - inverse / np.diag(inverse)  # I - P diag(1/diag(P)): column j over P_jj

    rows, cols = np.nonzero(x)
    pairs = torch.from_numpy(rows * 12 + cols)
    gram_matrix = gram(binary_matrix(pairs, 40, 12))
    weights = ease_weights(gram_matrix, reg).numpy()

    # Both are float64 inverses of a system with condition number < 100 (asserted): their errors
    # are within cond * n * eps ~ 100 * 12 * 2.2e-16 ~ 3e-13 of the exact P, and B's entries are
    # ratios of P's entries, of order 1; 1e-10 leaves a 300x margin for the two solvers' orders.
    assert np.linalg.cond(system) < 100
    np.testing.assert_allclose(gram_matrix.numpy(), x.T @ x, rtol=0, atol=0)  # counts are exact
    np.testing.assert_allclose(weights, expected, rtol=0, atol=1e-10)
    assert (np.diag(weights) == 0).all()
    # The constrained optimum's stationarity: (X^T X + lambda I) B - X^T X is diagonal (the
    # Lagrange multipliers of diag(B) = 0); the same error bound times ||system|| < 30 applies.
    stationarity = system @ weights - x.T @ x
    np.testing.assert_allclose(stationarity - np.diag(np.diag(stationarity)), 0.0, atol=1e-9)


def ndcg_against_popularity(graph: InteractionGraph, model: str, score: ScoreFn) -> dict[str, float]:
    """Test NDCG@20 of `model` and of most-popular, by name."""
    ranked = ((model, score), ("popularity", broadcast_scores(most_popular(graph))))
    return {name: headline_table(evaluate(fn, graph, name)).iloc[0]["ndcg@20"] for name, fn in ranked}


def test_beats_popularity_on_planted_taste(shop: InteractionGraph, trained: TrainedEmbeddings) -> None:
    ndcg = ndcg_against_popularity(shop, "ease", trained.score)
    assert ndcg["ease"] > 3 * ndcg["popularity"], ndcg


def test_lambda_is_chosen_on_valid_and_b_is_refitted_on_train_and_valid(
    shop: InteractionGraph, trained: TrainedEmbeddings
) -> None:
    history = trained.result.history
    assert [record["lambda"] for record in history] == PARAMS.lambdas
    best = max(range(len(history)), key=lambda index: history[index]["ndcg@20"])
    assert trained.result.best_epoch == best and trained.result.best_metric == history[best]["ndcg@20"]
    assert len({record["ndcg@20"] for record in history}) > 1  # the grid is not flat: the choice means something
    reg = PARAMS.lambdas[best]
    for splits, users, items in (
        ((TRAIN,), trained.valid_user_embedding, trained.valid_item_embedding),
        ((TRAIN, VALID), trained.user_embedding, trained.item_embedding),
    ):
        matrix = binary_matrix(shop.pairs(*splits), shop.n_users, shop.n_items)
        assert torch.equal(users, matrix)
        assert torch.equal(items, ease_weights(gram(matrix), reg).T.float())


def test_test_events_reach_nothing(shop: InteractionGraph, trained: TrainedEmbeddings) -> None:
    """Other test events, same everything else: the same bits at both cuts and the same search."""
    test = shop.split == TEST
    other_items = torch.randint(shop.n_items, (int(test.sum()),), generator=torch.Generator().manual_seed(1))
    changed = dataclasses.replace(shop, items=shop.items.masked_scatter(test, other_items))
    assert not torch.equal(changed.pairs(TEST), shop.pairs(TEST))

    again = train_ease(changed, PARAMS)

    for name in ("user_embedding", "item_embedding", "valid_user_embedding", "valid_item_embedding"):
        assert torch.equal(getattr(again, name), getattr(trained, name)), name
    without_seconds = [{k: v for k, v in record.items() if k != "seconds"} for record in trained.result.history]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in again.result.history] == without_seconds


def test_valid_events_make_the_test_cut_history(shop: InteractionGraph, trained: TrainedEmbeddings) -> None:
    users = torch.arange(N_VALID_ONLY)
    valid_users, _, _ = shop.edges(VALID)
    assert int(shop.train_user_counts[users].sum()) == 0 and torch.isin(users, valid_users).all()
    assert (trained.valid_user_embedding[users] == 0).all()  # nothing known at the validation cut
    distinct_valid_items = torch.bincount(shop.pairs(VALID) // shop.n_items, minlength=shop.n_users)[users]
    assert torch.equal(trained.user_embedding[users].sum(1), distinct_valid_items.float())  # their VALID rows
    assert (trained.score(users).std(1) > 0).all()  # their test-cut ranking is personal, not constant


def test_refuses_lambdas_that_may_not_invert_and_catalogs_too_large_to() -> None:
    with pytest.raises(ValueError, match="every lambda must be > 0"):
        EASEParams(lambdas=[250.0, 0.0])
    check_catalog(MAX_ITEMS)
    with pytest.raises(ValueError, match=f"{MAX_ITEMS + 1:,} items would need about"):
        check_catalog(MAX_ITEMS + 1)
