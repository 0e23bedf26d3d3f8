"""Fusing towers by learned, context-aware gates, the static baseline, and the grokking shift.

Inputs per (user u, item i): standardized tower scores z_t(u, i), t = 1..T, the pair's context
c(u, i) (cold/warm user x cold/head/tail item) and activity features, all as `towers.py`
defines them. The towers are frozen; fusion only learns how to combine them.

Gated fusion. The gate logit of tower t is a context bias, a per-item offset and a small MLP
on the pair's tower-score statistics x(u, i) = (z_1..z_T, user activity, item activity), to which
`recency_features` adds the user's recency and the item's age:

    l_t(u, i) = b_t[c(u, i)] + a_t[i] + m_t(x(u, i))
    g(u, i)   = softmax_t l(u, i)
    s(u, i)   = sum_t g_t(u, i) z_t(u, i)            (g_t z_t: tower t's contribution)

b starts at log w (the tuned static weights, floored at `min_weight`; one w for all contexts, or
one per context), a and m's output layer at zero, so training starts from static fusion. Loss:
BPR with a learned temperature (which does not change any ranking) and an L2 penalty on the
batch items' offsets:

    L = -log sigmoid(exp(tau) (s(u, i+) - s(u, i-))) + item_l2 (|a[i+]|^2 + |a[i-]|^2)

Static fusion: s(u, i) = sum_t w_t z_t(u, i), w on the simplex, one w for every pair.

Grokking shift. A tower that grokked (see `training/grokking.py`) on segment S gets its gate
bias raised in the contexts S covers (a user or item segment; "all" covers all six) by

    delta = max_shift * (1 - exp(-jump_rel))        (max_shift when jump_rel is undefined)

and the shifts of one (tower, context) together never exceed `max_shift`. Since
softmax ratios depend only on logit differences, in an affected context the grokked tower's
gate grows against every other tower's by a factor of at most exp(max_shift), and no gate of
another context moves.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from grec_dagster.grokking import GrokkingEvent
from grec_dagster.models.towers import CONTEXTS, ITEM_CONTEXTS, USER_CONTEXTS, PairFeatures, TowerInputs


class Fusion(Protocol):
    def contributions(self, features: PairFeatures) -> Tensor:
        """Each tower's share of the fused score, [*S, T]; the score is their sum."""


class StaticFusion:
    """s = sum_t w_t z_t with fixed weights: [T] for every pair, or [len(CONTEXTS), T] per context."""

    def __init__(self, weights: Tensor):
        self.weights = weights.float()

    def contributions(self, features: PairFeatures) -> Tensor:
        return features.z * (self.weights if self.weights.dim() == 1 else self.weights[features.context])


class GatedFusion(nn.Module):
    """The gated model of the module docstring."""

    def __init__(
        self,
        n_items: int,
        static_weights: Tensor,
        hidden: int = 16,
        min_weight: float = 0.02,
        item_l2: float = 0.0,
        recency_features: bool = False,
    ):
        """`static_weights`: [T] for every context, or [len(CONTEXTS), T] one row per context."""
        super().__init__()
        self.item_l2 = item_l2
        self.recency_features = recency_features
        n_towers = static_weights.shape[-1]
        prior = torch.log(static_weights.float().clamp(min=min_weight))
        self.context_bias = nn.Parameter(prior.expand(len(CONTEXTS), n_towers).clone())
        self.item_bias = nn.Parameter(torch.zeros(n_items, n_towers))
        n_statistics = n_towers + (4 if recency_features else 2)
        self.mlp = nn.Sequential(nn.Linear(n_statistics, hidden), nn.Tanh(), nn.Linear(hidden, n_towers))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)
        self.log_temperature = nn.Parameter(torch.zeros(()))

    def gates(self, features: PairFeatures) -> Tensor:
        pair = [features.user_activity, features.item_activity]
        if self.recency_features:
            pair += [features.user_recency, features.item_age]
        statistics = torch.cat([features.z, *(feature.unsqueeze(-1) for feature in pair)], dim=-1)
        logits = self.context_bias[features.context] + self.item_bias[features.items] + self.mlp(statistics)
        return torch.softmax(logits, dim=-1)

    def contributions(self, features: PairFeatures) -> Tensor:
        return self.gates(features) * features.z

    def score(self, features: PairFeatures) -> Tensor:
        return self.contributions(features).sum(-1)

    def forward(self, *fields: Tensor) -> Tensor:
        """The loss of the module docstring over a batch of B (positive, negative) item pairs: the
        `PairFeatures` fields in order, each of shape [B, 2] (z: [B, 2, T]), column 0 the positive."""
        features = PairFeatures(*fields)
        scores = self.score(features)
        margin = self.log_temperature.exp() * (scores[:, 0] - scores[:, 1])
        penalty = self.item_bias[features.items].pow(2).sum((1, 2))
        return (-F.logsigmoid(margin) + self.item_l2 * penalty).mean()

    @torch.no_grad()
    def shift(self, shifts: Iterable[GateShift], towers: Sequence[str]) -> None:
        for shift in shifts:
            for context in shift.contexts:
                self.context_bias[CONTEXTS.index(context), towers.index(shift.tower)] += shift.delta


