"""Fusion engine: standardized tower scores and contexts, gated fusion that starts as the static one,
bounded grokking shifts, exact masked top-k picks, and end-to-end training on planted shops.

The planted shops have 4 taste clusters (user u and item i belong to cluster id % 4). In the
"experts" shop one tower knows the cold items (no training event) and points warm items to the next
cluster, the other the other way round: any static mixture ties every relevant item with a decoy,
while gates that trust each tower in its own context separate them. In the "taste" shop one tower
knows everyone's cluster and another is noise.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from grec_dagster.evaluation.evaluator import ranking_task, validation_ndcg
from grec_dagster.evaluation.metrics import RankingTask
from grec_dagster.graph.interactions import TEST, TRAIN, VALID, InteractionGraph, build_graph
from grec_dagster.grokking import GrokkingEvent
from grec_dagster.layout import POPULARITY
from grec_dagster.models import towers as towers_module
from grec_dagster.models.fusion import (
    GatedFusion,
    GateShift,
    StaticFusion,
    contexts_of,
    fused_contributions,
    grokking_shifts,
    top_picks,
)
from grec_dagster.models.popularity import most_popular_recent
from grec_dagster.models.towers import CONTEXTS, ITEM_CONTEXTS, USER_CONTEXTS, Tower, TowerInputs, tower_inputs
from grec_dagster.storage import load_tensors, save_tensors
from grec_dagster.training.loop import TrainParams
from grec_dagster.training.train_fusion import (
    FusionParams,
    TrainedFusion,
    TuningScores,
    fusion_scores,
    load_fusion,
    read_grokking_events,
    save_fusion,
    train_fusion,
    tune_static,
    tune_static_per_item_segment,
    validation_task,
)

MAX_SHIFT = math.log(2)
N_CLUSTERS = 4
N_SHOP_USERS, N_WARM_ITEMS, N_COLD_ITEMS = 120, 60, 20
FUSION = FusionParams(hidden=8, grid_step=0.1, stop_share=0.25)
TRAIN_FAST = TrainParams(epochs=12, lr=0.05, batch_size=64, patience=4, seed=0)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small tensors: one thread, or OpenMP workers spin against other jobs on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- small tower inputs -------------------------------------------------------------------------


def random_inputs(n_users: int = 20, n_items: int = 30, seed: int = 0, constant: bool = False) -> TowerInputs:
    """A dot-product tower, a user-independent one on another scale, optionally a constant one; every
    one of the six contexts occurs (some users and items have no events)."""
    g = torch.Generator().manual_seed(seed)
    towers = [
        Tower("dot", 5 * torch.randn(n_items, 4, generator=g), torch.randn(n_users, 4, generator=g)),
        Tower("pop", 100 * torch.rand(n_items, generator=g)),
        Tower("dot2", torch.randn(n_items, 3, generator=g), torch.randn(n_users, 3, generator=g) + 1.0),
    ]
    if constant:
        towers.append(Tower("flat", torch.full((n_items,), 3.0)))
    user_counts = torch.randint(0, 4, (n_users,), generator=g)
    item_counts = torch.randint(0, 12, (n_items,), generator=g)
    user_counts[:3] = 0
    item_counts[:4] = 0
    idle_days = torch.where(user_counts > 0, 60 * torch.rand(n_users, generator=g), torch.inf)
    age_days = torch.where(item_counts > 0, 90 * torch.rand(n_items, generator=g), torch.inf)
    return TowerInputs(tuple(towers), user_counts, item_counts, idle_days, age_days)


def randomized_gated(inputs: TowerInputs, seed: int = 0) -> GatedFusion:
    """A gated fusion as after some training: every part of the gate logit is non-zero."""
    torch.manual_seed(seed)
    model = GatedFusion(inputs.n_items, torch.tensor([0.5, 0.3, 0.2]), hidden=8)
    with torch.no_grad():
        model.context_bias.add_(0.5 * torch.randn_like(model.context_bias))
        model.item_bias.normal_(0, 0.5)
        model.mlp[-1].weight.normal_(0, 0.5)
        model.mlp[-1].bias.normal_(0, 0.5)
    return model.eval()


def event(tower: str, segment: str, jump_rel: float | None, confirmed: int = 10) -> GrokkingEvent:
    return GrokkingEvent(
        tower=tower,
        segment=segment,
        epoch=confirmed - 3,
        confirmed_epoch=confirmed,
        plateau_epoch=1,
        plateau_train_loss=0.5,
        val_before=0.1,
        val_after=0.2,
        jump_abs=0.1,
        jump_rel=jump_rel,
    )


# --- 1. standardization, contexts, activity -------------------------------------------------------


def test_z_is_standardized_per_user_and_tower_and_a_constant_tower_gives_zero() -> None:
    inputs = random_inputs(constant=True)
    users = torch.arange(20)
    features = inputs.all_items(users)
    z = features.z
    assert z.shape == (20, 30, 4)

    varying = z[..., :3].double()
    torch.testing.assert_close(varying.mean(1), torch.zeros(20, 3, dtype=torch.double), atol=1e-5, rtol=0)
    torch.testing.assert_close(varying.std(1), torch.ones(20, 3, dtype=torch.double), atol=1e-5, rtol=0)
    assert torch.equal(z[..., 3], torch.zeros(20, 30))  # std 0 counts as 1, and r - mean = 0

    raw = torch.stack([tower.scores(users).double() for tower in inputs.towers[:3]], dim=-1)
    expected = (raw - raw.mean(1, keepdim=True)) / raw.std(1, keepdim=True)
    torch.testing.assert_close(varying, expected, atol=1e-5, rtol=1e-5)
    # the user-independent tower standardizes to the same z for every user
    torch.testing.assert_close(z[:, :, 1], z[:1, :, 1].expand(20, -1))
    # the raw scales were very different (x5 dot product vs 0..100 counts): z makes them comparable
    assert raw[..., 1].std() > 5 * raw[..., 2].std()


def test_pairs_with_moments_match_all_items_and_moments_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    inputs = random_inputs(constant=True)
    users = torch.arange(20)
    whole = inputs.all_items(users)
    monkeypatch.setattr(towers_module, "SCORE_BUDGET", inputs.n_items * len(inputs.towers) * 3)
    assert inputs.user_chunk() == 3
    mean, std = inputs.moments(users)  # 7 blocks of 3 users
    raw = inputs.raw(users)
    torch.testing.assert_close(mean, raw.mean(1))
    torch.testing.assert_close(std[:, :3], raw[..., :3].std(1))
    assert torch.equal(std[:, 3], torch.ones(20))

    g = torch.Generator().manual_seed(1)
    pair_users = torch.randint(0, 20, (50,), generator=g)
    pair_items = torch.randint(0, 30, (50,), generator=g)
    pairs = inputs.pairs(pair_users, pair_items, mean[pair_users], std[pair_users])
    torch.testing.assert_close(pairs.z, whole.z[pair_users, pair_items], atol=1e-5, rtol=1e-5)
    assert torch.equal(pairs.context, whole.context[pair_users, pair_items])
    assert torch.equal(pairs.user_activity, whole.user_activity[pair_users, pair_items])
    assert torch.equal(pairs.item_activity, whole.item_activity[pair_users, pair_items])
    assert torch.equal(pairs.user_recency, whole.user_recency[pair_users, pair_items])
    assert torch.equal(pairs.item_age, whole.item_age[pair_users, pair_items])


def test_contexts_follow_the_user_and_item_segments() -> None:
    # warm items: 1, 2, 4, 5, 6, 7, 8, 10, 11 (9 of them) -> head = round(0.2 * 9) = 2 items: 6 (9 events), 1 (7)
    item_counts = torch.tensor([0, 7, 1, 0, 3, 2, 9, 1, 4, 0, 5, 2])
    user_counts = torch.tensor([0, 4, 1, 0, 12])
    g = torch.Generator().manual_seed(0)
    inputs = TowerInputs(
        (Tower("dot", torch.randn(12, 2, generator=g), torch.randn(5, 2, generator=g)),),
        user_counts,
        item_counts,
        torch.where(user_counts > 0, 1.0, torch.inf),
        torch.where(item_counts > 0, 1.0, torch.inf),
    )
    features = inputs.all_items(torch.arange(5))

    item_segment = {i: "tail_items" for i in range(12)} | {0: "cold_items", 3: "cold_items", 9: "cold_items"}
    item_segment |= {6: "head_items", 1: "head_items"}
    for user in range(5):
        user_segment = "warm_users" if user_counts[user] > 0 else "cold_users"
        for item in range(12):
            context = int(features.context[user, item])
            assert CONTEXTS[context] == f"{user_segment}/{item_segment[item]}", (user, item)
            expected = 3 * USER_CONTEXTS.index(user_segment) + ITEM_CONTEXTS.index(item_segment[item])
            assert context == expected

    # activity: log1p of the counts over their maximum, in [0, 1]
    torch.testing.assert_close(features.item_activity[0], torch.log1p(item_counts.float()) / math.log1p(9))
    torch.testing.assert_close(features.user_activity[:, 0], torch.log1p(user_counts.float()) / math.log1p(12))
    assert features.user_activity.shape == (5, 12)
    assert float(features.item_activity.max()) == pytest.approx(1.0)


def test_all_six_contexts_occur_in_the_random_inputs() -> None:
    """The fusion tests below rely on it: a bug that collapses contexts would go unseen otherwise."""
    features = random_inputs().all_items(torch.arange(20))
    assert features.context.unique().tolist() == list(range(len(CONTEXTS)))


def test_timing_features_count_days_before_the_cut_on_a_log_scale() -> None:
    """User 0 last acted 9 days before the training split's last event, user 1 on it, user 2 only
    later (cold at the validation cut); item 0 was first met 10 days before, item 1 on the last day,
    item 2 only later (brand new). At the test cut the validation events are known too."""
    day = towers_module.DAY_SECONDS
    log = pd.DataFrame(
        {
            "user_id": ["u0", "u0", "u1", "u2"],
            "item_id": ["i0", "i0", "i1", "i2"],
            "ts": pd.to_datetime(np.array([0, 1, 10, 12]) * day, unit="s"),
        }
    )
    graph = build_graph(log, np.array([TRAIN, TRAIN, TRAIN, VALID]), "temporal")
    order = [list(graph.user_ids).index(f"u{k}") for k in range(3)]
    item_order = [list(graph.item_ids).index(f"i{k}") for k in range(3)]
    idle, age = towers_module.days_before(graph, VALID)
    assert idle[order].tolist() == [9.0, 0.0, math.inf]
    assert age[item_order].tolist() == [10.0, 0.0, math.inf]

    features = tower_inputs(graph, {}, VALID, popularity=True).all_items(torch.tensor(order))
    torch.testing.assert_close(features.user_recency[:, 0], torch.tensor([1.0, 0.0, 1.0]))  # cold: the longest absent
    torch.testing.assert_close(features.item_age[0, item_order], torch.tensor([1.0, 0.0, 0.0]))  # new: age 0
    idle, age = towers_module.days_before(graph, TEST)
    assert idle[order].tolist() == [11.0, 2.0, 0.0] and age[item_order].tolist() == [12.0, 2.0, 0.0]


def test_gates_read_the_timing_features_only_when_asked() -> None:
    inputs = random_inputs()
    features = inputs.all_items(torch.arange(20))
    later = dataclasses.replace(features, user_recency=1 - features.user_recency, item_age=1 - features.item_age)
    for recency_features in (False, True):
        torch.manual_seed(0)
        model = GatedFusion(inputs.n_items, torch.tensor([0.5, 0.3, 0.2]), hidden=8, recency_features=recency_features)
        assert model.mlp[0].in_features == len(inputs.towers) + (4 if recency_features else 2)
        with torch.no_grad():
            model.mlp[-1].weight.normal_(0, 0.5)
            moved = (model.gates(features) - model.gates(later)).abs().max()
        assert bool(moved > 1e-3) == recency_features


# --- 2. gated fusion starts as static fusion ------------------------------------------------------


def test_gated_fusion_starts_as_static_fusion_with_the_floored_weights() -> None:
    inputs = random_inputs()
    users = torch.arange(20)
    features = inputs.all_items(users)
    weights = torch.tensor([0.7, 0.3, 0.0])
    floored = torch.tensor([0.7, 0.3, 0.05])
    torch.manual_seed(3)
    gated = GatedFusion(inputs.n_items, weights, hidden=8, min_weight=0.05)

    with torch.no_grad():
        gates = gated.gates(features)
        gated_scores = gated.score(features)
    torch.testing.assert_close(gates, (floored / floored.sum()).expand_as(gates))  # in every context
    static_scores = StaticFusion(floored).contributions(features).sum(-1)
    torch.testing.assert_close(gated_scores * floored.sum(), static_scores, atol=1e-5, rtol=1e-5)
    gated_order = gated_scores.argsort(dim=1, descending=True)
    assert torch.equal(gated_order, static_scores.argsort(dim=1, descending=True))
    # the floor matters: the unfloored weights rank differently
    plain = StaticFusion(weights).contributions(features).sum(-1)
    assert not torch.equal(gated_order, plain.argsort(dim=1, descending=True))


# --- 3. grokking shifts ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("segment", "n_contexts"),
    [("cold_items", 2), ("head_items", 2), ("tail_items", 2), ("warm_users", 3), ("cold_users", 3), ("all", 6)],
)
def test_a_grokking_event_shifts_exactly_the_contexts_of_its_segment(segment: str, n_contexts: int) -> None:
    covered = contexts_of(segment)
    assert len(covered) == n_contexts and len(set(covered)) == n_contexts
    assert set(covered) <= set(CONTEXTS)
    if segment != "all":
        assert all(segment in context.split("/") for context in covered)
        assert not any(segment in context.split("/") for context in set(CONTEXTS) - set(covered))

    for jump_rel, delta in ((0.5, MAX_SHIFT * (1 - math.exp(-0.5))), (3.0, MAX_SHIFT * (1 - math.exp(-3.0)))):
        (shift,) = grokking_shifts([event("b", segment, jump_rel)], ["a", "b"], MAX_SHIFT)
        assert shift == GateShift("b", segment, 7, covered, pytest.approx(delta, abs=1e-12))
    (shift,) = grokking_shifts([event("b", segment, None)], ["a", "b"], MAX_SHIFT)
    assert shift.delta == MAX_SHIFT  # undefined jump_rel (val_before = 0): the full shift


def test_shifts_ignore_unfused_towers_and_non_positive_jumps() -> None:
    assert grokking_shifts([event("ghost", "all", 2.0)], ["a", "b"], MAX_SHIFT) == []
    assert grokking_shifts([event("a", "all", -0.3), event("a", "cold_items", 0.0)], ["a", "b"], MAX_SHIFT) == []
    assert grokking_shifts([event("a", "all", 1.0)], ["a", "b"], 0.0) == []


def test_shifts_of_one_tower_and_context_never_exceed_max_shift() -> None:
    events = [
        event("a", "cold_items", 2.0, confirmed=5),
        event("a", "all", None, confirmed=8),  # limited by what the cold-item contexts already used
        event("a", "cold_items", 5.0, confirmed=9),  # nothing left there
        event("a", "warm_users", 0.1, confirmed=12),  # warm_users/cold_items is full: nothing
        event("b", "all", 1.0, confirmed=6),  # another tower, its own budget
        event("ghost", "all", None, confirmed=7),
        event("b", "head_items", 50.0, confirmed=20),
        event("b", "tail_items", 50.0, confirmed=21),
        event("b", "head_items", 50.0, confirmed=22),
    ]
    shifts = grokking_shifts(events, ["a", "b"], MAX_SHIFT)
    assert shifts == grokking_shifts(events[::-1], ["a", "b"], MAX_SHIFT)  # applied in confirmation order

    first = MAX_SHIFT * (1 - math.exp(-2.0))
    b_all = MAX_SHIFT * (1 - math.exp(-1.0))
    expected = [
        ("a", "cold_items", first),
        ("b", "all", b_all),
        ("a", "all", MAX_SHIFT - first),
        ("b", "head_items", MAX_SHIFT - b_all),
        ("b", "tail_items", MAX_SHIFT - b_all),
    ]
    assert [(s.tower, s.segment) for s in shifts] == [(t, s) for t, s, _ in expected]
    for shift, (_, _, delta) in zip(shifts, expected, strict=True):
        assert shift.delta == pytest.approx(delta, abs=1e-12)

    used: dict[tuple[str, str], float] = {}
    for shift in shifts:
        assert shift.delta > 0
        for context in shift.contexts:
            used[(shift.tower, context)] = used.get((shift.tower, context), 0.0) + shift.delta
    assert max(used.values()) <= MAX_SHIFT + 1e-12
    for context in CONTEXTS:
        expected_a = MAX_SHIFT if context.endswith("cold_items") else MAX_SHIFT - first
        assert used[("a", context)] == pytest.approx(expected_a, abs=1e-12)
        expected_b = b_all if context.endswith("cold_items") else MAX_SHIFT
        assert used[("b", context)] == pytest.approx(expected_b, abs=1e-12)


@pytest.mark.parametrize("n_events", [1, 3])
def test_shifted_gates_grow_only_in_affected_contexts_and_by_at_most_exp_max_shift(n_events: int) -> None:
    inputs = random_inputs()
    towers = inputs.names  # dot, pop, dot2
    model = randomized_gated(inputs)
    features = inputs.all_items(torch.arange(20))
    events = [event("pop", "cold_items", 1.5, confirmed=10 + k) for k in range(n_events)]
    events.append(event("ghost", "all", None))
    shifts = grokking_shifts(events, towers, MAX_SHIFT)
    total = sum(shift.delta for shift in shifts)
    assert total == pytest.approx(MAX_SHIFT * (1 - math.exp(-1.5)) if n_events == 1 else MAX_SHIFT, abs=1e-12)

    with torch.no_grad():
        before, gates_before = torch.softmax(model.context_bias, -1).clone(), model.gates(features)
        model.shift(shifts, towers)
        after, gates_after = torch.softmax(model.context_bias, -1), model.gates(features)

    affected = [CONTEXTS.index(context) for context in contexts_of("cold_items")]
    grokked = towers.index("pop")
    others = [t for t in range(3) if t != grokked]
    for context in range(len(CONTEXTS)):
        if context not in affected:
            assert torch.equal(after[context], before[context]), CONTEXTS[context]
            continue
        assert after[context, grokked] > before[context, grokked]
        for other in others:
            growth = (after[context, grokked] / after[context, other]) / (
                before[context, grokked] / before[context, other]
            )
            assert float(growth) == pytest.approx(math.exp(total), rel=1e-4)
            assert float(growth) <= math.exp(MAX_SHIFT) * (1 + 1e-4)

    # the same holds for the full gates of every pair (item offsets and MLP included)
    hit = torch.isin(features.context, torch.tensor(affected))
    assert hit.any() and (~hit).any()
    torch.testing.assert_close(gates_after[~hit], gates_before[~hit], atol=0, rtol=0)
    for other in others:
        growth = (gates_after[hit][:, grokked] / gates_after[hit][:, other]) / (
            gates_before[hit][:, grokked] / gates_before[hit][:, other]
        )
        torch.testing.assert_close(growth, torch.full_like(growth, math.exp(total)), rtol=1e-4, atol=0)


# --- 4. top picks ----------------------------------------------------------------------------------


def seen_keys(n_users: int, n_items: int, full_user: int, seed: int = 0) -> Tensor:
    """About 30% of each user's items, and all but 2 items of `full_user`."""
    g = torch.Generator().manual_seed(seed)
    seen = torch.rand(n_users, n_items, generator=g) < 0.3
    seen[full_user] = True
    seen[full_user, torch.tensor([4, 17])] = False
    users, items = seen.nonzero(as_tuple=True)
    return (users * n_items + items).sort().values


