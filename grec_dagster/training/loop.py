"""One training loop for every model: accelerate, early stopping with a grokking watch,
resumable checkpoints.

The same code runs on a CPU, on one GPU, or as several DDP processes (`torchrun`, or
`accelerate launch` on GPUs). Every process draws the same seeded batches and trains on its
contiguous share of each one; its mean loss is weighted by that share, so DDP's average of the
gradients is the gradient of the whole batch's mean loss: n processes step exactly as one
process does on the same `batch_size`, up to the order of float sums. A model's
`forward(*batch)` returns its training loss (a mean over the batch's examples), so DDP sees
every step.

After each epoch the full training state (model, optimizer, RNG, counters, history) is
written atomically to `last.safetensors`; a killed run restarted with the same config resumes
there and ends where an uninterrupted run would (a run that had already stopped stays stopped).
Early stopping ends a run after `patience` evaluations without a better `selection_metric`,
unless the grokking watch (`watch.py`) sees the one state in which grokking can still come and
keeps it training for a bounded budget; the best state by validation is what the run returns.
Progress bars show only on the main process, on a terminal, outside CI.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from pydantic import BaseModel, Field
from torch import nn
from tqdm.auto import tqdm

from grec_dagster.storage import load_tensors, save_tensors
from grec_dagster.training.checkpoints import flatten_optimizer, unflatten_optimizer
from grec_dagster.training.determinism import deterministic_kernels
from grec_dagster.training.optimizers import build_optimizer
from grec_dagster.training.watch import WatchState, watch_allows, watch_summary

Precision = Literal["float32", "bfloat16"]
"""How a training step's forward pass computes: float32, or under bf16 autocast."""


class TrainParams(BaseModel):
    epochs: int = Field(default=300, description="Upper bound on epochs.")
    lr: float = Field(default=1e-3, description="Adam learning rate.")
    weight_decay: float = Field(default=0.0, description="AdamW weight decay.")
    batch_size: int = Field(default=2048, description="Training examples per step (over all processes).")
    patience: int = Field(default=30, ge=1, description="Evaluations without improvement before stopping.")
    eval_every: int = Field(default=1, description="Epochs between validations.")
    seed: int = Field(default=0, description="Seed of initialization and batch order.")
    watch_epochs: int = Field(
        default=10,
        ge=0,
        description="Grokking watch: epochs a run may train past early stopping while its loss is flat and "
        "validation stalls (see training/watch.py); 0 turns it off. Raise it for nightly retrains.",
    )
    watch_weight_decay: float = Field(default=0.1, ge=0, description="Weight decay while the watch runs.")
    precision: Precision = Field(
        default="float32",
        description="Training forward passes in float32, or under bfloat16 autocast (matmuls in bf16, weights, "
        "optimizer and validation in float32): faster where the CPU or GPU has bf16 units, and different numbers.",
    )


class StepCappedTraining(TrainParams):
    """Training whose epoch may be cut into at most `max_steps` steps: past batch_size x max_steps
    examples, a batch holds 1/max_steps of them.

    For models whose step costs far less than its batch's share of the epoch once the batch grows
    (fixed per-operation overhead, or a neighbour sample that saturates), so that a long log's epoch
    is bounded by its step count. Fewer, larger steps per epoch are an optimization change, not a
    free lunch: each subclass says what the cap cost its model, and defaults it accordingly. Logs
    below the cap train at batch_size, unchanged.
    """

    max_steps: int | None = Field(
        default=None, ge=1, description="Most steps an epoch is cut into; batches grow past it. None: no cap."
    )

    def examples_per_batch(self, n_examples: int) -> int:
        """How many of an epoch's `n_examples` a batch holds: batch_size, or 1/max_steps of them if larger."""
        if self.max_steps is None:
            return self.batch_size
        return max(self.batch_size, math.ceil(n_examples / self.max_steps))


