"""`launch` trains LightGCN in N processes under torchrun (gloo on this CPU) and hands back rank 0's
result: with one process it is the in-process run bit for bit (the launcher adds nothing but
transport), with two it is the in-process run up to the order of float sums (as in test_ddp.py);
epoch records reach the caller while the processes train, and a failing process fails the launch."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

from grec_dagster.training.launch import launch
from grec_dagster.training.loop import TrainingContext, TrainParams
from grec_dagster.training.train_lightgcn import train_lightgcn

from .lightgcn_worker import MODEL, run, shop_graph

INTERACTIONS = 3_000
TRAIN = TrainParams(epochs=6, lr=0.01, batch_size=301, patience=5)
"""An odd batch size: the two processes' shares differ, so only the loop's weights make them add up."""


@pytest.fixture(scope="module")
def graph():
    return shop_graph(INTERACTIONS)


@pytest.fixture(scope="module")
def single(graph):
    """The reference: one process, here, on one thread (as the launched processes below run)."""
    return run(graph, TRAIN)


def without_seconds(history: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in record.items() if k != "seconds"} for record in history]


def test_one_launched_process_trains_exactly_as_in_process(graph, single, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the reference ran on one thread
    relayed: list[dict[str, float]] = []
    state = tmp_path / "state"
    trained = launch(functools.partial(train_lightgcn, graph, MODEL, TRAIN), 1, TrainingContext(state, relayed.append))
    assert torch.equal(trained.user_embedding, single.user_embedding)
    assert torch.equal(trained.item_embedding, single.item_embedding)
    assert without_seconds(trained.result.history) == single.same_history()
    assert (trained.result.best_epoch, trained.result.best_metric) == (single.best_epoch, single.best_metric)
    assert relayed == trained.result.history  # every epoch record reached the caller, in order
    assert (state / "last.safetensors").exists()  # rank 0 kept resumable state where the caller said


def test_two_launched_processes_train_as_one(graph, single, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # two processes on two cores
    relayed: list[dict[str, float]] = []
    trained = launch(
        functools.partial(train_lightgcn, graph, MODEL, TRAIN), 2, TrainingContext(on_epoch=relayed.append)
    )
    assert relayed == trained.result.history
    result = trained.result
    assert (result.best_epoch, len(result.history)) == (single.best_epoch, len(single.history))
    # Tolerances as in test_ddp.py: the runs differ only in the order of float sums (two half-batch
    # sums and an all-reduce against one sum), about an ulp per step, which AdamW carries along; after
    # 15 epochs there the embeddings (entries of size ~1) agree to ~1e-6, and 6 epochs take fewer steps.
    assert result.best_metric == pytest.approx(single.best_metric, abs=1e-4)
    for multi, one in zip(result.history, single.history, strict=True):
        assert multi["train_loss"] == pytest.approx(one["train_loss"], rel=1e-5)
    torch.testing.assert_close(trained.user_embedding, single.user_embedding, rtol=0, atol=1e-5)
    torch.testing.assert_close(trained.item_embedding, single.item_embedding, rtol=0, atol=1e-5)
    # Equal bits would mean one process did all the work: the sums above cannot come out the same.
    assert not torch.equal(trained.user_embedding, single.user_embedding)


def test_a_failing_process_fails_the_launch():
    not_a_trainer = functools.partial(math.sqrt)  # raises TypeError when called with a TrainingContext
    with pytest.raises(RuntimeError, match=r"1 training process\(es\) under torchrun failed \(exit 1\)"):
        launch(not_a_trainer, 1)


def test_bad_arguments_are_refused_before_anything_starts():
    trainer = functools.partial(math.sqrt)
    with pytest.raises(ValueError, match="at least 1"):
        launch(trainer, 0)
    with pytest.raises(ValueError, match=f"2 processes on cuda need 2 visible GPUs; {torch.cuda.device_count()}"):
        launch(trainer, 2, device="cuda")
    with pytest.raises(ValueError, match="pass `device`"):
        launch(trainer, 2, TrainingContext(accelerator=Accelerator(cpu=True)))