@pytest.mark.parametrize("fusion_kind", ["static", "gated"])
@pytest.mark.parametrize("chunk", [None, 3])
def test_top_picks_are_the_true_masked_top_k(monkeypatch: pytest.MonkeyPatch, fusion_kind: str, chunk: int) -> None:
    inputs = random_inputs(n_users=12, n_items=25)
    fusion = StaticFusion(torch.tensor([0.5, 0.2, 0.3])) if fusion_kind == "static" else randomized_gated(inputs)
    seen = seen_keys(12, 25, full_user=5)
    users = torch.tensor([9, 2, 11, 0, 5, 7, 3])  # unsorted subset
    brute_features = inputs.all_items(users)
    with torch.no_grad():
        contributions = fusion.contributions(brute_features)
    if chunk is not None:
        monkeypatch.setattr(towers_module, "SCORE_BUDGET", inputs.n_items * len(inputs.towers) * chunk)
        assert inputs.user_chunk() == chunk
    k = 6
    items, scores, driver = top_picks(fusion, inputs, users, seen, k)
    assert items.shape == scores.shape == driver.shape == (7, k)

    masked = contributions.sum(-1)
    is_seen = torch.isin(users.unsqueeze(1) * 25 + torch.arange(25), seen)
    masked[is_seen] = -torch.inf
    expected = masked.sort(dim=1, descending=True)
    torch.testing.assert_close(scores, expected.values[:, :k])
    finite = scores.isfinite()
    assert finite.sum(1).tolist() == [k, k, k, k, 2, k, k]  # user 5 has 2 unseen items
    assert torch.equal(items[finite], expected.indices[:, :k][finite])
    assert not torch.isin(users.unsqueeze(1) * 25 + items, seen)[finite].any()
    assert set(items[4, :2].tolist()) == {4, 17}
    rows = torch.arange(7).unsqueeze(1).expand(-1, k)
    assert torch.equal(driver[finite], contributions[rows, items].argmax(-1)[finite])
    assert (scores[:, :-1] >= scores[:, 1:]).all()
    if fusion_kind == "gated":
        assert len(driver[finite].unique()) > 1  # the driver check is not vacuous

    torch.testing.assert_close(fused_contributions(fusion, inputs, users), contributions)
    many_items, many_scores, _ = top_picks(fusion, inputs, users, seen, k=100)  # k beyond the catalog
    assert many_items.shape == (7, 25) and int(many_scores.isfinite().sum()) == int((~is_seen).sum())


