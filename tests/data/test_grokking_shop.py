"""The grokking shop: its planted relation, a split that leaves only the rule for held-out
users, and a real GraphSAGE run that memorises first and generalizes long after."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from grec_dagster.data.grokking_shop import (
    SOURCE,
    GrokkingShopConfig,
    generate_grokking_shop,
    group_of,
)
from grec_dagster.data.schema import SourceFrames
from grec_dagster.data.validation import validate_catalog, validate_interactions
from grec_dagster.graph.features import item_features, user_features
from grec_dagster.graph.interactions import TEST, TRAIN, VALID, InteractionGraph, build_graph
from grec_dagster.graph.splits import split_labels
from grec_dagster.models.graphsage import GraphSAGEParams
from grec_dagster.training.grokking_wiring import OVERALL, check_grokking
from grec_dagster.training.loop import TrainParams
from grec_dagster.training.train_graphsage import train_graphsage

SMALL = GrokkingShopConfig(modulus=7, train_fraction=0.5, users_per_pair=2, items_per_group=3, seed=3)
"""Several users per pair and items per group, so the spreading of purchases is exercised too."""

RECIPE_MODEL = GraphSAGEParams(dim=128, fanouts=[0, 0], id_dropout=0.5, dropout=0.0, negatives=16)
RECIPE_TRAINING = TrainParams(epochs=800, lr=0.01, weight_decay=2.0, batch_size=4096, eval_every=10, patience=80)
"""The module docstring's recipe; patience = every evaluation, so early stopping never cuts the run."""


def attributes(users: pd.DataFrame, prefix: str) -> pd.Series:
    """The level each user has set among the dummy columns `<prefix>00`, `<prefix>01`, ..."""
    columns = [column for column in users.columns if column.startswith(prefix) and column != "user_id"]
    return pd.Series(users[columns].to_numpy().argmax(axis=1), index=users.user_id)


def graph_of(frames: SourceFrames) -> InteractionGraph:
    log = frames.interactions
    return build_graph(log, split_labels(log, "temporal"), "temporal")


def users_by_split(frames: SourceFrames) -> dict[int, set[str]]:
    labels = split_labels(frames.interactions, "temporal")
    return {split: set(frames.interactions.user_id[labels == split]) for split in (TRAIN, VALID, TEST)}


@pytest.mark.parametrize("config", [GrokkingShopConfig(), SMALL], ids=["default", "small"])
def test_every_purchase_is_of_the_group_a_plus_b_mod_p(config: GrokkingShopConfig) -> None:
    frames = generate_grokking_shop(config)
    users = frames.users
    dummies = users.drop(columns="user_id").to_numpy()
    assert set(np.unique(dummies)) == {0, 1} and (dummies.sum(axis=1) == 2).all()  # one level of a, one of b
    a, b = attributes(users, "a"), attributes(users, "b")
    log = frames.interactions.merge(frames.items, on="item_id")
    expected = group_of(a[log.user_id].to_numpy(), b[log.user_id].to_numpy(), config.modulus)
    assert (log.category.str.removeprefix("g").astype(int).to_numpy() == expected).all()
    assert len(log) == len(frames.interactions) and frames.interactions.ts.is_monotonic_increasing


