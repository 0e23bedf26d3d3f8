"""What fusion sees of its towers at one time cut: comparable scores and each pair's context.

Which towers exist, where their checkpoints live and how each scores is `grec_dagster.layout`'s
registry; `towers_at` turns registry entries into scores at a cut.

A tower scores every item for a user: r(u, i) = <p_u, q_i> for an embedding tower, r(u, i) = q_i
for a user-independent one (popularity). Scales differ (dot products, event counts), so each
tower is standardized per user over all items, which also makes a user's scores from different
towers comparable:

    z_t(u, i) = (r_t(u, i) - mean_j r_t(u, j)) / std_j r_t(u, j)        (a zero std counts as 1)

A pair's context is its user's segment times its item's segment, as `evaluation/segments.py`
defines them, from the events before the cut (at the validation cut: the training split):

    c(u, i) = 3 * [u warm] + {0: cold item, 1: head item, 2: tail item}[i]      (6 contexts)

and its activity features are log1p of the user's and the item's event counts before the cut,
divided by their maxima (so both lie in [0, 1]). Its timing features, read by gates that ask for
them (`GatedFusion(recency_features=True)`), say how long ago, in days before the cut's last known
event, the user last acted and the item was first met, on the same log scale: a user without an
event counts as the longest absent (1), an item without one as brand new (0).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from functools import cached_property
from pathlib import Path

import torch
from torch import Tensor

from grec_dagster.evaluation.metrics import ScoreFn
from grec_dagster.evaluation.segments import item_segments_from_counts
from grec_dagster.graph.interactions import VALID, InteractionGraph, known_before
from grec_dagster.layout import POPULARITY, TOWERS, CheckpointLayout, Scorer
from grec_dagster.models.popularity import most_popular_recent
from grec_dagster.storage import load_tensors

USER_CONTEXTS = ("cold_users", "warm_users")
ITEM_CONTEXTS = ("cold_items", "head_items", "tail_items")
CONTEXTS = tuple(f"{user}/{item}" for user in USER_CONTEXTS for item in ITEM_CONTEXTS)
"""Context c = 3 * user index + item index, named `<user segment>/<item segment>`."""
DAY_SECONDS = 86_400
SCORE_BUDGET = 1 << 22
"""Floats of one [users, items, towers] block; bounds memory on large catalogs."""


@dataclass(frozen=True)
class Tower:
    """One tower at one cut: r(u, i) = <user_vectors[u], item_vectors[i]>, or item_vectors[i]
    when `user_vectors` is None."""

    name: str
    item_vectors: Tensor
    user_vectors: Tensor | None = None

    def scores(self, users: Tensor) -> Tensor:
        """[len(users), n_items]."""
        if self.user_vectors is None:
            return self.item_vectors.unsqueeze(0).expand(len(users), -1)
        return self.user_vectors[users] @ self.item_vectors.T

    def pair_scores(self, users: Tensor, items: Tensor) -> Tensor:
        """r(users[k], items[k]) for each k."""
        if self.user_vectors is None:
            return self.item_vectors[items]
        return (self.user_vectors[users] * self.item_vectors[items]).sum(-1)


@dataclass(frozen=True)
class PairFeatures:
    """Fusion's inputs for a set of (user, item) pairs of any shape S: z [*S, T], the rest [*S]."""

    z: Tensor
    context: Tensor
    items: Tensor
    user_activity: Tensor
    item_activity: Tensor
    user_recency: Tensor
    item_age: Tensor

    def tensors(self) -> tuple[Tensor, ...]:
        """The fields in order: what `GatedFusion.forward` takes."""
        return tuple(getattr(self, field.name) for field in fields(self))