class Objective(Protocol):
    """What a model brings to the loop: its batches and its validation score (higher is better).

    Under DDP each process trains on its contiguous rows of every batch, the same rows of each
    tensor, so every tensor must have one row per example (dim 0) and the loss must be a mean
    over them; batches of another shape (a sampled subgraph, say) train on one process only.
    """

    def batches(self, epoch: int, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, ...]]: ...

    def validate(self, model: nn.Module) -> dict[str, float]: ...


@dataclass
class TrainResult:
    history: list[dict[str, float]]
    best_epoch: int
    best_metric: float
    best_state: dict[str, torch.Tensor]
    resumed_from_epoch: int | None = None
    watch: dict[str, Any] = field(default_factory=dict)
    """What the grokking watch used and saw (`watch.watch_summary`)."""
    extra: dict[str, Any] = field(default_factory=dict)


EpochCallback = Callable[[dict[str, float]], None]


@dataclass(frozen=True)
class TrainingContext:
    """The plumbing of a run, apart from its data and params: where its resumable state lives
    (None: nowhere, a killed run starts over), whom to tell after each epoch, and the devices."""

    checkpoint_dir: Path | None = None
    on_epoch: EpochCallback | None = None
    accelerator: Accelerator | None = None


DEFAULT_CONTEXT = TrainingContext()
"""No resumable state, no callback, the CPU or the one visible GPU."""


def fit(
    model: nn.Module,
    objective: Objective,
    params: TrainParams,
    context: TrainingContext = DEFAULT_CONTEXT,
    *,
    selection_metric: str = "ndcg@20",
    description: str = "train",
) -> TrainResult:
    """Train `model` until `selection_metric` stops improving for `patience` evaluations, with
    deterministic kernels, so the same inputs give the same bits in every process."""
    with deterministic_kernels():
        return _fit(model, objective, params, context, selection_metric, description)


def _fit(
    model: nn.Module,
    objective: Objective,
    params: TrainParams,
    context: TrainingContext,
    selection_metric: str,
    description: str,
) -> TrainResult:
    accelerator = context.accelerator or Accelerator(cpu=not torch.cuda.is_available())
    checkpoint_dir, on_epoch = context.checkpoint_dir, context.on_epoch
    optimizer = build_optimizer(model, params.lr, params.weight_decay)
    generator = torch.Generator().manual_seed(params.seed)
    state = _LoopState()
    last_path = Path(checkpoint_dir) / "last.safetensors" if checkpoint_dir else None
    if last_path is not None and last_path.exists():
        state = _restore(last_path, model, optimizer, generator)
    wrapped, optimizer = accelerator.prepare(model, optimizer)
    inner = accelerator.unwrap_model(wrapped)

    quiet = True if _in_ci() or not accelerator.is_main_process else None  # None: quiet unless a terminal
    epochs = tqdm(range(state.next_epoch, params.epochs), desc=description, disable=quiet, leave=False)
    for epoch in epochs:
        if state.bad_evals >= params.patience and not watch_allows(
            state.watch,
            epoch,
            state.history,
            selection_metric,
            params.watch_epochs,
            params.watch_weight_decay,
            params.patience,
            optimizer,
        ):
            break
        started = time.perf_counter()
        wrapped.train()
        total, steps = 0.0, 0
        for batch in objective.batches(epoch, generator):
            shard, weight = _shard(batch, accelerator.process_index, accelerator.num_processes)
            with torch.autocast(accelerator.device.type, torch.bfloat16, enabled=params.precision == "bfloat16"):
                loss = wrapped(*(tensor.to(accelerator.device) for tensor in shard)).float() * weight
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            optimizer.step()
            total += float(loss.detach())
            steps += 1
        total = sum(gather_object([total])) / accelerator.num_processes  # the weighted shares add up to batches
        record = {"epoch": float(epoch), "train_loss": total / max(steps, 1), "seconds": time.perf_counter() - started}
        if (epoch + 1) % params.eval_every == 0 or epoch + 1 == params.epochs:
            inner.eval()
            record |= objective.validate(inner)
            score = record[selection_metric]
            if score > state.best_metric:
                state.best_metric, state.best_epoch, state.bad_evals = score, epoch, 0
                state.best_state = copy.deepcopy({k: v.detach().cpu() for k, v in inner.state_dict().items()})
            else:
                state.bad_evals += 1
        state.history.append(record)
        state.next_epoch = epoch + 1
        epochs.set_postfix(loss=f"{record['train_loss']:.4f}", best=f"{state.best_metric:.4f}")
        if on_epoch is not None and accelerator.is_main_process:
            on_epoch(record)
        if last_path is not None and accelerator.is_main_process:
            _save(last_path, inner, optimizer, generator, state)
    return TrainResult(
        history=state.history,
        best_epoch=state.best_epoch,
        best_metric=state.best_metric,
        best_state=state.best_state or {k: v.detach().cpu() for k, v in inner.state_dict().items()},
        resumed_from_epoch=state.resumed_from,
        watch=watch_summary(state.watch, params.watch_epochs, state.best_epoch, state.next_epoch),
    )