def test_top_picks_rejects_repeated_users_and_answers_no_users_with_empty_tensors() -> None:
    inputs = random_inputs()
    fusion = StaticFusion(torch.tensor([0.5, 0.3, 0.2]))
    seen = seen_keys(20, 30, full_user=2)
    with pytest.raises(ValueError, match="distinct"):
        top_picks(fusion, inputs, torch.tensor([2, 2]), seen, 3)
    items, scores, driver = top_picks(fusion, inputs, torch.empty(0, dtype=torch.long), seen, 3)
    assert items.shape == scores.shape == driver.shape == (0, 3)


# --- 5. training on planted shops -----------------------------------------------------------------


@dataclass(frozen=True)
class Shop:
    graph: InteractionGraph
    user_cluster: Tensor
    item_cluster: Tensor
    cold: Tensor
    """Items without a training event (only valid and test events)."""


def planted_shop(seed: int = 0) -> Shop:
    """Per user: 6 own-cluster warm items in TRAIN, 2 in VALID, 2 in TEST; 2 own-cluster cold items in
    VALID and 2 in TEST. Ids are shuffled into dense codes by `build_graph`."""
    rng = np.random.default_rng(seed)
    warm = [np.arange(c, N_WARM_ITEMS, N_CLUSTERS) for c in range(N_CLUSTERS)]
    cold = [np.arange(N_WARM_ITEMS + c, N_WARM_ITEMS + N_COLD_ITEMS, N_CLUSTERS) for c in range(N_CLUSTERS)]
    rows = []
    for user in range(N_SHOP_USERS):
        own_warm = rng.permutation(warm[user % N_CLUSTERS])[:10]
        own_cold = rng.permutation(cold[user % N_CLUSTERS])[:4]
        splits = [TRAIN] * 6 + [VALID] * 2 + [TEST] * 2 + [VALID] * 2 + [TEST] * 2
        rows += [(user, int(item), split) for item, split in zip([*own_warm, *own_cold], splits, strict=True)]
    log = pd.DataFrame(rows, columns=["user_id", "item_id", "split"])
    log["seconds"] = log["split"] * 1000 + rng.integers(0, 1000, len(log))
    log = log.sort_values(["seconds", "user_id", "item_id"], kind="stable").reset_index(drop=True)
    log["ts"] = pd.to_datetime(log["seconds"], unit="s")
    graph = build_graph(log, log["split"].to_numpy(), "temporal")
    item_ids = torch.as_tensor(graph.item_ids.astype(np.int64))
    user_ids = torch.as_tensor(graph.user_ids.astype(np.int64))
    assert graph.n_items == N_WARM_ITEMS + N_COLD_ITEMS and graph.n_users == N_SHOP_USERS
    return Shop(graph, user_ids % N_CLUSTERS, item_ids % N_CLUSTERS, item_ids >= N_WARM_ITEMS)


