"""Full-ranking top-K metrics, vectorized over batches of users (no Python loop over users).

For a user with relevant set R (|R| = n) and a ranked list whose position r (1-based) holds
hit_r in {0, 1}:

    Recall@K  = sum_{r<=K} hit_r / n
    NDCG@K    = (sum_{r<=K} hit_r / log2(r + 1)) / (sum_{r<=min(n, K)} 1 / log2(r + 1))
    MRR@K     = 1 / (first r <= K with hit_r = 1), or 0
    HitRate@K = 1 if any hit_r = 1 for r <= K, else 0

Items the user already has (train, and valid when testing) are removed from the ranking first.
An item segment (head, tail, cold items) keeps only that segment's items in R while ranking
still covers every item, so a segment score says how well those items surface among all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

ScoreFn = Callable[[torch.Tensor], torch.Tensor]
"""Maps a batch of dense user ids to scores over every item, shape [batch, n_items]."""

METRICS = ("recall", "ndcg", "mrr", "hit")
SCORE_BUDGET = 1 << 25
"""Floats of a score block per batch; caps memory on large catalogs."""


@dataclass
class RankingTask:
    """Users to rank for, their relevant items and their already-seen items, as CSR over `users`."""

    users: torch.Tensor
    truth_ptr: torch.Tensor
    truth_items: torch.Tensor
    seen_ptr: torch.Tensor
    seen_items: torch.Tensor
    n_items: int

    @classmethod
    def from_pairs(cls, truth: torch.Tensor, seen: torch.Tensor, n_items: int) -> RankingTask:
        """Build from sorted `user * n_items + item` keys: relevant pairs and pairs to exclude."""
        truth = truth[~torch.isin(truth, seen)]
        users = torch.unique(truth // n_items)
        truth_ptr, truth_items = _rows_for(users, truth, n_items)
        seen_ptr, seen_items = _rows_for(users, seen, n_items)
        return cls(users, truth_ptr, truth_items, seen_ptr, seen_items, n_items)


def _rows_for(users: torch.Tensor, keys: torch.Tensor, n_items: int) -> tuple[torch.Tensor, torch.Tensor]:
    """CSR rows of `keys` (sorted `user * n_items + item`) for each user in `users` (sorted)."""
    key_users = keys // n_items
    starts = torch.searchsorted(key_users, users)
    ends = torch.searchsorted(key_users, users, right=True)
    lengths = ends - starts
    ptr = torch.zeros(len(users) + 1, dtype=torch.long)
    ptr[1:] = torch.cumsum(lengths, 0)
    take = torch.repeat_interleave(starts - ptr[:-1], lengths) + torch.arange(int(ptr[-1]))
    return ptr, keys[take] % n_items


def _dense_rows(ptr: torch.Tensor, items: torch.Tensor, lo: int, hi: int, n_items: int) -> torch.Tensor:
    """Boolean [hi - lo, n_items] matrix of the CSR rows lo..hi."""
    start, end = int(ptr[lo]), int(ptr[hi])
    rows = torch.repeat_interleave(torch.arange(hi - lo), ptr[lo + 1 : hi + 1] - ptr[lo:hi])
    dense = torch.zeros(hi - lo, n_items, dtype=torch.bool)
    dense[rows, items[start:end]] = True
    return dense


def _metrics_at(hits: torch.Tensor, n_relevant: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
    """Per-user metrics from a [batch, >=k] hit matrix; NaN for users with nothing relevant."""
    hits = hits[:, :k].float()
    width = hits.shape[1]
    discounts = 1.0 / torch.log2(torch.arange(2, width + 2, dtype=torch.float32))
    ideal = torch.cumsum(discounts, 0)[(n_relevant.clamp(min=1, max=width) - 1)]
    first = torch.where(hits.any(1), hits.argmax(1).float() + 1.0, torch.tensor(float("inf")))
    values = {
        "recall": hits.sum(1) / n_relevant.clamp(min=1),
        "ndcg": (hits * discounts).sum(1) / ideal,
        "mrr": 1.0 / first,
        "hit": hits.any(1).float(),
    }
    empty = n_relevant == 0
    return {name: value.masked_fill(empty, float("nan")) for name, value in values.items()}


def rank_users(
    score_fn: ScoreFn,
    task: RankingTask,
    ks: tuple[int, ...] = (10, 20),
    item_segments: dict[str, torch.Tensor] | None = None,
    batch_size: int = 1024,
) -> dict[tuple[str, str, int], torch.Tensor]:
    """Per-user metrics for every (item segment, metric, K), over `task.users` in order.

    `item_segments` maps a name to a boolean mask over items; "all" is always included.
    """
    segments = {"all": torch.ones(task.n_items, dtype=torch.bool), **(item_segments or {})}
    k_max = min(max(ks), task.n_items)
    step = max(1, min(batch_size, SCORE_BUDGET // max(task.n_items, 1)))
    parts: dict[tuple[str, str, int], list[torch.Tensor]] = {}
    for lo in range(0, len(task.users), step):
        hi = min(lo + step, len(task.users))
        with torch.no_grad():
            scores = score_fn(task.users[lo:hi]).to(torch.float32).contiguous()
        seen = _dense_rows(task.seen_ptr, task.seen_items, lo, hi, task.n_items)
        scores.masked_fill_(seen, float("-inf"))
        top = scores.topk(k_max, dim=1).indices
        truth = _dense_rows(task.truth_ptr, task.truth_items, lo, hi, task.n_items)
        hits = truth.gather(1, top)
        for segment, mask in segments.items():
            in_segment = mask[top]
            n_relevant = torch.count_nonzero(truth & mask, dim=1)
            for k in ks:
                for metric, value in _metrics_at(hits & in_segment, n_relevant, k).items():
                    parts.setdefault((segment, metric, k), []).append(value)
    return {key: torch.cat(values) for key, values in parts.items()}
