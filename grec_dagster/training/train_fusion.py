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
  With `start_per_item_segment` they start instead from static weights tuned per item segment
  (cold, head, tail: one coordinate pass, each segment's grid searched with the others held, a
  segment's weights kept unless another row is strictly better), so that, e.g., the text tower
  can own the cold-item slot that a blend tuned on all items gives to popularity.
- Test: the same model on the towers at the test cut (valid events known, as GraphSAGE and
  the temporal model embed them) with contexts from train + valid events; test events are
  read by the evaluator only.

The towers early-stopped on validation NDCG, so their validation scores are a little
optimistic (one number picked from tens of epochs); fusion inherits that small bias.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, replace
from itertools import combinations
from pathlib import Path

import torch
from accelerate import Accelerator
from pydantic import BaseModel, Field, field_validator
from torch import Tensor, nn

from grec_dagster.evaluation.evaluator import ranking_task, validation_ndcg
from grec_dagster.evaluation.metrics import RankingTask, ScoreFn
from grec_dagster.graph.interactions import TRAIN, VALID, InteractionGraph
from grec_dagster.grokking import GrokkingEvent
from grec_dagster.layout import FUSED_BY_DEFAULT, FUSION, TOWERS, CheckpointLayout
from grec_dagster.models.fusion import (
    Fusion,
    GatedFusion,
    GateShift,
    StaticFusion,
    fused_contributions,
    grokking_shifts,
)
from grec_dagster.models.towers import CONTEXTS, ITEM_CONTEXTS, TowerInputs, towers_at, trained_towers
from grec_dagster.storage import load_tensors, save_tensors
from grec_dagster.training.bpr import BPRSampler
from grec_dagster.training.loop import DEFAULT_CONTEXT, TrainingContext, TrainParams, TrainResult, fit

TUNING_BUDGET = 1 << 26
"""Floats of standardized scores cached for the static grid search; beyond, a seeded user sample."""


class FusionParams(BaseModel):
    towers: list[str] = Field(
        default=list(FUSED_BY_DEFAULT),
        description=f"Towers to fuse, from {', '.join(TOWERS)}; one without a checkpoint yet is skipped.",
    )
    hidden: int = Field(default=16, ge=1, description="Hidden units of the gate MLP on tower-score statistics.")
    item_l2: float = Field(default=1e-3, description="L2 penalty on the per-item gate offsets.")
    min_weight: float = Field(default=0.02, gt=0, description="Floor of a static weight where it starts a gate bias.")
    grid_step: float = Field(default=0.1, gt=0, le=1, description="Step of the static weights' simplex grid.")
    stop_share: float = Field(default=0.25, gt=0, lt=1, description="Validation users held out for early stopping.")
    max_shift: float = Field(default=math.log(2), ge=0, description="Bound on a grokking shift of one gate bias.")
    recency_features: bool = Field(
        default=False, description="Gates also read the user's days since its last event and the item's age."
    )
    start_per_item_segment: bool = Field(
        default=False, description="Gates start from static weights tuned per item segment (cold, head, tail)."
    )

    @field_validator("towers")
    @classmethod
    def _known_towers(cls, towers: list[str]) -> list[str]:
        unknown = [name for name in towers if name not in TOWERS]
        if unknown or len(set(towers)) != len(towers):
            raise ValueError(f"towers must be distinct names from {', '.join(TOWERS)}; got {towers}")
        return towers


@dataclass
class TrainedFusion:
    towers: list[str]
    static: StaticFusion
    static_valid_ndcg: float
    gated: GatedFusion
    result: TrainResult
    shifts: list[GateShift]
    """The grokking shifts proposed; applied to `gated` only when `shift_accepted`."""
    stop_ndcg_before_shift: float
    stop_ndcg_after_shift: float
    """Held-out validation NDCG@20 of the gates with the proposed shifts (equal to before when none)."""
    stop_users: Tensor
    """The validation users held out of the gates' training: early stopping and the shift are judged on them."""
    start: Tensor
    """The static weights per context the gates started from, [len(CONTEXTS), T] (unfloored)."""
    shift_accepted: bool = False

    def shift_decision(self) -> str:
        """What became of the grokking shifts, with both held-out numbers."""
        if not self.shifts:
            return "none proposed (no fused tower grokked)"
        verdict = "applied" if self.shift_accepted else "rejected"
        return (
            f"{verdict}: held-out validation NDCG@20 {self.stop_ndcg_before_shift:.4f} without the shift, "
            f"{self.stop_ndcg_after_shift:.4f} with it"
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


@dataclass(frozen=True)
class TuningScores:
    """What the static tuners search over, computed once per task: the standardized scores of every
    item for the task's users `z` [users, n_items, T], each user's row in `z` (`row[user]`), and each
    item's segment (`TowerInputs.item_context`)."""

    z: Tensor
    row: Tensor
    item_context: Tensor

    @classmethod
    def of(cls, inputs: TowerInputs, task: RankingTask) -> TuningScores:
        z = torch.cat([inputs.all_items(task.users[s : s + 256]).z for s in range(0, len(task.users), 256)])
        row = torch.full((int(task.users.max()) + 1,), -1, dtype=torch.long)
        row[task.users] = torch.arange(len(task.users))
        return cls(z, row, inputs.item_context)


def tune_static(scores: TuningScores, task: RankingTask, step: float) -> tuple[Tensor, float]:
    """The simplex grid's best weights by NDCG@20 on `task`, and that NDCG."""
    z, row = scores.z, scores.row
    best, best_ndcg = None, -math.inf
    for weights in simplex_grid(z.shape[-1], step):
        ndcg = validation_ndcg(lambda users, w=weights: z[row[users]] @ w, task)["ndcg@20"]
        if ndcg > best_ndcg:
            best, best_ndcg = weights, ndcg
    return best, best_ndcg


def tune_static_per_item_segment(
    scores: TuningScores, task: RankingTask, step: float, weights: Tensor, ndcg: float
) -> tuple[Tensor, float]:
    """From `weights` (NDCG@20 `ndcg` on `task`), one coordinate pass over the item segments: each
    segment's row searched on the simplex grid with the others held, kept unless a row is strictly
    better. Returns [len(ITEM_CONTEXTS), T] weights and their NDCG@20."""
    z, row = scores.z, scores.row
    by_segment = weights.expand(len(ITEM_CONTEXTS), -1).clone()
    for index in range(len(ITEM_CONTEXTS)):
        items = torch.nonzero(scores.item_context == index).squeeze(1)
        if not len(items):
            continue
        fused = (z * by_segment[scores.item_context]).sum(-1)  # only the segment's columns change below
        segment_z = z[:, items]
        for candidate in simplex_grid(z.shape[-1], step):
            trial = fused.index_copy(1, items, segment_z @ candidate)
            score = validation_ndcg(lambda users, trial=trial: trial[row[users]], task)["ndcg@20"]
            if score > ndcg:
                by_segment[index], ndcg = candidate, score
    return by_segment, ndcg


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
        self.mean, self.std = inputs.moments(self.fit_users)

    def batches(self, epoch: int, generator: torch.Generator) -> Iterator[tuple[Tensor, ...]]:
        """`GatedFusion.forward`'s pair features: each row a fit pair and its negative, [B, 2]."""
        order = torch.randperm(len(self.users), generator=generator)
        users, items, rows = self.users[order], self.items[order], self.rows[order]
        negatives = self.sampler.negatives(users, generator)
        for start in range(0, len(order), self.batch_size):
            batch = slice(start, start + self.batch_size)
            pair_users = users[batch].unsqueeze(1).expand(-1, 2)
            pair_items = torch.stack([items[batch], negatives[batch]], dim=1)
            mean, std = self.mean[rows[batch]].unsqueeze(1), self.std[rows[batch]].unsqueeze(1)
            yield self.inputs.pairs(pair_users, pair_items, mean, std).tensors()

    def validate(self, model: nn.Module) -> dict[str, float]:
        return validation_ndcg(fusion_scores(model, self.inputs), self.stop_task)


class FusionTraining(TrainParams):
    epochs: int = 100
    lr: float = 3e-3
    batch_size: int = 1024
    patience: int = 10


def train_fusion(
    graph: InteractionGraph,
    inputs: TowerInputs,
    params: FusionParams,
    train: TrainParams,
    events: list[GrokkingEvent],
    context: TrainingContext = DEFAULT_CONTEXT,
) -> TrainedFusion:
    """Tune the static weights, fit the gates from them, then propose the grokking shifts and keep
    them only if they raise held-out validation NDCG@20 (the stop users'); a rejected shift is
    undone, and `TrainedFusion.shift_decision` says which with both numbers.

    `inputs` are the towers at the validation cut. Fusion is small: it trains on the CPU, whatever
    `context.accelerator` says.
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
    tuning_task = validation_task(graph, tuning_users)
    tuning = TuningScores.of(inputs, tuning_task)
    weights, static_ndcg = tune_static(tuning, tuning_task, params.grid_step)
    start = weights.expand(len(CONTEXTS), -1)
    if params.start_per_item_segment:
        per_segment, _ = tune_static_per_item_segment(tuning, tuning_task, params.grid_step, weights, static_ndcg)
        start = per_segment[torch.arange(len(CONTEXTS)) % len(ITEM_CONTEXTS)]

    torch.manual_seed(train.seed)
    model = GatedFusion(
        inputs.n_items, start, params.hidden, params.min_weight, params.item_l2, params.recency_features
    )
    objective = GatedObjective(graph, inputs, fit_users, stop_users, train.batch_size)
    on_cpu = TrainingContext(context.checkpoint_dir, context.on_epoch, Accelerator(cpu=True))
    result = fit(model, objective, train, on_cpu, description="fusion")
    model.load_state_dict(result.best_state)
    model.eval()
    before_shift = validation_ndcg(fusion_scores(model, inputs), objective.stop_task)["ndcg@20"]
    shifts = grokking_shifts(events, inputs.names, params.max_shift)
    model.shift(shifts, inputs.names)
    after_shift = validation_ndcg(fusion_scores(model, inputs), objective.stop_task)["ndcg@20"]
    accepted = bool(shifts) and after_shift > before_shift  # a shift must earn its place on held-out users
    if not accepted:
        model.shift([replace(shift, delta=-shift.delta) for shift in shifts], inputs.names)
    return TrainedFusion(
        inputs.names,
        StaticFusion(weights),
        static_ndcg,
        model,
        result,
        shifts,
        before_shift,
        after_shift,
        stop_users,
        start.clone(),
        accepted,
    )


def save_fusion(path: Path, trained: TrainedFusion, config: dict) -> None:
    """Gated parameters under `gated.`, the static weights, and the towers' order in the header."""
    tensors = {f"gated.{k}": v for k, v in trained.gated.state_dict().items()}
    tensors["static_weights"] = trained.static.weights
    save_tensors(path, tensors, config | {"towers": trained.towers})


def load_fusion(path: Path) -> tuple[list[str], StaticFusion, GatedFusion]:
    tensors, meta = load_tensors(path)
    gated = {k.removeprefix("gated."): v for k, v in tensors.items() if k.startswith("gated.")}
    n_statistics = gated["mlp.0.weight"].shape[1] - len(tensors["static_weights"])
    model = GatedFusion(
        len(gated["item_bias"]),
        tensors["static_weights"],
        hidden=len(gated["mlp.0.weight"]),
        recency_features=n_statistics == 4,
    )
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


def fusion_at(layout: CheckpointLayout, graph: InteractionGraph, cut: int) -> tuple[TowerInputs, StaticFusion, GatedFusion]:
    """The saved fusion and its towers as they were at `cut`, in the order it was trained with:
    what the evaluation report scores at the test cut, and what recommendations are made from."""
    towers, static, gated = load_fusion(layout.model(FUSION).checkpoint)
    unknown = [name for name in towers if name not in TOWERS]
    if unknown:  # a fusion trained before a tower was renamed (llm -> text_tower)
        raise FileNotFoundError(f"fusion was trained on towers grec no longer has ({unknown}): materialize it again")
    missing = sorted(set(towers) - set(trained_towers(layout, towers)))
    if missing:
        raise FileNotFoundError(f"fusion was trained on {towers}; no checkpoint of {missing}: materialize them")
    return towers_at(graph, layout, towers, cut), static, gated