def cluster_tower(shop: Shop, target: Tensor, seed: int, scale: float = 3.0, noise: float = 0.3) -> dict[str, Tensor]:
    """User vectors: their cluster; item vectors: `scale` x the cluster `target` says, plus noise."""
    g = torch.Generator().manual_seed(seed)
    items = scale * F.one_hot(target, N_CLUSTERS).float() + noise * torch.randn(len(target), N_CLUSTERS, generator=g)
    return {"user_embedding": F.one_hot(shop.user_cluster, N_CLUSTERS).float(), "item_embedding": items}


@pytest.fixture(scope="module")
def shop() -> Shop:
    return planted_shop()


@dataclass(frozen=True)
class Experts:
    inputs: TowerInputs
    trained: TrainedFusion
    paths: dict[str, Path]


@pytest.fixture(scope="module")
def experts(shop: Shop, tmp_path_factory: pytest.TempPathFactory) -> Experts:
    """Tower `cold_expert` knows the cold items' clusters and points each warm item to the next cluster;
    `warm_expert` the other way round. A grokking event of cold_expert on cold items is proposed."""
    folder = tmp_path_factory.mktemp("experts")
    shifted = (shop.item_cluster + 1) % N_CLUSTERS
    paths = {}
    for seed, (name, target) in enumerate(
        (
            ("cold_expert", torch.where(shop.cold, shop.item_cluster, shifted)),
            ("warm_expert", torch.where(shop.cold, shifted, shop.item_cluster)),
        )
    ):
        paths[name] = folder / name / "model.safetensors"
        save_tensors(paths[name], cluster_tower(shop, target, seed), {})
    inputs = tower_inputs(shop.graph, paths, VALID, popularity=False)
    events = [event("cold_expert", "cold_items", None), event("ghost", "all", None)]
    return Experts(inputs, train_fusion(shop.graph, inputs, FUSION, TRAIN_FAST, events), paths)


