"""DynLLM-style profile fusion: exact top-k distillation that learns, masked users untouched, and a
temporal model that ranks users it has never seen an event of by their profile."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from grec_dagster.graph.interactions import TEST, TRAIN, VALID, InteractionGraph
from grec_dagster.graph.temporal import TemporalGraph, build_temporal_graph
from grec_dagster.models.profile_fusion import ProfileFacets, ProfileFusion
from grec_dagster.models.temporal import TemporalGraphAttention, TemporalParams
from grec_dagster.training.embeddings import TrainedEmbeddings
from grec_dagster.training.loop import TrainParams
from grec_dagster.training.train_temporal import train_temporal

N_FACETS, TEXT_DIM, DIM = 5, 12, 16
PARAMS = TemporalParams(dim=DIM, time_dim=8, heads=2, neighbors=5, dropout=0.0, memory=False, profile_top_k=2)
N_USERS, N_ITEMS, N_WARM = 40, 20, 30
"""Users and items each belong to cluster id % 2; users from N_WARM on never have an event."""


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small tensors: one thread, or OpenMP workers spin against other jobs on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def random_profiles(n_users: int, seed: int = 0, with_profile: float = 0.7) -> ProfileFacets:
    generator = torch.Generator().manual_seed(seed)
    return ProfileFacets(
        torch.randn(n_users, N_FACETS, TEXT_DIM, generator=generator),
        torch.rand(n_users, generator=generator) < with_profile,
    )


def fusion(profiles: ProfileFacets, top_k: int = 2) -> ProfileFusion:
    torch.manual_seed(0)
    module = ProfileFusion(profiles, DIM, heads=2, top_k=top_k, dropout=0.0)
    torch.nn.init.normal_(module.attend.out_proj.weight)  # as after some training: W_o starts at 0
    return module


def test_shapes_and_distillation_keeps_exactly_the_k_best_scored_facets() -> None:
    profiles = random_profiles(8)
    module = fusion(profiles, top_k=3)
    users = torch.arange(8)
    tokens = module.tokens(users)
    kept = module.distill(tokens)

    assert tokens.shape == (8, N_FACETS, DIM) and kept.shape == (8, 3, DIM)
    assert module(users, torch.randn(8, DIM)).shape == (8, DIM)
    scores = tokens @ module.score / module.score.norm()
    for user in range(8):
        best = scores[user].argsort(descending=True)[:3]
        expected = tokens[user, best] * torch.sigmoid(scores[user, best]).unsqueeze(1)
        assert torch.allclose(kept[user], expected)


@pytest.mark.parametrize("top_k", [0, N_FACETS + 1])
def test_top_k_must_select_among_the_facets(top_k: int) -> None:
    with pytest.raises(ValueError, match="top_k"):
        ProfileFusion(random_profiles(4), DIM, heads=2, top_k=top_k, dropout=0.0)


def test_scoring_vector_learns_through_the_gate_and_dropped_facets_get_no_gradient() -> None:
    module = fusion(random_profiles(1), top_k=2)
    tokens = module.tokens(torch.tensor([0]))
    dropped = (tokens[0] @ module.score).argsort()[: N_FACETS - 2]

    module(torch.tensor([0]), torch.zeros(1, DIM)).pow(2).sum().backward()

    assert float(module.score.grad.abs().sum()) > 0
    for facet in range(N_FACETS):
        reached = float(module.project[facet].weight.grad.abs().sum()) > 0
        assert reached == (facet not in dropped.tolist()), facet


def event_graph(n_train: int = 400, seed: int = 0) -> tuple[InteractionGraph, TemporalGraph]:
    """Warm users meet items of their own cluster over time: train, then valid, then test events."""
    generator = torch.Generator().manual_seed(seed)
    users = torch.randint(N_WARM, (n_train,), generator=generator)
    items = torch.randint(N_ITEMS // 2, (n_train,), generator=generator) * 2 + users % 2
    ts = torch.randint(1000, (n_train,), generator=generator).sort().values
    split = torch.full_like(users, TRAIN, dtype=torch.uint8)
    split[ts >= 800], split[ts >= 900] = VALID, TEST
    graph = InteractionGraph(
        user_ids=np.arange(N_USERS).astype(str).astype(object),
        item_ids=np.arange(N_ITEMS).astype(str).astype(object),
        users=users,
        items=items,
        ts=ts,
        split=split,
        protocol="temporal",
    )
    cluster = torch.nn.functional.one_hot(torch.arange(N_ITEMS) % 2).float()
    return graph, build_temporal_graph(graph, torch.ones(N_USERS, 1), cluster)


def cluster_profiles() -> ProfileFacets:
    """Facet 0 names the user's cluster (plus noise); the other facets are noise. Everyone has one."""
    generator = torch.Generator().manual_seed(1)
    facets = torch.randn(N_USERS, N_FACETS, TEXT_DIM, generator=generator) * 0.3
    facets[:, 0, 0] += torch.where(torch.arange(N_USERS) % 2 == 0, 1.0, -1.0)
    return ProfileFacets(facets, torch.ones(N_USERS, dtype=torch.bool))


