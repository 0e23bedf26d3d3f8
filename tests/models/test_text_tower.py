"""Text tower: ranks items it never trained on from their text, and users from their profile alone.

A planted shop where text decides taste: every item's text is its cluster's centroid plus
noise, every user likes one cluster. A fixed set of items (cold items) appears only in TEST,
so training never sees them; a fixed set of users (cold users) appears only in TEST too, so
they have no history, and only their profile (their cluster's centroid plus noise) says who
they are. Popularity ranks cold items last, and cold users alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from grec_dagster.evaluation.evaluator import evaluate
from grec_dagster.graph.interactions import TEST, TRAIN, VALID, InteractionGraph
from grec_dagster.models.popularity import broadcast_scores, most_popular
from grec_dagster.models.text_tower import TextTower, TextTowerParams
from grec_dagster.training.embeddings import TrainedEmbeddings
from grec_dagster.training.loop import TrainParams
from grec_dagster.training.train_text_tower import TextTowerObjective, train_text_tower

N_USERS, N_ITEMS, N_CLUSTERS, D_TEXT = 300, 240, 6, 32
N_COLD_ITEMS, N_COLD_USERS, EVENTS_PER_USER = 60, 40, 14
PARAMS = TextTowerParams(dim=32, hidden=64, negatives=4, dropout=0.0)
TRAIN_FAST = TrainParams(epochs=30, lr=1e-2, batch_size=512, patience=10)


@dataclass(frozen=True)
class Shop:
    graph: InteractionGraph
    item_text: Tensor
    profile_text: Tensor
    cold_items: Tensor
    cold_users: Tensor
    item_cluster: Tensor


def _noisy(centroids: Tensor, rows: Tensor, noise: float, generator: torch.Generator) -> Tensor:
    out = centroids[rows] + noise * torch.randn(len(rows), centroids.shape[1], generator=generator)
    return F.normalize(out, dim=1)


@pytest.fixture(scope="module")
def shop() -> Shop:
    return make_shop()


def make_shop(
    noise: float = 0.15,
    n_users: int = N_USERS,
    n_items: int = N_ITEMS,
    n_cold_items: int = N_COLD_ITEMS,
    n_cold_users: int = N_COLD_USERS,
) -> Shop:
    """Item i is in cluster i % N_CLUSTERS; the default sizes are the shop the tests here use."""
    g = torch.Generator().manual_seed(0)
    centroids = F.normalize(torch.randn(N_CLUSTERS, D_TEXT, generator=g), dim=1)
    item_cluster = torch.arange(n_items) % N_CLUSTERS
    user_cluster = torch.randint(N_CLUSTERS, (n_users,), generator=g)
    item_text = _noisy(centroids, item_cluster, noise, g)
    profile_text = _noisy(centroids, user_cluster, noise, g)
    cold_items = torch.randperm(n_items, generator=g)[:n_cold_items]
    cold_users = torch.arange(n_users - n_cold_users, n_users)

    # 90% of a user's events within their cluster, the rest anywhere; uniform within each.
    users = torch.arange(n_users).repeat_interleave(EVENTS_PER_USER)
    own = torch.rand(len(users), generator=g) < 0.9
    slot = torch.randint(n_items // N_CLUSTERS, (len(users),), generator=g)
    items = torch.where(
        own, slot * N_CLUSTERS + user_cluster[users], torch.randint(n_items, (len(users),), generator=g)
    )
    split = torch.multinomial(torch.tensor([0.7, 0.1, 0.2]), len(users), replacement=True, generator=g)
    split[torch.isin(items, cold_items) | torch.isin(users, cold_users)] = TEST
    graph = InteractionGraph(
        user_ids=np.arange(n_users).astype(str).astype(object),
        item_ids=np.arange(n_items).astype(str).astype(object),
        users=users,
        items=items,
        ts=torch.arange(len(users)),
        split=split.to(torch.uint8),
        protocol="random",
    )
    return Shop(graph, item_text, profile_text, cold_items, cold_users, item_cluster)


@pytest.fixture(scope="module")
def trained(shop: Shop) -> TrainedEmbeddings:
    return train_text_tower(shop.graph, shop.item_text, None, PARAMS, TRAIN_FAST)


@pytest.fixture(scope="module")
def profiled(shop: Shop) -> TrainedEmbeddings:
    return train_text_tower(shop.graph, shop.item_text, shop.profile_text, PARAMS, TRAIN_FAST)


def _metric(table: pd.DataFrame, segment: str, metric: str, k: int = 20) -> float:
    row = table[(table.segment == segment) & (table.metric == metric) & (table.k == k)]
    return float(row["value"].iloc[0])


def test_cold_items_are_ranked_from_their_text(shop: Shop, trained: TrainedEmbeddings) -> None:
    graph = shop.graph
    assert int(graph.train_item_counts[shop.cold_items].sum()) == 0
    tower = evaluate(trained.score, graph, "text_tower")
    popularity = evaluate(broadcast_scores(most_popular(graph)), graph, "popularity")
    cold_recall = _metric(tower, "cold_items", "recall")
    random_recall = 20 / (N_ITEMS - EVENTS_PER_USER * 0.8)  # a top 20 drawn at random among unseen items
    assert _metric(popularity, "cold_items", "recall") == 0.0  # cold items have no count
    assert cold_recall > 3 * random_recall, cold_recall
    assert _metric(tower, "all", "ndcg") > 3 * _metric(popularity, "all", "ndcg")


def test_blank_cold_item_text_loses_the_signal(shop: Shop, trained: TrainedEmbeddings) -> None:
    """The same trained weights with the cold items' text zeroed: every cold item embeds alike."""
    model = TextTower(shop.item_text, None, N_USERS, shop.graph.pairs(TRAIN, VALID), PARAMS)
    model.load_state_dict(trained.result.best_state)
    model.eval()
    users, items = model.embed_all()
    torch.testing.assert_close(items, trained.item_embedding)
    torch.testing.assert_close(users, trained.user_embedding)
    blank = shop.item_text.clone()
    blank[shop.cold_items] = 0.0
    with torch.no_grad():
        blank_items = model.encode_items(blank)
    blind = evaluate(lambda batch: users[batch] @ blank_items.T, shop.graph, "blind")
    informed = evaluate(trained.score, shop.graph, "text_tower")
    assert _metric(blind, "cold_items", "recall") < 0.5 * _metric(informed, "cold_items", "recall")