@torch.no_grad()
def fused_contributions(fusion: Fusion, inputs: TowerInputs, users: Tensor) -> Tensor:
    """Every tower's contribution for every item, [len(users), n_items, T], in bounded blocks."""
    step = inputs.user_chunk()
    return torch.cat([fusion.contributions(inputs.all_items(users[s : s + step])) for s in range(0, len(users), step)])


@torch.no_grad()
def top_picks(
    fusion: Fusion, inputs: TowerInputs, users: Tensor, seen: Tensor, k: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Each user's `k` best items by fused score, leaving out `seen` (sorted `user * n_items + item`
    keys): items, scores and the driving tower (largest contribution), each [len(users), k];
    `users` must be distinct.
    A user with fewer than `k` unseen items gets -inf scores in the remaining places."""
    n_items = inputs.n_items
    k = min(k, n_items)
    if len(users.unique()) != len(users):
        raise ValueError("top_picks needs distinct users")
    if not len(users):
        empty = torch.empty(0, k, dtype=torch.long)
        return empty, empty.float(), empty
    seen_users, seen_items = seen // n_items, seen % n_items
    parts: list[tuple[Tensor, Tensor, Tensor]] = []
    step = inputs.user_chunk()
    for start in range(0, len(users), step):
        batch = users[start : start + step]
        contributions = fusion.contributions(inputs.all_items(batch))
        scores = contributions.sum(-1)
        row = torch.full((int(batch.max()) + 1,), -1, dtype=torch.long)
        row[batch] = torch.arange(len(batch))
        mine = torch.isin(seen_users, batch)
        scores[row[seen_users[mine]], seen_items[mine]] = -torch.inf
        top = scores.topk(k, dim=1)
        at_top = contributions.gather(1, top.indices.unsqueeze(-1).expand(-1, -1, contributions.shape[-1]))
        parts.append((top.indices, top.values, at_top.argmax(-1)))
    return tuple(torch.cat(column) for column in zip(*parts, strict=True))


@dataclass(frozen=True)
class GateShift:
    """What one grokking event did: `delta` added to `tower`'s gate bias in each of `contexts`."""

    tower: str
    segment: str
    epoch: int
    contexts: tuple[str, ...]
    delta: float


def contexts_of(segment: str) -> tuple[str, ...]:
    """The contexts a segment covers: a user or item segment's three or two, else all six."""
    if segment in USER_CONTEXTS or segment in ITEM_CONTEXTS:
        return tuple(context for context in CONTEXTS if segment in context.split("/"))
    return CONTEXTS


def grokking_shifts(events: Iterable[GrokkingEvent], towers: Sequence[str], max_shift: float) -> list[GateShift]:
    """The bounded shifts of the module docstring, for the events of towers in `towers`."""
    used: dict[tuple[str, str], float] = {}
    shifts = []
    for event in sorted(events, key=lambda e: (e.confirmed_epoch, e.tower, e.segment)):
        if event.tower not in towers:
            continue
        strength = 1.0 if event.jump_rel is None else 1.0 - math.exp(-max(event.jump_rel, 0.0))
        contexts = contexts_of(event.segment)
        delta = min([max_shift * strength] + [max_shift - used.get((event.tower, c), 0.0) for c in contexts])
        if delta <= 0:
            continue
        for context in contexts:
            used[(event.tower, context)] = used.get((event.tower, context), 0.0) + delta
        shifts.append(GateShift(event.tower, event.segment, event.epoch, contexts, delta))
    return shifts
