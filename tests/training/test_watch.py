"""The grokking watch in `fit`: past early stopping only while the loss is flat and validation stalls,
bounded, under raised weight decay, and resumable like everything else in the loop."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from grec_dagster.storage import load_tensors
from grec_dagster.training.loop import DEFAULT_CONTEXT, TrainingContext, TrainParams, TrainResult, fit

PATIENCE, BUDGET, WATCH_DECAY = 3, 5, 0.5


class Scripted(nn.Module):
    """Its loss is whatever the batch says (plus a zero that keeps a gradient on its one weight)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1))

    def forward(self, loss: torch.Tensor) -> torch.Tensor:
        return loss.mean() + 0.0 * self.weight.sum()


class ScriptedObjective:
    """Epoch e's training loss is `loss(e)`, its validation score `score(e)`."""

    def __init__(self, loss: Callable[[int], float], score: Callable[[int], float]) -> None:
        self.loss, self.score, self.epoch = loss, score, 0

    def batches(self, epoch: int, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, ...]]:
        self.epoch = epoch
        yield (torch.tensor([self.loss(epoch)]),)

    def validate(self, model: nn.Module) -> dict[str, float]:
        return {"score": self.score(self.epoch)}


def flat_loss(epoch: int) -> float:
    return (5.0, 3.0)[epoch] if epoch < 2 else 1.0


def falling_loss(epoch: int) -> float:
    return 1.0 / (1 + epoch)


def stalls_at(level: float, after: int) -> Callable[[int], float]:
    return lambda epoch: min(epoch, after) / after * level


def run(loss, score, budget: int = BUDGET, context: TrainingContext = DEFAULT_CONTEXT) -> TrainResult:
    params = TrainParams(epochs=40, patience=PATIENCE, watch_epochs=budget, watch_weight_decay=WATCH_DECAY)
    return fit(Scripted(), ScriptedObjective(loss, score), params, context, selection_metric="score")


def test_a_flat_loss_and_a_stalled_validation_get_the_watch_budget_and_no_more() -> None:
    result = run(flat_loss, stalls_at(0.5, after=3))
    # best at 3; epochs 4, 5, 6 bring nothing (patience 3); the watch trains 7 .. 11 and ends
    assert (result.best_epoch, len(result.history)) == (3, 7 + BUDGET)
    assert result.watch["watch_started_epoch"] == 7 and result.watch["watch_epochs_used"] == BUDGET
    assert result.watch["watch_weight_decay"] == WATCH_DECAY
    assert result.watch["watch"] == f"no better validation in {BUDGET} epochs of watching"


def test_validation_that_jumps_under_the_watch_is_kept_and_training_goes_on() -> None:
    def groks(epoch: int) -> float:
        return 0.9 if epoch >= 9 else stalls_at(0.5, after=3)(epoch)

    result = run(flat_loss, groks)
    assert result.best_epoch == 9  # the state `fit` returns is the grokked one
    assert len(result.history) == 9 + PATIENCE + 1  # after the jump, early stopping counts again
    assert result.watch["watch"] == "validation improved under the watch (best epoch 9)"


def test_a_loss_still_falling_is_over_fitting_not_memorising_so_no_watch() -> None:
    result = run(falling_loss, stalls_at(0.5, after=3))
    assert len(result.history) == 3 + PATIENCE + 1
    assert result.watch == {
        "watch_budget_epochs": BUDGET,
        "watch_epochs_used": 0,
        "watch": "not started: at epoch 7 the loss was still falling",
    }


def test_no_budget_no_watch() -> None:
    result = run(flat_loss, stalls_at(0.5, after=3), budget=0)
    assert len(result.history) == 3 + PATIENCE + 1 and result.watch["watch"] == "off (watch_epochs = 0)"


class Crash(Exception):
    pass


def test_a_run_stopped_under_the_watch_resumes_under_it(tmp_path: Path) -> None:
    uninterrupted = run(flat_loss, stalls_at(0.5, after=3))

    def crash_at_nine(record: dict[str, float]) -> None:
        if record["epoch"] == 9:
            raise Crash

    with pytest.raises(Crash):
        run(flat_loss, stalls_at(0.5, after=3), context=TrainingContext(tmp_path, crash_at_nine))
    saved = load_tensors(tmp_path / "last.safetensors")[1]
    assert saved["watch"]["started_epoch"] == 7  # the watch began before the crash
    assert {group["weight_decay"] for group in saved["optimizer"]["param_groups"]} == {WATCH_DECAY}
    resumed = run(flat_loss, stalls_at(0.5, after=3), context=TrainingContext(tmp_path))
    without_seconds = [{k: v for k, v in r.items() if k != "seconds"} for r in resumed.history]
    assert without_seconds == [{k: v for k, v in r.items() if k != "seconds"} for r in uninterrupted.history]
    assert resumed.watch == uninterrupted.watch