@dataclass(frozen=True)
class TowerInputs:
    """The towers at one cut, with the event counts before it that define contexts and activity,
    and the days since each user's last and each item's first event before it (inf: none)."""

    towers: tuple[Tower, ...]
    user_counts: Tensor
    item_counts: Tensor
    user_idle_days: Tensor
    item_age_days: Tensor

    @property
    def names(self) -> list[str]:
        return [tower.name for tower in self.towers]

    @property
    def n_items(self) -> int:
        return len(self.item_counts)

    def raw(self, users: Tensor) -> Tensor:
        """[len(users), n_items, T] raw scores."""
        return torch.stack([tower.scores(users).float() for tower in self.towers], dim=-1)

    def moments(self, users: Tensor) -> tuple[Tensor, Tensor]:
        """Per user and tower, the mean and std of its scores over all items: [len(users), T] each."""
        step = self.user_chunk()
        means, stds = [], []
        for start in range(0, len(users), step):
            mean, std = _moments(self.raw(users[start : start + step]))
            means.append(mean)
            stds.append(std)
        return torch.cat(means), torch.cat(stds)

    def user_chunk(self) -> int:
        """Users per block of raw scores within `SCORE_BUDGET`."""
        return max(1, SCORE_BUDGET // (self.n_items * len(self.towers)))

    def all_items(self, users: Tensor) -> PairFeatures:
        """Features of every (user, item) pair for `users`: shape [len(users), n_items]."""
        raw = self.raw(users)
        mean, std = _moments(raw)
        items = torch.arange(self.n_items).unsqueeze(0).expand(len(users), -1)
        return self._features((raw - mean.unsqueeze(1)) / std.unsqueeze(1), users.unsqueeze(1), items)

    def pairs(self, users: Tensor, items: Tensor, mean: Tensor, std: Tensor) -> PairFeatures:
        """Features of the pairs (users[k], items[k]); `mean`, `std` are `moments(users)`."""
        raw = torch.stack([tower.pair_scores(users, items).float() for tower in self.towers], dim=-1)
        return self._features((raw - mean) / std, users, items)

    def _features(self, z: Tensor, users: Tensor, items: Tensor) -> PairFeatures:
        user_warm = (self.user_counts[users] > 0).long()
        return PairFeatures(
            z=z,
            context=(len(ITEM_CONTEXTS) * user_warm + self.item_context[items]).expand(items.shape),
            items=items,
            user_activity=self.user_activity[users].expand(items.shape),
            item_activity=self.item_activity[items],
            user_recency=self.user_recency[users].expand(items.shape),
            item_age=self.item_age[items],
        )

    @cached_property
    def item_context(self) -> Tensor:
        segments = item_segments_from_counts(self.item_counts)
        context = torch.zeros(self.n_items, dtype=torch.long)
        for index, name in enumerate(ITEM_CONTEXTS):
            context[segments[name]] = index
        return context

    @cached_property
    def user_activity(self) -> Tensor:
        return _scaled_log(self.user_counts)

    @cached_property
    def item_activity(self) -> Tensor:
        return _scaled_log(self.item_counts)

    @cached_property
    def user_recency(self) -> Tensor:
        return _scaled_log(self.user_idle_days, unknown=1.0)

    @cached_property
    def item_age(self) -> Tensor:
        return _scaled_log(self.item_age_days, unknown=0.0)


def _moments(raw: Tensor) -> tuple[Tensor, Tensor]:
    mean, std = raw.mean(dim=1), raw.std(dim=1)
    return mean, torch.where(std > 0, std, torch.ones_like(std))


def _scaled_log(values: Tensor, unknown: float = 0.0) -> Tensor:
    """log1p(values) over its largest finite value (at least log1p(e - 1) = 1); inf -> `unknown`."""
    known = torch.isfinite(values)
    logs = torch.log1p(torch.where(known, values.float(), 0.0))
    return torch.where(known, logs / logs.max().clamp(min=1.0), unknown)


def days_before(graph: InteractionGraph, cut: int) -> tuple[Tensor, Tensor]:
    """Days from each user's last and each item's first event to the last event known at `cut`
    (inf where there is none): `TowerInputs.user_idle_days`, `item_age_days`."""
    users, items, ts = graph.edges(*known_before(cut))
    if not len(ts):
        return torch.full((graph.n_users,), torch.inf), torch.full((graph.n_items,), torch.inf)
    now = int(ts.max())
    last = torch.full((graph.n_users,), -1, dtype=torch.long).scatter_reduce(0, users, ts, "amax")
    first = torch.full((graph.n_items,), now + 1, dtype=torch.long).scatter_reduce(0, items, ts, "amin")
    idle = torch.where(last >= 0, (now - last) / DAY_SECONDS, torch.inf)
    age = torch.where(first <= now, (now - first) / DAY_SECONDS, torch.inf)
    return idle.float(), age.float()


def tower_inputs(
    graph: InteractionGraph, checkpoints: Mapping[str, Path], cut: int, popularity: bool
) -> TowerInputs:
    """The towers as they were at the start of split `cut` (VALID or TEST): popularity first (when
    wanted), counted over the events known then, then each embedding checkpoint in `checkpoints`.

    At the validation cut a tower that stored `valid_*` embeddings (it reads events after training,
    as GraphSAGE does) gives those; the others read training events only, so one pair of embeddings
    serves both cuts.
    """
    known = known_before(cut)
    towers = [Tower(POPULARITY, most_popular_recent(graph, splits=known))] if popularity else []
    for name, path in checkpoints.items():
        tensors, _ = load_tensors(path)
        prefix = "valid_" if cut == VALID and "valid_user_embedding" in tensors else ""
        towers.append(Tower(name, tensors[f"{prefix}item_embedding"], tensors[f"{prefix}user_embedding"]))
    users, items, _ = graph.edges(*known)
    return TowerInputs(
        tuple(towers),
        torch.bincount(users, minlength=graph.n_users),
        torch.bincount(items, minlength=graph.n_items),
        *days_before(graph, cut),
    )


def towers_at(graph: InteractionGraph, layout: CheckpointLayout, names: Sequence[str], cut: int) -> TowerInputs:
    """The registered towers `names` at `cut` (popularity first when named), from their checkpoints."""
    checkpoints = {name: layout.model(name).checkpoint for name in names if TOWERS[name].scorer == Scorer.EMBEDDINGS}
    return tower_inputs(graph, checkpoints, cut, popularity=POPULARITY in names)


def trained_towers(layout: CheckpointLayout, names: Sequence[str]) -> list[str]:
    """The towers among `names` that can score now: popularity always, the others once trained."""
    return [
        name
        for name in names
        if TOWERS[name].scorer != Scorer.EMBEDDINGS or layout.model(name).checkpoint.exists()
    ]


def with_cold_start(score: ScoreFn, graph: InteractionGraph, cut: int) -> ScoreFn:
    """The cold-start rule every tower is evaluated under, the same for all: a user with no event
    known at `cut` (none before the test cut, at test) is scored by recent popularity at that cut,
    what a shop shows a newcomer; every other user by the tower. An ID-based tower has no vector
    for such a user (LightGCN, EASE, SASRec give it zeros); an inductive one (GraphSAGE, the
    temporal model, the text tower) would embed it from features, but alone it is held to the same
    rule, so every row of a report ranks cold users alike. Fusion needs no rule: its cold-user
    contexts learn how much each tower's opinion of a cold user is worth."""
    known_users, _, _ = graph.edges(*known_before(cut))
    known = torch.zeros(graph.n_users, dtype=torch.bool)
    known[known_users] = True
    fallback = most_popular_recent(graph, splits=known_before(cut))

    def scores(users: Tensor) -> Tensor:
        out = score(users).float().clone()
        out[~known[users]] = fallback
        return out

    return scores