def test_planted_shop_has_cold_items_only_outside_training(shop: Shop) -> None:
    graph = shop.graph
    assert int(graph.train_item_counts[shop.cold].sum()) == 0
    assert bool((graph.train_item_counts[~shop.cold] > 0).all())
    assert len(ranking_task(graph, VALID).users) == N_SHOP_USERS


def test_gated_fusion_beats_static_when_each_tower_is_right_in_its_own_context(shop: Shop, experts: Experts) -> None:
    trained, inputs = experts.trained, experts.inputs
    assert trained.towers == ["cold_expert", "warm_expert"]
    # the stop users were never trained on; the static weights were tuned on every validation user
    assert trained.stop_ndcg_before_shift >= trained.static_valid_ndcg + 0.15, (
        trained.stop_ndcg_before_shift,
        trained.static_valid_ndcg,
    )
    assert trained.stop_ndcg_before_shift == pytest.approx(trained.result.best_metric, abs=1e-6)
    task = ranking_task(shop.graph, VALID)
    static = validation_ndcg(fusion_scores(trained.static, inputs), task)["ndcg@20"]
    assert static == pytest.approx(trained.static_valid_ndcg, abs=1e-6)
    # the gates learned which tower to trust where
    users = task.users
    features = inputs.all_items(users)
    with torch.no_grad():
        gates = trained.gated.gates(features)
    cold_pairs = shop.cold.expand(len(users), -1)
    assert float(gates[cold_pairs][:, 0].mean()) > 0.7
    assert float(gates[~cold_pairs][:, 1].mean()) > 0.7