def test_users_without_a_profile_get_exactly_the_plain_model_embedding() -> None:
    _, temporal = event_graph()
    profiles = random_profiles(N_USERS, with_profile=0.5)
    torch.manual_seed(0)
    fused = TemporalGraphAttention(temporal.user_features, temporal.item_features, PARAMS, profiles).eval()
    torch.nn.init.normal_(fused.profiles.attend.out_proj.weight)
    plain = TemporalGraphAttention(temporal.user_features, temporal.item_features, PARAMS).eval()
    plain.load_state_dict({k: v for k, v in fused.state_dict().items() if not k.startswith("profiles.")})

    with_profiles = fused.embeddings_at(temporal, 1000, batch_size=64)
    without = plain.embeddings_at(temporal, 1000, batch_size=64)

    assert torch.equal(with_profiles[1], without[1])  # items never go through the profile branch
    assert torch.equal(with_profiles[0][~profiles.mask], without[0][~profiles.mask])
    assert not torch.isclose(with_profiles[0][profiles.mask], without[0][profiles.mask]).all(1).any()


def own_cluster_auc(trained: TrainedEmbeddings, users: torch.Tensor) -> float:
    """Per user, P(an item of its cluster outscores one of the other cluster), averaged."""
    scores = trained.score(users)
    own = (torch.arange(N_ITEMS) % 2).unsqueeze(0) == (users % 2).unsqueeze(1)
    wins = scores.unsqueeze(2) > scores.unsqueeze(1)
    pairs = own.unsqueeze(2) & ~own.unsqueeze(1)
    return float(((wins & pairs).sum((1, 2)) / pairs.sum((1, 2))).mean())


def test_profile_variant_trains_and_ranks_users_without_events_by_their_profile() -> None:
    graph, temporal = event_graph()
    train = TrainParams(epochs=12, lr=1e-2, batch_size=64, patience=12)
    profiles = cluster_profiles()
    torch.manual_seed(train.seed)  # as train_temporal builds it
    initial = TemporalGraphAttention(temporal.user_features, temporal.item_features, PARAMS, profiles).state_dict()

    fused = train_temporal(graph, temporal, PARAMS, train, profiles=profiles)
    plain = train_temporal(graph, temporal, PARAMS, train)

    losses = [record["train_loss"] for record in fused.result.history]
    assert losses[-1] < 0.7 * losses[0]
    assert not torch.allclose(fused.result.best_state["profiles.score"], initial["profiles.score"])
    cold = torch.arange(N_WARM, N_USERS)
    assert own_cluster_auc(fused, cold) > 0.9
    assert own_cluster_auc(plain, cold) == pytest.approx(0.5, abs=0.05)  # cold users all look alike to it
