"""Fitting the fusion of frozen towers without leaking the periods it is judged on.

Leakage scheme. The towers trained on the training split, so their scores of training pairs
are fitted: gates learned there would learn which tower memorizes best. Fusion therefore
learns from the validation events, which no tower trained on, with every tower as it was at
the validation cut: GraphSAGE and the temporal model from their `valid_*` embeddings
(training events only), popularity counted over the training split, contexts from it too.

- Static weights: grid search over the simplex (step `grid_step`) for validation NDCG@20 on
  all validation users; a few numbers, so this is the strongest static baseline.
- Gates: BPR on the validation pairs of a seeded `1 - stop_share` of the validation users,
  early-stopped on validation NDCG@20 of the other users (never trained on). The gates start
  at the static weights, which saw those users too: that favours stopping early, never late.
- Test: the same model on the towers at the test cut (valid events known, as GraphSAGE and
  the temporal model embed them) with contexts from train + valid events; test events are
  read by the evaluator only.

The towers early-stopped on validation NDCG, so their validation scores are a little
optimistic (one number picked from tens of epochs); fusion inherits that small bias.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import torch
from accelerate import Accelerator
from pydantic import BaseModel, Field
from torch import Tensor, nn

from grec_dagster.evaluation.evaluator import ranking_task, validation_ndcg
from grec_dagster.evaluation.metrics import RankingTask, ScoreFn
from grec_dagster.graph.interactions import TRAIN, VALID, InteractionGraph
from grec_dagster.models.fusion import (
    Fusion,
    GatedFusion,
    GateShift,
    StaticFusion,
    fused_contributions,
    grokking_shifts,
)
from grec_dagster.models.popularity import most_popular_recent
from grec_dagster.models.towers import Tower, TowerInputs
from grec_dagster.training.bpr import BPRSampler
from grec_dagster.training.checkpoints import load_tensors, save_tensors
from grec_dagster.training.grokking import GrokkingEvent
from grec_dagster.training.loop import EpochCallback, TrainParams, TrainResult, fit

POPULARITY = "popularity"
"""The user-independent tower: most popular recent items before the cut (right for cold users)."""
TUNING_BUDGET = 1 << 26
"""Floats of standardized scores cached for the static grid search; beyond, a seeded user sample."""


class FusionParams(BaseModel):
    hidden: int = Field(default=16, ge=1, description="Hidden units of the gate MLP on tower-score statistics.")
    item_l2: float = Field(default=1e-3, description="L2 penalty on the per-item gate offsets.")
    min_weight: float = Field(default=0.02, gt=0, description="Floor of a static weight where it starts a gate bias.")
    grid_step: float = Field(default=0.1, gt=0, le=1, description="Step of the static weights' simplex grid.")
    stop_share: float = Field(default=0.25, gt=0, lt=1, description="Validation users held out for early stopping.")
    max_shift: float = Field(default=math.log(2), ge=0, description="Bound on a grokking shift of one gate bias.")


@dataclass
class TrainedFusion:
    towers: list[str]
    static: StaticFusion
    static_valid_ndcg: float
    gated: GatedFusion
    result: TrainResult
    shifts: list[GateShift]
    stop_ndcg_before_shift: float
    stop_ndcg_after_shift: float


def before(cut: int) -> tuple[int, ...]:
    """The splits whose events are known at `cut` (the start of split `cut`)."""
    return tuple(split for split in (TRAIN, VALID) if split < cut)


def tower_inputs(graph: InteractionGraph, checkpoints: Mapping[str, Path], cut: int, popularity: bool) -> TowerInputs:
    """The towers as they were at `cut`: popularity first (when wanted), then each embedding checkpoint.

    At the validation cut an embedding tower that stored `valid_*` embeddings gives those; the
    others read training events only, so one pair of embeddings serves both cuts.
    """
    known = before(cut)
    towers = [Tower(POPULARITY, most_popular_recent(graph, splits=known))] if popularity else []
    for name, path in checkpoints.items():
        tensors, _ = load_tensors(path)
        prefix = "valid_" if cut == VALID and "valid_user_embedding" in tensors else ""
        towers.append(Tower(name, tensors[f"{prefix}item_embedding"], tensors[f"{prefix}user_embedding"]))
    users, items, _ = graph.edges(*known)
    return TowerInputs(
        tuple(towers), torch.bincount(users, minlength=graph.n_users), torch.bincount(items, minlength=graph.n_items)
    )


def fusion_scores(fusion: Fusion, inputs: TowerInputs) -> ScoreFn:
    return lambda users: fused_contributions(fusion, inputs, users).sum(-1)


def simplex_grid(n_towers: int, step: float) -> Tensor:
    """Every weight vector with entries in multiples of `step` summing to 1 (stars and bars)."""
    parts = round(1 / step)
    rows = []
    for bars in combinations(range(parts + n_towers - 1), n_towers - 1):
        edges = (-1, *bars, parts + n_towers - 1)
        rows.append([edges[k + 1] - edges[k] - 1 for k in range(n_towers)])
    return torch.tensor(rows, dtype=torch.float32) / parts


def validation_task(graph: InteractionGraph, users: Tensor) -> RankingTask:
    """`ranking_task(graph, VALID)` for `users` only."""
    truth = graph.pairs(VALID)
    truth = truth[torch.isin(truth // graph.n_items, users)]
    return RankingTask.from_pairs(truth, graph.pairs(TRAIN), graph.n_items)


def tune_static(inputs: TowerInputs, task: RankingTask, step: float) -> tuple[Tensor, float]:
    """The simplex grid's best weights by NDCG@20 on `task`, and that NDCG."""
    z = torch.cat([inputs.all_items(task.users[s : s + 256]).z for s in range(0, len(task.users), 256)])
    row = torch.full((int(task.users.max()) + 1,), -1, dtype=torch.long)
    row[task.users] = torch.arange(len(task.users))
    best, best_ndcg = None, -math.inf
    for weights in simplex_grid(len(inputs.towers), step):
        ndcg = validation_ndcg(lambda users, w=weights: z[row[users]] @ w, task)["ndcg@20"]
        if ndcg > best_ndcg:
            best, best_ndcg = weights, ndcg
    return best, best_ndcg