def shifted_gates(trained: TrainedFusion) -> GatedFusion:
    """A copy of the trained gates with every proposed shift applied."""
    copy = GatedFusion(len(trained.gated.item_bias), trained.static.weights, hidden=len(trained.gated.mlp[0].weight))
    copy.load_state_dict(trained.gated.state_dict())
    copy.eval()
    if not trained.shift_accepted:
        copy.shift(trained.shifts, trained.towers)
    return copy


def test_grokking_shift_is_judged_on_held_out_users_and_kept_only_if_it_helps(shop: Shop, experts: Experts) -> None:
    trained = experts.trained
    (shift,) = trained.shifts  # the ghost tower is not fused
    assert (shift.tower, shift.segment, shift.delta) == ("cold_expert", "cold_items", MAX_SHIFT)
    held_out = validation_task(shop.graph, trained.stop_users)
    ndcg = validation_ndcg(fusion_scores(shifted_gates(trained), experts.inputs), held_out)["ndcg@20"]
    assert trained.stop_ndcg_after_shift == ndcg  # the reported number is the shifted gates', on the stop users
    assert trained.shift_accepted == (trained.stop_ndcg_after_shift > trained.stop_ndcg_before_shift)
    moved = trained.gated.context_bias.detach() - trained.result.best_state["context_bias"]
    expected = torch.zeros(len(CONTEXTS), 2)
    if trained.shift_accepted:
        for context in contexts_of("cold_items"):
            expected[CONTEXTS.index(context), 0] = MAX_SHIFT
    torch.testing.assert_close(moved, expected, rtol=0, atol=1e-6)  # one float add and its inverse
    verdict = "applied" if trained.shift_accepted else "rejected"
    assert trained.shift_decision().startswith(f"{verdict}: held-out validation NDCG@20 ")


