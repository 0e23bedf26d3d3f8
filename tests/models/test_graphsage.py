"""GraphSAGE: learns planted taste, embeds items it never trained on, and its two encoders agree.

The shop has sharp category tastes and a flat popularity curve, so a personalized model
has a lot to win over popularity. A fixed set of items has its TRAIN events moved to VALID:
training never sees them as positives and gives them no id embedding, and only the final
(TRAIN + VALID) graph shows their neighbors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd
import pytest
import torch
from torch import Tensor

from grec_dagster.data.synthetic import SyntheticConfig, generate_synthetic
from grec_dagster.evaluation.evaluator import evaluate
from grec_dagster.evaluation.tables import headline_table
from grec_dagster.graph.features import item_features, user_features
from grec_dagster.graph.interactions import TEST, TRAIN, VALID, InteractionGraph, build_graph
from grec_dagster.graph.samplers import sample_neighbors
from grec_dagster.graph.splits import split_labels
from grec_dagster.models.graphsage import GraphSAGE, GraphSAGEParams
from grec_dagster.models.popularity import broadcast_scores, most_popular
from grec_dagster.training.bpr import BPRSampler
from grec_dagster.training.embeddings import TrainedEmbeddings
from grec_dagster.training.loop import TrainParams
from grec_dagster.training.train_graphsage import GraphSAGETraining, interaction_csr, pairs_per_batch, train_graphsage

PARAMS = GraphSAGEParams(dim=32, fanouts=[10, 5], id_dropout=0.1, dropout=0.0)
TRAIN_FAST = TrainParams(epochs=20, lr=1e-2, batch_size=1024)


@dataclass(frozen=True)
class Shop:
    graph: InteractionGraph
    user_x: Tensor
    item_x: Tensor
    held_out: Tensor
    """Items without a TRAIN event: their training events were moved to VALID."""


@pytest.fixture(scope="module")
def shop() -> Shop:
    frames = generate_synthetic(
        SyntheticConfig(
            n_interactions=6000,
            n_users=300,
            n_items=150,
            n_categories=10,
            taste_concentration=0.05,
            popularity_exponent=0.5,
            seed=0,
        )
    )
    log = frames.interactions
    labels = split_labels(log, "random", seed=0)
    items = log["item_id"].unique()
    held_ids = items[torch.randperm(len(items), generator=torch.Generator().manual_seed(0))[:30].numpy()]
    labels[log["item_id"].isin(held_ids).to_numpy() & (labels == TRAIN)] = VALID
    graph = build_graph(log, labels, "random")
    held_out = torch.from_numpy(pd.Index(graph.item_ids).get_indexer(held_ids))
    return Shop(
        graph, user_features(frames.users, graph.user_ids), item_features(frames.items, graph.item_ids), held_out
    )


@pytest.fixture(scope="module")
def trained(shop: Shop) -> TrainedEmbeddings:
    return train_graphsage(shop.graph, shop.user_x, shop.item_x, PARAMS, TRAIN_FAST)


def restored(shop: Shop, trained: TrainedEmbeddings, item_x: Tensor | None = None) -> GraphSAGE:
    """The trained model in eval mode, optionally with other item features."""
    item_x = shop.item_x if item_x is None else item_x
    model = GraphSAGE(shop.user_x, item_x, interaction_csr(shop.graph, TRAIN), PARAMS)
    model.load_state_dict(trained.result.best_state)
    return model.eval()


def held_out_auc(shop: Shop, users: Tensor, items: Tensor) -> float:
    """Per user, P(a held-out item the user meets in TEST outscores one they do not), averaged.

    Comparing items within a user cancels how high a user scores everything; identical
    item embeddings tie every pair and give exactly 0.5.
    """
    graph = shop.graph
    pairs = graph.pairs(TEST)
    truth = torch.zeros(graph.n_users, graph.n_items, dtype=torch.bool)
    truth[pairs // graph.n_items, pairs % graph.n_items] = True
    truth = truth[:, shop.held_out]
    scores = users @ items[shop.held_out].T
    wins = (scores.unsqueeze(2) > scores.unsqueeze(1)).float() + 0.5 * (
        scores.unsqueeze(2) == scores.unsqueeze(1)
    ).float()
    pair_mask = truth.unsqueeze(2) & ~truth.unsqueeze(1)
    counted = pair_mask.sum((1, 2)) > 0
    return float(((wins * pair_mask).sum((1, 2))[counted] / pair_mask.sum((1, 2))[counted]).mean())


def test_beats_popularity_on_planted_taste(shop: Shop, trained: TrainedEmbeddings) -> None:
    graph = shop.graph
    ndcg = {
        name: headline_table(evaluate(score, graph, name)).iloc[0]["ndcg@20"]
        for name, score in (("graphsage", trained.score), ("popularity", broadcast_scores(most_popular(graph))))
    }
    assert ndcg["graphsage"] > 1.5 * ndcg["popularity"], ndcg


def test_items_unseen_in_training_are_ranked_from_features_and_neighbors(
    shop: Shop, trained: TrainedEmbeddings
) -> None:
    assert int(shop.graph.train_item_counts[shop.held_out].sum()) == 0
    train_graph, final_graph = interaction_csr(shop.graph, TRAIN), interaction_csr(shop.graph, TRAIN, VALID)
    blank = shop.item_x.clone()
    blank[shop.held_out] = 0.0

    from_features = held_out_auc(shop, *restored(shop, trained).embed_all(train_graph))
    from_nothing = held_out_auc(shop, *restored(shop, trained, blank).embed_all(train_graph))
    from_neighbors = held_out_auc(shop, *restored(shop, trained, blank).embed_all(final_graph))
    from_both = held_out_auc(shop, trained.user_embedding, trained.item_embedding)

    assert from_nothing == 0.5  # no features, no neighbors: every held-out item embeds alike
    assert from_features > 0.6 and from_neighbors > 0.6 and from_both > 0.7
    assert torch.isfinite(trained.item_embedding[shop.held_out]).all()


def test_unseen_nodes_never_touch_their_id_embedding(shop: Shop) -> None:
    torch.manual_seed(0)
    params = PARAMS.model_copy(update={"id_dropout": 0.0})
    model = GraphSAGE(shop.user_x, shop.item_x, interaction_csr(shop.graph, TRAIN), params)
    users = torch.arange(shop.graph.n_users).repeat_interleave(2)
    items = torch.arange(shop.graph.n_items).repeat(5)[: len(users)]
    loss = model(users, items, items.flip(0).view(-1, 1).expand(-1, 3))
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    touched = model.id_embedding.weight.grad.to_dense().abs().sum(1) > 0  # a sparse gradient: the batch's rows
    assert not touched[shop.graph.n_users + shop.held_out].any()
    assert torch.equal(touched[: shop.graph.n_users], shop.graph.train_user_counts > 0)


def test_minibatch_encoder_with_every_neighbor_matches_layerwise_inference(shop: Shop) -> None:
    torch.manual_seed(0)
    params = PARAMS.model_copy(update={"fanouts": [-1, -1]})
    train_graph = interaction_csr(shop.graph, TRAIN)
    model = GraphSAGE(shop.user_x, shop.item_x, train_graph, params).eval()
    users, items = model.embed_all(train_graph, batch_size=100)
    seeds = torch.tensor([0, 5, shop.graph.n_users + 3, shop.graph.n_users + int(shop.held_out[0])])
    with torch.no_grad():
        encoded = model.encode(sample_neighbors(train_graph, seeds, params.fanouts))
    torch.testing.assert_close(encoded, torch.cat([users, items])[seeds])


def test_training_is_seeded_and_shapes_fit_the_graph(shop: Shop) -> None:
    """Same seed, same batches and samples, deterministic kernels (`fit`): the same bits."""
    short = TRAIN_FAST.model_copy(update={"epochs": 2})
    first, again, other = (
        train_graphsage(shop.graph, shop.user_x, shop.item_x, PARAMS, short.model_copy(update={"seed": seed}))
        for seed in (0, 0, 1)
    )
    assert first.user_embedding.shape == (shop.graph.n_users, PARAMS.dim)
    assert first.item_embedding.shape == (shop.graph.n_items, PARAMS.dim)
    assert torch.equal(first.user_embedding, again.user_embedding)
    assert torch.equal(first.item_embedding, again.item_embedding)
    assert (first.item_embedding - other.item_embedding).abs().max() > 1e-2


def test_max_steps_caps_an_epoch_only_when_set(shop: Shop) -> None:
    """No cap by default, whatever the log; with max_steps, 1/max_steps of the pairs once that beats the batch."""
    assert pairs_per_batch(shop.graph, GraphSAGETraining()) == GraphSAGETraining().batch_size
    assert GraphSAGETraining().examples_per_batch(5_607_338) == 2048  # the 10M synthetic log's pairs
    assert GraphSAGETraining(max_steps=500).examples_per_batch(5_607_338) == 11_215
    assert GraphSAGETraining(max_steps=500).examples_per_batch(80_000) == 2048  # MovieLens-100K's pairs
    capped = GraphSAGETraining(batch_size=16, max_steps=3)
    pairs = shop.graph.pairs(TRAIN)
    assert pairs_per_batch(shop.graph, capped) == math.ceil(len(pairs) / 3) > 16
    assert len(BPRSampler(pairs, shop.graph.n_items, pairs_per_batch(shop.graph, capped))) == 3
