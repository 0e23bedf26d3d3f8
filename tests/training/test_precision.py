"""`precision: bfloat16` runs the training forward passes under bf16 autocast and nothing else: the
weights, the optimizer's state and validation stay float32, and float32 stays the default."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from grec_dagster.training.loop import DEFAULT_CONTEXT, TrainParams, fit

from .determinism_worker import CLOSED_FORM, FUSION, MODELS, TRAIN, Shop, embedding_trainers, run_fusion

TRAINED_TOWERS = [model for model in MODELS if model not in (*CLOSED_FORM, FUSION)]
BF16 = TRAIN.model_copy(update={"epochs": 2, "patience": 2, "precision": "bfloat16"})


@pytest.fixture(scope="module")
def shop() -> Shop:
    return Shop()


class Recorder(nn.Module):
    """A two-layer regressor that notes the dtype its hidden layer computed in, per mode."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden, self.out = nn.Linear(4, 16), nn.Linear(16, 1)
        self.seen: dict[str, set[torch.dtype]] = {"train": set(), "eval": set()}

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        h = self.hidden(x)
        self.seen["train" if self.training else "eval"].add(h.dtype)
        return self.out(torch.relu(h))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(self.predict(x).squeeze(1), y)


class SumObjective:
    """y = sum(x); validation scores the float32 model on fixed points."""

    def __init__(self) -> None:
        self.x = torch.randn(32, 4, generator=torch.Generator().manual_seed(1))

    def batches(self, epoch: int, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, ...]]:
        x = torch.randn(64, 4, generator=generator)
        yield x, x.sum(1)

    def validate(self, model: Recorder) -> dict[str, float]:
        with torch.no_grad():
            return {"score": -float(F.mse_loss(model.predict(self.x).squeeze(1), self.x.sum(1)))}


@pytest.mark.parametrize(("precision", "trained_in"), [("float32", torch.float32), ("bfloat16", torch.bfloat16)])
def test_only_training_forward_passes_change_precision(precision: str, trained_in: torch.dtype) -> None:
    torch.manual_seed(0)
    model = Recorder()
    params = TrainParams(epochs=40, lr=1e-2, precision=precision, watch_epochs=0)
    result = fit(model, SumObjective(), params, selection_metric="score")

    assert model.seen == {"train": {trained_in}, "eval": {torch.float32}}
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(math.isfinite(record["train_loss"]) for record in result.history)
    assert result.best_metric > result.history[0]["score"] / 4  # it learned: the error fell below a quarter


def test_float32_is_the_default() -> None:
    assert TrainParams().precision == "float32"


@pytest.mark.parametrize("model", TRAINED_TOWERS)
def test_every_tower_trains_under_bf16_autocast(shop: Shop, model: str) -> None:
    """Each tower's own operations (sparse products, attention, scatter) run under the autocast, and
    what comes out stays float32 and finite."""
    trained = embedding_trainers(shop, BF16)[model](DEFAULT_CONTEXT)

    assert trained.user_embedding.dtype == trained.item_embedding.dtype == torch.float32
    assert torch.isfinite(trained.user_embedding).all() and torch.isfinite(trained.item_embedding).all()
    assert all(math.isfinite(record["train_loss"]) for record in trained.result.history)


def test_the_fusion_trains_under_bf16_autocast(shop: Shop, tmp_path: Path) -> None:
    fused = run_fusion(shop, DEFAULT_CONTEXT, tmp_path, BF16)

    assert all(math.isfinite(record["train_loss"]) for record in fused["history"])
    assert fused["test"] and all(math.isfinite(value) for value in fused["test"].values())