class _GatedForward(nn.Module):
    """`forward(users, positives, negatives, rows)` -> BPR loss; `rows` index the users' score moments."""

    def __init__(self, model: GatedFusion, inputs: TowerInputs, mean: Tensor, std: Tensor, item_l2: float):
        super().__init__()
        self.model = model
        self.inputs = inputs
        self.mean, self.std = mean, std
        self.item_l2 = item_l2

    def forward(self, users: Tensor, positives: Tensor, negatives: Tensor, rows: Tensor) -> Tensor:
        mean, std = self.mean[rows], self.std[rows]
        positive = self.inputs.pairs(users, positives, mean, std)
        negative = self.inputs.pairs(users, negatives, mean, std)
        return self.model.bpr_loss(positive, negative, self.item_l2)


class GatedObjective:
    """Every validation pair of the fit users once per epoch, each with a uniform negative among the
    items the user has not met in train or valid; validation NDCG@20 of the held-out users."""

    def __init__(
        self, graph: InteractionGraph, inputs: TowerInputs, fit_users: Tensor, stop_users: Tensor, batch_size: int
    ):
        truth = validation_task(graph, fit_users)
        lengths = truth.truth_ptr.diff()
        self.users = torch.repeat_interleave(truth.users, lengths)
        self.items = truth.truth_items
        self.rows = torch.repeat_interleave(torch.arange(len(truth.users)), lengths)
        self.fit_users = truth.users
        self.sampler = BPRSampler(graph.pairs(TRAIN, VALID), graph.n_items, batch_size)
        self.stop_task = validation_task(graph, stop_users)
        self.inputs = inputs
        self.batch_size = batch_size

    def batches(self, epoch: int, generator: torch.Generator) -> Iterator[tuple[Tensor, ...]]:
        order = torch.randperm(len(self.users), generator=generator)
        users, items, rows = self.users[order], self.items[order], self.rows[order]
        negatives = self.sampler.negatives(users, generator)
        for start in range(0, len(order), self.batch_size):
            stop = start + self.batch_size
            yield users[start:stop], items[start:stop], negatives[start:stop], rows[start:stop]

    def validate(self, module: nn.Module) -> dict[str, float]:
        return validation_ndcg(fusion_scores(module.model, self.inputs), self.stop_task)