@pytest.mark.parametrize(("tower", "helps"), [("cold_expert", True), ("warm_expert", False)])
def test_a_shift_toward_the_right_tower_is_applied_and_toward_the_wrong_one_rejected(
    shop: Shop, experts: Experts, tower: str, helps: bool
) -> None:
    """Gates barely trained (one tiny step from the static blend) trust neither expert on cold items:
    raising the cold expert there helps the held-out users; raising the warm expert hurts them."""
    barely = TrainParams(epochs=1, lr=1e-6, batch_size=64, patience=1, seed=0)
    trained = train_fusion(shop.graph, experts.inputs, FUSION, barely, [event(tower, "cold_items", None)])
    assert trained.shift_accepted == helps, trained.shift_decision()
    unshifted = train_fusion(shop.graph, experts.inputs, FUSION, barely, [])
    gap = trained.gated.context_bias.detach() - unshifted.gated.context_bias.detach()
    assert bool(gap.abs().max() > 0.5) == helps  # a rejected shift left the gates as training made them
    assert trained.stop_ndcg_before_shift == unshifted.stop_ndcg_before_shift


def test_static_weights_tuned_per_item_segment_give_each_expert_its_segment(shop: Shop, experts: Experts) -> None:
    """One blend for all items ties every relevant item with a decoy; one per item segment gives the
    cold expert the cold items and the warm expert the rest, and gates that start there (barely
    trained) keep that on held-out users."""
    inputs, task = experts.inputs, ranking_task(shop.graph, VALID)
    scores = TuningScores.of(inputs, task)
    weights, ndcg = tune_static(scores, task, FUSION.grid_step)
    by_segment, segment_ndcg = tune_static_per_item_segment(scores, task, FUSION.grid_step, weights, ndcg)
    assert segment_ndcg >= ndcg + 0.15, (segment_ndcg, ndcg)
    assert by_segment.shape == (len(ITEM_CONTEXTS), 2)
    cold = ITEM_CONTEXTS.index("cold_items")
    assert float(by_segment[cold, 0]) > float(by_segment[cold, 1])  # cold_expert owns the cold-item slot
    for segment in ("head_items", "tail_items"):
        row = by_segment[ITEM_CONTEXTS.index(segment)]
        assert float(row[1]) > float(row[0]), (segment, row)
    per_item = by_segment[inputs.item_context]
    scored = validation_ndcg(lambda users: (inputs.all_items(users).z * per_item).sum(-1), task)["ndcg@20"]
    assert scored == pytest.approx(segment_ndcg, abs=1e-6)

    barely = TrainParams(epochs=1, lr=1e-6, batch_size=64, patience=1, seed=0)
    start = FusionParams.model_validate(FUSION.model_dump() | {"start_per_item_segment": True})
    segmented = train_fusion(shop.graph, inputs, start, barely, [])
    plain = train_fusion(shop.graph, inputs, FUSION, barely, [])
    assert segmented.stop_ndcg_before_shift >= plain.stop_ndcg_before_shift + 0.15
    assert torch.equal(segmented.static.weights, plain.static.weights)  # the static baseline is the same blend


def test_segment_tuning_keeps_a_segment_without_items_and_never_loses_ndcg() -> None:
    inputs = random_inputs()
    task = RankingTask.from_pairs(torch.tensor([0 * 30 + 5, 7 * 30 + 9, 12 * 30 + 20]), torch.empty(0, dtype=torch.long), 30)
    scores = TuningScores.of(inputs, task)
    weights, ndcg = tune_static(scores, task, 0.25)
    by_segment, segment_ndcg = tune_static_per_item_segment(scores, task, 0.25, weights, ndcg)
    assert segment_ndcg >= ndcg
    empty = dataclasses.replace(inputs, item_counts=torch.ones_like(inputs.item_counts))  # no cold item left
    by_segment, _ = tune_static_per_item_segment(TuningScores.of(empty, task), task, 0.25, weights, ndcg)
    assert torch.equal(by_segment[ITEM_CONTEXTS.index("cold_items")], weights)


@pytest.mark.parametrize("recency_features", [False, True])
def test_save_and_load_fusion_round_trip_with_or_without_timing_features(
    shop: Shop, experts: Experts, tmp_path: Path, recency_features: bool
) -> None:
    barely = TrainParams(epochs=1, lr=1e-2, batch_size=64, patience=1, seed=0)
    params = FusionParams.model_validate(FUSION.model_dump() | {"recency_features": recency_features})
    trained = train_fusion(shop.graph, experts.inputs, params, barely, [])
    path = tmp_path / "fusion" / "model.safetensors"
    save_fusion(path, trained, {})
    _, _, gated = load_fusion(path)
    assert gated.recency_features == recency_features
    users = ranking_task(shop.graph, VALID).users
    assert torch.equal(fusion_scores(gated, experts.inputs)(users), fusion_scores(trained.gated, experts.inputs)(users))


def test_save_and_load_fusion_round_trip(shop: Shop, experts: Experts, tmp_path: Path) -> None:
    trained, inputs = experts.trained, experts.inputs
    path = tmp_path / "fusion" / "model.safetensors"
    save_fusion(path, trained, {"protocol": "temporal"})
    towers, static, gated = load_fusion(path)
    assert towers == trained.towers
    assert torch.equal(static.weights, trained.static.weights)
    assert not gated.training and len(gated.mlp[0].weight) == FUSION.hidden
    for name, value in trained.gated.state_dict().items():
        assert torch.equal(gated.state_dict()[name], value), name
    users = ranking_task(shop.graph, VALID).users
    assert torch.equal(fusion_scores(gated, inputs)(users), fusion_scores(trained.gated, inputs)(users))
    assert torch.equal(fusion_scores(static, inputs)(users), fusion_scores(trained.static, inputs)(users))
    _, meta = load_tensors(path)
    assert meta["towers"] == trained.towers and meta["protocol"] == "temporal"


