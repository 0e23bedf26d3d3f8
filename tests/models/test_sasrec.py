"""SASRec: learns a planted order that popularity cannot see, reads only the events before each
cut, never reads padding, and trains to the same bits in two processes.

The sequential shop: items sit on cycles of CYCLE items, and every user walks WALK steps along
one cycle from a random start (next item = the successor of the last one). Every item is about
equally popular, so most-popular ranks at chance. Each user's last event is TEST and the one
before VALID; a fixed set of users has all its earlier events in VALID too, so it has no
history at the validation cut and its valid events are its history at the test cut.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from grec_dagster.graph.interactions import TEST, TRAIN, VALID, InteractionGraph
from grec_dagster.models.sasrec import PAD, SASRec, SASRecParams, next_item_windows, recent_items
from grec_dagster.storage import tensor_fingerprint
from grec_dagster.training.embeddings import TrainedEmbeddings
from grec_dagster.training.loop import TrainParams
from grec_dagster.training.train_sasrec import train_sasrec

from .test_ease import ndcg_against_popularity

ROOT = Path(__file__).resolve().parents[2]
N_USERS, N_CYCLES, CYCLE, WALK, N_VALID_ONLY = 300, 10, 20, 8, 20
PARAMS = SASRecParams(dim=32, blocks=1, heads=2, max_len=WALK, dropout=0.1)
TRAIN_FAST = TrainParams(epochs=12, lr=2e-2, batch_size=N_USERS, patience=4)
"""One step an epoch over the whole shop: the order is learned in ~5 epochs, with few ops to run."""
EMBEDDINGS = ("user_embedding", "item_embedding", "valid_user_embedding", "valid_item_embedding")


def sequential_shop() -> InteractionGraph:
    g = torch.Generator().manual_seed(0)
    cycle = torch.randint(N_CYCLES, (N_USERS,), generator=g)
    start = torch.randint(CYCLE, (N_USERS,), generator=g)
    step = torch.arange(WALK)
    items = cycle.unsqueeze(1) * CYCLE + (start.unsqueeze(1) + step) % CYCLE  # [user, step]
    split = torch.full((N_USERS, WALK), TRAIN, dtype=torch.uint8)
    split[:, -2], split[:, -1] = VALID, TEST
    split[-N_VALID_ONLY:, :-1] = VALID
    # Events in time order: step by step, every user at each step.
    return InteractionGraph(
        user_ids=np.arange(N_USERS).astype(str).astype(object),
        item_ids=np.arange(N_CYCLES * CYCLE).astype(str).astype(object),
        users=torch.arange(N_USERS).repeat(WALK),
        items=items.T.reshape(-1),
        ts=step.repeat_interleave(N_USERS),
        split=split.T.reshape(-1),
        protocol="random",
    )


@pytest.fixture(scope="module")
def shop() -> InteractionGraph:
    return sequential_shop()


@pytest.fixture(scope="module")
def trained(shop: InteractionGraph) -> TrainedEmbeddings:
    return train_sasrec(shop, PARAMS, TRAIN_FAST)


def without_seconds(history: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in record.items() if k != "seconds"} for record in history]


def test_learns_the_planted_order_popularity_cannot_see(shop: InteractionGraph, trained: TrainedEmbeddings) -> None:
    ndcg = ndcg_against_popularity(shop, "sasrec", trained.score)
    # One relevant item among ~190 unseen: chance NDCG@20 is ~0.03; following the cycle gives ~1.
    assert ndcg["sasrec"] > 0.5 and ndcg["sasrec"] > 5 * ndcg["popularity"], ndcg


def test_test_events_reach_nothing(shop: InteractionGraph, trained: TrainedEmbeddings) -> None:
    """Other test events, same everything else: the same weights, embeddings and training record."""
    test = shop.split == TEST
    other_items = torch.randint(shop.n_items, (int(test.sum()),), generator=torch.Generator().manual_seed(1))
    changed = dataclasses.replace(shop, items=shop.items.masked_scatter(test, other_items))
    assert not torch.equal(changed.pairs(TEST), shop.pairs(TEST))

    again = train_sasrec(changed, PARAMS, TRAIN_FAST)

    assert again.result.best_state.keys() == trained.result.best_state.keys()
    for name, weights in trained.result.best_state.items():
        assert torch.equal(again.result.best_state[name], weights), name
    for name in EMBEDDINGS:
        assert torch.equal(getattr(again, name), getattr(trained, name)), name
    assert without_seconds(again.result.history) == without_seconds(trained.result.history)


def test_valid_events_make_the_test_cut_history(shop: InteractionGraph, trained: TrainedEmbeddings) -> None:
    users = torch.arange(N_USERS - N_VALID_ONLY, N_USERS)
    assert int(shop.train_user_counts[users].sum()) == 0
    assert (trained.valid_user_embedding[users] == 0).all()  # nothing known at the validation cut
    assert (trained.user_embedding[users].abs().sum(1) > 0).all()
    assert (trained.user_embedding[: N_USERS - N_VALID_ONLY].abs().sum(1) > 0).all()


def test_training_windows_hold_every_next_item_step_once(shop: InteractionGraph) -> None:
    length = 3  # WALK - 2 = 6 TRAIN steps for most users: two full windows; fewer for the valid-only users
    users, inputs, targets = next_item_windows(shop, (TRAIN,), length)
    real = targets != PAD
    assert torch.equal(real, inputs != PAD)
    walkers = users[real.nonzero()[:, 0]]
    assert torch.equal(torch.bincount(walkers, minlength=N_USERS), (shop.train_user_counts - 1).clamp(min=0))
    assert torch.equal(targets[real], inputs[real] + 1 - CYCLE * ((inputs[real] % CYCLE) == 0))  # the successors
    newest = torch.nonzero(torch.cat([torch.ones(1, dtype=torch.bool), users[1:] != users[:-1]])).squeeze(1)
    recent = recent_items(shop, (TRAIN,), length + 1)[users[newest]]
    assert torch.equal(inputs[newest], recent[:, :-1]) and torch.equal(targets[newest], recent[:, 1:])


def test_real_positions_never_read_padding() -> None:
    """The same items with and without two columns of padding before them give the same states.

    The padded row is wider, so its matmuls may sum in another order: float32 states of one block
    (LayerNorm-scaled, |F| ~ 1) then differ by a few ulps, under 1e-5; reading the padding would
    move them by the attention weight the padding took, orders of magnitude more.
    """
    torch.manual_seed(0)
    model = SASRec(n_items=30, params=PARAMS).eval()
    items = torch.randint(1, 31, (4, WALK - 2))
    padded = torch.cat([torch.full((4, 2), PAD), items], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(model.states(padded)[:, 2:], model.states(items), rtol=1e-5, atol=1e-5)
        assert (model.user_vectors(torch.full((3, WALK), PAD)) == 0).all()


DETERMINISM_TRAIN = TRAIN_FAST.model_copy(update={"epochs": 3})
"""Three epochs: the seeded initialization, dropout masks and negatives all take part."""


def digests() -> dict[str, object]:
    """What two processes must agree on: every checkpoint tensor's digest and the training record."""
    trained = train_sasrec(sequential_shop(), PARAMS, DETERMINISM_TRAIN)
    tensors = {name: getattr(trained, name) for name in EMBEDDINGS} | trained.result.best_state
    return {
        "tensors": {name: tensor_fingerprint(tensor) for name, tensor in tensors.items()},
        "history": without_seconds(trained.result.history),
    }


def test_two_processes_train_to_the_same_bits() -> None:
    """Two processes side by side, at the default thread count, so they also compete for the cores."""
    command = [sys.executable, "-c", "import json, tests.models.test_sasrec as t; print(json.dumps(t.digests()))"]
    runs = [subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [run.communicate(timeout=300)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0]
    first, second = (json.loads(output.strip().splitlines()[-1]) for output in outputs)
    assert first == second
    assert len(first["history"]) == DETERMINISM_TRAIN.epochs