def test_profiles_rank_for_users_without_history(
    shop: Shop, trained: TrainedEmbeddings, profiled: TrainedEmbeddings
) -> None:
    graph = shop.graph
    assert int(graph.train_user_counts[shop.cold_users].sum()) == 0
    for embeddings in (trained, profiled):
        assert torch.isfinite(embeddings.user_embedding[shop.cold_users]).all()
    without = _metric(evaluate(trained.score, graph, "no profile"), "cold_users", "ndcg")
    with_profile = _metric(evaluate(profiled.score, graph, "profile"), "cold_users", "ndcg")
    # Without history or profile every cold user gets the same vector (MLP_user(0)).
    assert torch.allclose(trained.user_embedding[shop.cold_users], trained.user_embedding[shop.cold_users[:1]])
    assert with_profile > 2 * without, (with_profile, without)


def test_shapes_and_cuts(shop: Shop, trained: TrainedEmbeddings, profiled: TrainedEmbeddings) -> None:
    graph = shop.graph
    for embeddings in (trained, profiled):
        assert embeddings.user_embedding.shape == embeddings.valid_user_embedding.shape == (N_USERS, PARAMS.dim)
        assert embeddings.item_embedding.shape == (N_ITEMS, PARAMS.dim)
        assert torch.equal(embeddings.valid_item_embedding, embeddings.item_embedding)  # text only: one cut
        assert embeddings.result.best_epoch >= 0 and embeddings.result.best_metric > 0
    # A user whose VALID pairs add items to their history is embedded anew at the test cut; others are not.
    valid, known = graph.pairs(VALID), graph.pairs(TRAIN)
    grows = torch.zeros(N_USERS, dtype=torch.bool)
    grows[valid[~torch.isin(valid, known)] // N_ITEMS] = True
    changed = (trained.user_embedding - trained.valid_user_embedding).abs().amax(1) > 1e-6
    assert grows.any() and torch.equal(changed, grows)


def test_history_mean_leaves_the_positive_out(shop: Shop) -> None:
    history = shop.graph.pairs(TRAIN)
    model = TextTower(shop.item_text, shop.profile_text, N_USERS, history, PARAMS)
    users, items = history // N_ITEMS, history % N_ITEMS
    user = int(users[0])
    mine = items[users == user]
    absent = int(torch.nonzero(~torch.isin(torch.arange(N_ITEMS), mine))[0])
    full = model.user_inputs(torch.tensor([user]))
    loo = model.user_inputs(torch.tensor([user, user]), leave_out=torch.tensor([int(mine[0]), absent]))
    d = D_TEXT
    torch.testing.assert_close(full[0, :d], shop.item_text[mine].mean(0))
    torch.testing.assert_close(loo[0, :d], shop.item_text[mine[1:]].mean(0))
    torch.testing.assert_close(loo[1], full[0])  # an item outside the history changes nothing
    torch.testing.assert_close(full[0, d:-1], shop.profile_text[user])
    assert full[0, -1] == 1.0
    empty = model.user_inputs(shop.cold_users[:2])
    assert torch.equal(empty[:, :d], torch.zeros(2, d))

    loss = model(users[:64], items[:64], torch.randint(N_ITEMS, (64, PARAMS.negatives)), torch.ones(64, dtype=torch.bool))
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_training_pairs_before_the_profile_cut_never_read_the_profile(shop: Shop) -> None:
    """A profile written at the cut summarizes earlier events: a pair from before it would read a
    summary of itself. Such pairs get the no-profile input; pairs from the cut on get the profile."""
    graph = shop.graph
    cut = int(graph.ts[graph.split == TRAIN].median())
    model = TextTower(shop.item_text, shop.profile_text, N_USERS, graph.pairs(TRAIN), PARAMS)
    objective = TextTowerObjective(graph, model, batch_size=256, profile_from=cut)
    users, items, ts = graph.edges(TRAIN)
    first = {}
    for user, item, time in zip(users.tolist(), items.tolist(), ts.tolist(), strict=True):
        first.setdefault((user, item), time)
    seen = 0
    for batch_users, positives, _, with_profile in objective.batches(0, torch.Generator().manual_seed(0)):
        expected = [first[(u, i)] >= cut for u, i in zip(batch_users.tolist(), positives.tolist(), strict=True)]
        assert with_profile.tolist() == expected
        inputs = model.user_inputs(batch_users, with_profile=with_profile)
        assert not inputs[~with_profile, D_TEXT:].any()  # zero profile and has_profile 0
        assert torch.equal(inputs[with_profile, D_TEXT:-1], shop.profile_text[batch_users[with_profile]])
        seen += len(batch_users)
    assert seen == len(graph.pairs(TRAIN)) and 0 < sum(first[k] >= cut for k in first) < len(first)


def test_training_is_seeded(shop: Shop) -> None:
    short = TRAIN_FAST.model_copy(update={"epochs": 2})
    first, again, other = (
        train_text_tower(shop.graph, shop.item_text, None, PARAMS, short.model_copy(update={"seed": seed}))
        for seed in (0, 0, 1)
    )
    assert torch.equal(first.user_embedding, again.user_embedding)  # deterministic kernels: the same bits
    assert torch.equal(first.item_embedding, again.item_embedding)
    assert (first.item_embedding - other.item_embedding).abs().max() > 1e-2