def _shard(batch: tuple[torch.Tensor, ...], index: int, count: int) -> tuple[tuple[torch.Tensor, ...], float]:
    """Process `index`'s contiguous rows of `batch`, and the weight that turns DDP's average of
    per-process mean losses into the mean over the whole batch when the shares are uneven.

    A process left without rows (a batch smaller than the process count) repeats row 0 with
    weight 0: it must still run backward, or the others wait forever in the all-reduce.
    """
    if count == 1:
        return batch, 1.0
    size = len(batch[0])
    if any(len(tensor) != size for tensor in batch):
        raise ValueError("under DDP every tensor of a batch needs one row per example")
    start, stop = size * index // count, size * (index + 1) // count
    weight = (stop - start) * count / size
    if start == stop:
        start, stop = 0, 1
    return tuple(tensor[start:stop] for tensor in batch), weight


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false")


@dataclass
class _LoopState:
    next_epoch: int = 0
    best_metric: float = float("-inf")
    best_epoch: int = -1
    bad_evals: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    best_state: dict[str, torch.Tensor] | None = None
    resumed_from: int | None = None
    watch: WatchState = field(default_factory=WatchState)


def _save(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, generator: torch.Generator, state: _LoopState
) -> None:
    optimizer_tensors, optimizer_meta = flatten_optimizer(optimizer.state_dict())
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors |= optimizer_tensors
    tensors |= {f"best.{k}": v for k, v in (state.best_state or {}).items()}
    tensors["rng.generator"] = generator.get_state()
    tensors["rng.torch"] = torch.get_rng_state()
    meta = {
        "next_epoch": state.next_epoch,
        "best_metric": state.best_metric,
        "best_epoch": state.best_epoch,
        "bad_evals": state.bad_evals,
        "history": state.history,
        "watch": state.watch.to_dict(),
        "optimizer": optimizer_meta,
    }
    save_tensors(path, tensors, meta)


def _restore(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, generator: torch.Generator) -> _LoopState:
    tensors, meta = load_tensors(path)
    model.load_state_dict({k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")})
    optimizer.load_state_dict(unflatten_optimizer(tensors, meta["optimizer"]))
    generator.set_state(tensors["rng.generator"])
    torch.set_rng_state(tensors["rng.torch"])
    best = {k[len("best.") :]: v for k, v in tensors.items() if k.startswith("best.")}
    return _LoopState(
        next_epoch=meta["next_epoch"],
        best_metric=meta["best_metric"],
        best_epoch=meta["best_epoch"],
        bad_evals=meta["bad_evals"],
        history=meta["history"],
        best_state=best or None,
        resumed_from=meta["next_epoch"],
        watch=WatchState(**meta["watch"]),
    )