def train_fusion(
    graph: InteractionGraph,
    inputs: TowerInputs,
    params: FusionParams,
    train: TrainParams,
    events: list[GrokkingEvent],
    checkpoint_dir: Path | None = None,
    on_epoch: EpochCallback | None = None,
) -> TrainedFusion:
    """Tune the static weights, fit the gates from them, then apply the grokking shifts.

    `inputs` are the towers at the validation cut. Fusion is small: it trains on the CPU.
    """
    valid_users = ranking_task(graph, VALID).users
    if len(valid_users) < 2:
        raise ValueError(
            f"fusion needs validation users to fit and to stop on; the validation split has {len(valid_users)}"
        )
    order = valid_users[torch.randperm(len(valid_users), generator=torch.Generator().manual_seed(train.seed))]
    n_stop = min(max(1, round(params.stop_share * len(order))), len(order) - 1)
    stop_users, fit_users = order[:n_stop].sort().values, order[n_stop:].sort().values
    tuning_users = order[: max(1, TUNING_BUDGET // (inputs.n_items * len(inputs.towers)))].sort().values
    weights, static_ndcg = tune_static(inputs, validation_task(graph, tuning_users), params.grid_step)

    torch.manual_seed(train.seed)
    model = GatedFusion(inputs.n_items, weights, params.hidden, params.min_weight)
    objective = GatedObjective(graph, inputs, fit_users, stop_users, train.batch_size)
    mean, std = inputs.moments(objective.fit_users)
    result = fit(
        _GatedForward(model, inputs, mean, std, params.item_l2),
        objective,
        train,
        checkpoint_dir=checkpoint_dir,
        on_epoch=on_epoch,
        accelerator=Accelerator(cpu=True),
        description="fusion",
    )
    model.load_state_dict({k.removeprefix("model."): v for k, v in result.best_state.items()})
    model.eval()
    before_shift = validation_ndcg(fusion_scores(model, inputs), objective.stop_task)["ndcg@20"]
    shifts = grokking_shifts(events, inputs.names, params.max_shift)
    model.shift(shifts, inputs.names)
    after_shift = validation_ndcg(fusion_scores(model, inputs), objective.stop_task)["ndcg@20"]
    return TrainedFusion(
        inputs.names, StaticFusion(weights), static_ndcg, model, result, shifts, before_shift, after_shift
    )


def save_fusion(path: Path, trained: TrainedFusion, config: dict) -> None:
    """Gated parameters under `gated.`, the static weights, and the towers' order in the header."""
    tensors = {f"gated.{k}": v for k, v in trained.gated.state_dict().items()}
    tensors["static_weights"] = trained.static.weights
    save_tensors(path, tensors, config | {"towers": trained.towers})


def load_fusion(path: Path) -> tuple[list[str], StaticFusion, GatedFusion]:
    tensors, meta = load_tensors(path)
    gated = {k.removeprefix("gated."): v for k, v in tensors.items() if k.startswith("gated.")}
    model = GatedFusion(len(gated["item_bias"]), tensors["static_weights"], hidden=len(gated["mlp.0.weight"]))
    model.load_state_dict(gated)
    model.eval()
    return meta["towers"], StaticFusion(tensors["static_weights"]), model


def read_grokking_events(path: Path) -> list[GrokkingEvent]:
    """The events of a tower's `grokking.json` (a check with an `events` list, or the bare list);
    none when the tower has no such file."""
    if not path.exists():
        return []
    payload = json.loads(path.read_text())
    return [GrokkingEvent(**event) for event in (payload["events"] if isinstance(payload, dict) else payload)]