def test_static_weights_favor_the_informative_tower_over_noise(shop: Shop, tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(5)
    paths = {"taste": tmp_path / "taste.safetensors", "noise": tmp_path / "noise.safetensors"}
    # a noisy cluster signal: within a cluster its order is random, so tuning is not a coin toss among ties
    save_tensors(paths["taste"], cluster_tower(shop, shop.item_cluster, seed=4, scale=1.0, noise=0.5), {})
    noise = {
        "user_embedding": torch.randn(N_SHOP_USERS, 8, generator=g),
        "item_embedding": 3 * torch.randn(shop.graph.n_items, 8, generator=g),
    }
    save_tensors(paths["noise"], noise, {})
    inputs = tower_inputs(shop.graph, paths, VALID, popularity=True)
    assert inputs.names == [POPULARITY, "taste", "noise"]

    trained = train_fusion(shop.graph, inputs, FUSION, TRAIN_FAST, [])
    weights = dict(zip(trained.towers, trained.static.weights.tolist(), strict=True))
    assert max(weights, key=weights.get) == "taste", weights
    assert weights["taste"] >= 0.8 - 1e-6 and weights["noise"] <= 0.1 + 1e-6, weights
    assert trained.shifts == [] and trained.stop_ndcg_after_shift == trained.stop_ndcg_before_shift
    # over all validation users (the gates trained on 75% of them): starting from static, early
    # stopping keeps gated fusion at least as good; the experts test compares on held-out users
    task = ranking_task(shop.graph, VALID)
    gated = validation_ndcg(fusion_scores(trained.gated, inputs), task)["ndcg@20"]
    assert gated >= trained.static_valid_ndcg - 1e-6, (gated, trained.static_valid_ndcg)


# --- tower inputs from checkpoints, grokking files -------------------------------------------------


def test_tower_inputs_read_each_cut_from_the_events_before_it(shop: Shop, tmp_path: Path) -> None:
    graph = shop.graph
    g = torch.Generator().manual_seed(0)
    both = {
        name: torch.randn(n, 3, generator=g)
        for name, n in (
            ("user_embedding", graph.n_users),
            ("item_embedding", graph.n_items),
            ("valid_user_embedding", graph.n_users),
            ("valid_item_embedding", graph.n_items),
        )
    }
    plain = {
        "user_embedding": torch.randn(graph.n_users, 2, generator=g),
        "item_embedding": torch.randn(graph.n_items, 2, generator=g),
    }
    paths = {"sage": tmp_path / "sage.safetensors", "lgcn": tmp_path / "lgcn.safetensors"}
    save_tensors(paths["sage"], both, {})
    save_tensors(paths["lgcn"], plain, {})

    at_valid = tower_inputs(graph, paths, VALID, popularity=True)
    assert at_valid.names == [POPULARITY, "sage", "lgcn"]
    assert torch.equal(at_valid.towers[0].item_vectors, most_popular_recent(graph, splits=(TRAIN,)))
    assert at_valid.towers[0].user_vectors is None
    assert torch.equal(at_valid.towers[1].user_vectors, both["valid_user_embedding"])
    assert torch.equal(at_valid.towers[1].item_vectors, both["valid_item_embedding"])
    assert torch.equal(at_valid.towers[2].user_vectors, plain["user_embedding"])
    assert torch.equal(at_valid.item_counts, graph.train_item_counts)
    assert torch.equal(at_valid.user_counts, graph.train_user_counts)

    at_test = tower_inputs(graph, paths, TEST, popularity=False)
    assert at_test.names == ["sage", "lgcn"]
    assert torch.equal(at_test.towers[0].user_vectors, both["user_embedding"])
    _, items, _ = graph.edges(TRAIN, VALID)
    assert torch.equal(at_test.item_counts, torch.bincount(items, minlength=graph.n_items))
    # cold items at the validation cut have valid events, so none is cold at the test cut
    assert bool((at_valid.item_context[shop.cold] == 0).all())
    assert bool((at_test.item_context[shop.cold] != 0).all())
    popularity = tower_inputs(graph, {}, TEST, popularity=True).towers[0].item_vectors
    assert torch.equal(popularity, most_popular_recent(graph, splits=(TRAIN, VALID)))


def test_read_grokking_events_from_a_check_a_bare_list_or_nothing(tmp_path: Path) -> None:
    events = [event("sage", "cold_items", 0.4), event("sage", "all", None, confirmed=20)]
    check = tmp_path / "check.json"
    check.write_text(json.dumps({"tower": "sage", "events": [e.to_dict() for e in events], "summary": {}}))
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps([e.to_dict() for e in events]))
    assert read_grokking_events(check) == events
    assert read_grokking_events(bare) == events
    assert read_grokking_events(tmp_path / "missing.json") == []
