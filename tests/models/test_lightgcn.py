"""LightGCN: its propagation is PyG's, and training learns what popularity cannot (a planted shop)."""

from __future__ import annotations

import pandas as pd
import torch
from torch_geometric.nn.models import LightGCN as PyGLightGCN

from grec_dagster.evaluation.evaluator import evaluate
from grec_dagster.graph.interactions import TEST, TRAIN
from grec_dagster.models.lightgcn import LightGCNParams
from grec_dagster.models.popularity import broadcast_scores, most_popular
from grec_dagster.training.loop import TrainParams
from grec_dagster.training.train_lightgcn import build_lightgcn, train_lightgcn

from .test_text_tower import make_shop


def ndcg_at_20(results: pd.DataFrame, segment: str = "all") -> float:
    row = results[(results.segment == segment) & (results.metric == "ndcg") & (results.k == 20)]
    return float(row.value.iloc[0])


def test_propagation_matches_pyg_lightgcn() -> None:
    """The same layer-0 embeddings give PyG's final embeddings: A_hat = D^-1/2 A D^-1/2 over the distinct
    training pairs (no self loops), alpha_l = 1/(L+1). Embeddings run in float64, but our A_hat's
    coefficients are computed in float32 (relative error <= 2^-24 each), so after L = 3 layers a value
    may differ by about L * 2^-24 ~ 2e-7 of the size of the terms it sums (embeddings ~0.1 here; a
    value near zero can be a difference of such terms): atol 1e-7 with rtol 1e-6 bounds that. A wrong
    norm, alpha or edge set would be off by more than 1e-3."""
    graph = make_shop(n_users=60, n_items=48, n_cold_items=8, n_cold_users=6).graph
    params = LightGCNParams(dim=8, layers=3)
    ours = build_lightgcn(graph, params).double()
    ours.adjacency = ours.adjacency.double()
    pairs = graph.pairs(TRAIN)
    users, items = pairs // graph.n_items, pairs % graph.n_items + graph.n_users
    edge_index = torch.stack([torch.cat([users, items]), torch.cat([items, users])])
    theirs = PyGLightGCN(graph.n_users + graph.n_items, params.dim, params.layers).double()
    with torch.no_grad():
        theirs.embedding.weight.copy_(ours.embedding.weight)
        expected = theirs.get_embedding(edge_index)
        user_emb, item_emb = ours.final_embeddings()
    connected = torch.zeros(graph.n_users + graph.n_items, dtype=torch.bool)
    connected[edge_index[0]] = True
    assert not connected.all()  # isolated (cold) nodes included
    ours_final = torch.cat([user_emb, item_emb])
    torch.testing.assert_close(ours_final[connected], expected[connected], rtol=1e-6, atol=1e-7)
    # PyG keeps an isolated node's untrained initial vector (over L + 1); ours is zero: nothing trained it
    assert not ours_final[~connected].any() and expected[~connected].abs().min() > 0


def test_learns_a_planted_shop_that_popularity_cannot() -> None:
    """Every user likes one cluster of items (90% of their events), items are equally popular within
    clusters: popularity has nothing to go on, collaborative filtering everything."""
    shop = make_shop(n_cold_items=0, n_cold_users=0)
    trained = train_lightgcn(
        shop.graph, LightGCNParams(dim=16, layers=2), TrainParams(epochs=30, lr=1e-2, batch_size=512, patience=5)
    )
    learned = ndcg_at_20(evaluate(trained.score, shop.graph, "lightgcn", TEST))
    popular = ndcg_at_20(evaluate(broadcast_scores(most_popular(shop.graph)), shop.graph, "popularity", TEST))
    assert learned > 2 * popular, (learned, popular)
