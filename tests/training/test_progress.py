"""The training loop's progress bar: on a terminal only, and never in CI logs."""

from __future__ import annotations

import io
import sys
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from grec_dagster.training.loop import TrainParams, fit


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Line(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(1, 1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(self.linear(x), y)


class LineObjective:
    """y = 2x, one batch an epoch."""

    def batches(self, epoch: int, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, ...]]:
        x = torch.randn(8, 1, generator=generator)
        yield x, 2 * x

    def validate(self, model: nn.Module) -> dict[str, float]:
        return {"score": -abs(model.linear.weight.item() - 2)}


@pytest.mark.parametrize(
    ("stderr", "ci", "shown"),
    [(Terminal, None, True), (Terminal, "true", False), (io.StringIO, None, False)],
    ids=["terminal", "terminal-in-ci", "log-file"],
)
def test_progress_bar_only_on_a_terminal_outside_ci(
    monkeypatch: pytest.MonkeyPatch, stderr: type[io.StringIO], ci: str | None, shown: bool
) -> None:
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    output = stderr()
    monkeypatch.setattr(sys, "stderr", output)

    fit(Line(), LineObjective(), TrainParams(epochs=2, batch_size=8), selection_metric="score", description="probe")

    assert ("probe" in output.getvalue()) == shown
