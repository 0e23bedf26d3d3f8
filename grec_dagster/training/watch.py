"""The grokking watch: a bounded stretch of training past early stopping, in the one state where
grokking can still come.

Early stopping ends a run after `patience` evaluations without a better validation metric.
Grokking, by definition, comes after a long flat stretch of validation while the training loss
is already flat (memorised), so early stopping alone ends every run inside that stretch. When
early stopping would stop and the tower is in exactly that state
(`grokking.validation_stalled_on_flat_loss`), the watch lets it train on for at most
`watch_epochs` epochs, with weight decay raised to `watch_weight_decay` (the pressure under
which memorising solutions give way to general ones). A run whose loss is still falling at
that point is over-fitting, not memorising, and stops as before.

The watch starts at most once. If validation reaches a new best during it, early stopping's
count starts again and the run goes on as usual (with the raised weight decay); otherwise it
ends when its budget is spent. `fit` still keeps the best state by validation, so the watch can
only improve what is kept, never make it worse.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from grec_dagster.grokking import Evaluation, validation_stalled_on_flat_loss
from grec_dagster.training.optimizers import set_weight_decay


@dataclass
class WatchState:
    """What the watch did in a run; saved with the run's resumable state."""

    started_epoch: int | None = None
    """The first epoch trained under the watch."""
    declined_epoch: int | None = None
    """Where early stopping would have stopped and the watch did not start (the loss still fell)."""
    weight_decay: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def watch_allows(
    state: WatchState,
    epoch: int,
    history: Sequence[dict[str, float]],
    selection_metric: str,
    budget: int,
    weight_decay: float,
    patience: int,
    optimizer: torch.optim.Optimizer,
) -> bool:
    """Called when early stopping would end the run before `epoch`: whether to train it anyway."""
    if state.started_epoch is not None:
        return epoch < state.started_epoch + budget
    if budget == 0 or state.declined_epoch is not None:
        return False
    evaluations = [
        Evaluation(int(record["epoch"]), float(record["train_loss"]), float(record[selection_metric]))
        for record in history
        if selection_metric in record
    ]
    if not validation_stalled_on_flat_loss(evaluations, patience):
        state.declined_epoch = epoch
        return False
    state.started_epoch, state.weight_decay = epoch, weight_decay
    set_weight_decay(optimizer, weight_decay)
    return True


CLOSED_FORM = {"watch_budget_epochs": 0, "watch_epochs_used": 0, "watch": "none: a closed form has no training to prolong"}
"""The watch summary of a model fit in closed form (EASE): nothing to watch."""


def watch_summary(state: WatchState, budget: int, best_epoch: int, epochs_run: int) -> dict[str, Any]:
    """What the watch used and saw, for a run's metadata and MLflow."""
    if state.started_epoch is None:
        seen = (
            f"not started: at epoch {state.declined_epoch} the loss was still falling"
            if state.declined_epoch is not None
            else "not needed: early stopping never ended the run"
            if budget
            else "off (watch_epochs = 0)"
        )
        return {"watch_budget_epochs": budget, "watch_epochs_used": 0, "watch": seen}
    used = epochs_run - state.started_epoch
    seen = (
        f"validation improved under the watch (best epoch {best_epoch})"
        if best_epoch >= state.started_epoch
        else f"no better validation in {used} epochs of watching"
    )
    return {
        "watch_budget_epochs": budget,
        "watch_epochs_used": used,
        "watch_started_epoch": state.started_epoch,
        "watch_weight_decay": state.weight_decay,
        "watch": seen,
    }