@pytest.mark.parametrize("config", [GrokkingShopConfig(), SMALL], ids=["default", "small"])
def test_the_temporal_split_leaves_only_unseen_attribute_pairs_for_validation_and_test(
    config: GrokkingShopConfig,
) -> None:
    frames = generate_grokking_shop(config)
    labels = split_labels(frames.interactions, "temporal")
    total = len(frames.interactions)
    assert [int((labels == split).sum()) for split in (TRAIN, VALID, TEST)] == [total * 8 // 10, total // 10, total // 10]
    pair = attributes(frames.users, "a") * config.modulus + attributes(frames.users, "b")
    by_split = users_by_split(frames)
    pairs = {split: set(pair[sorted(users)]) for split, users in by_split.items()}
    assert [len(pairs[split]) for split in (TRAIN, VALID, TEST)] == list(config.pair_counts)
    assert not pairs[TRAIN] & (pairs[VALID] | pairs[TEST]) and not pairs[VALID] & pairs[TEST]
    assert by_split[TRAIN] | by_split[VALID] | by_split[TEST] == set(frames.users.user_id)  # nobody without a purchase
    graph = graph_of(frames)
    evaluated, _, _ = graph.edges(VALID, TEST)
    assert int(graph.train_user_counts[evaluated].sum()) == 0  # every validation and test user is cold
    assert bool((graph.train_item_counts > 0).all())  # ... and every item warm


def test_a_training_user_buys_every_item_of_its_group() -> None:
    """So no item of its group is ever one of its sampled negatives."""
    frames = generate_grokking_shop(SMALL)
    train_users = users_by_split(frames)[TRAIN]
    bought = frames.interactions[frames.interactions.user_id.isin(train_users)].groupby("user_id").item_id.nunique()
    assert (bought == SMALL.items_per_group).all() and len(bought) == len(train_users)


def test_same_seed_same_shop_and_other_seed_other_shop() -> None:
    first, again = generate_grokking_shop(SMALL), generate_grokking_shop(SMALL)
    other = generate_grokking_shop(GrokkingShopConfig(**{**vars(SMALL), "seed": SMALL.seed + 1}))
    for name in ("interactions", "items", "users"):
        pd.testing.assert_frame_equal(getattr(first, name), getattr(again, name))
    assert not first.interactions.equals(other.interactions)


def test_ingestion_accepts_every_row() -> None:
    frames = generate_grokking_shop(GrokkingShopConfig())
    log = validate_interactions(frames.interactions, SOURCE)
    items = validate_catalog(frames.items, "item_id", "items")
    users = validate_catalog(frames.users, "user_id", "users")
    assert (len(log.accepted), len(items.accepted), len(users.accepted)) == tuple(
        len(frame) for frame in (frames.interactions, frames.items, frames.users)
    )
    assert len(log.quarantine) == len(items.quarantine) == len(users.quarantine) == 0


def test_standardized_dummies_make_large_attribute_features() -> None:
    """The docstring's claim: a set level's feature is sqrt(p - 1) (up to n / (n - 1) from the
    sample std), the rest -1 / sqrt(p - 1). Every level is held by exactly n / p users, so the
    column mean is exactly 1 / p and only float32 rounding (~1e-7 relative) is left."""
    config = GrokkingShopConfig()
    frames = generate_grokking_shop(config)
    x = user_features(frames.users, frames.users.user_id.to_numpy())
    n, p = len(frames.users), config.modulus
    correction = math.sqrt((n - 1) / n)
    features = x[:, 1:]  # the first column says the user is described
    assert features.shape == (n, 2 * p)
    assert torch.allclose(features.max(dim=1).values, torch.tensor(math.sqrt(p - 1) * correction), rtol=1e-5)
    assert torch.allclose(features.min(dim=1).values, torch.tensor(-correction / math.sqrt(p - 1)), rtol=1e-5)


def test_config_rejects_shops_the_split_cannot_hold() -> None:
    with pytest.raises(ValueError, match="too few"):
        GrokkingShopConfig(n_interactions=GrokkingShopConfig().period_events[1] * 10 - 10)
    with pytest.raises(ValueError, match="modulus"):
        GrokkingShopConfig(modulus=51)
    with pytest.raises(ValueError, match="without attribute pairs"):
        GrokkingShopConfig(train_fraction=1.0)


# --- a real grokking run ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def grokking_run() -> list[dict[str, float]]:
    """The recipe on the default shop: ~25 s on one idle core. One thread, restored afterwards, as in
    `modular_addition.py`: the same bits on any machine, and no fight over a shared second core."""
    frames = generate_grokking_shop(GrokkingShopConfig()).conformed()
    graph = graph_of(frames)
    user_x, item_x = user_features(frames.users, graph.user_ids), item_features(frames.items, graph.item_ids)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train_graphsage(graph, user_x, item_x, RECIPE_MODEL, RECIPE_TRAINING).result.history
    finally:
        torch.set_num_threads(threads)


def chance_ndcg_at_20(n_items: int) -> float:
    """E[NDCG@20] of a random ranking when a user has one relevant item: each rank is equally likely."""
    return sum(1 / math.log2(rank + 1) for rank in range(1, 21)) / n_items


def test_graphsage_memorises_first_and_generalizes_long_after(grokking_run: list[dict[str, float]]) -> None:
    evaluations = [record for record in grokking_run if "ndcg@20" in record]
    chance = chance_ndcg_at_20(GrokkingShopConfig().modulus)  # 0.150: one item per group, one relevant each
    memorised = next(int(r["epoch"]) for r in grokking_run if r["train_loss"] < 0.02)  # < 3% of ln 2 at the start
    above_chance = next(int(r["epoch"]) for r in evaluations if r["ndcg@20"] > chance)
    assert max(r["train_loss"] for r in grokking_run if r["epoch"] >= memorised) < 0.05  # it stays memorised
    assert above_chance >= 4 * memorised  # validation stays at or below chance long after the loss is flat ...
    assert max(r["ndcg@20"] for r in evaluations) > 0.8  # ... then the rule is found: ~0.99 by epoch 800


def test_the_monitor_sees_the_jump_as_grokking(grokking_run: list[dict[str, float]]) -> None:
    check = check_grokking("graphsage", grokking_run)
    event = next(event for event in check.events if event.segment == OVERALL)
    chance = chance_ndcg_at_20(GrokkingShopConfig().modulus)
    assert event.plateau_train_loss < 0.02 and event.epoch >= 2 * event.plateau_epoch
    assert event.val_before < chance
    after = [r["ndcg@20"] for r in grokking_run if r["epoch"] > event.confirmed_epoch and "ndcg@20" in r]
    assert max(after) > 5 * event.val_before
