"""Popularity baselines: the bar every learned model has to clear.

- most popular: events per item before the cut.
- most popular recent: events per item within the last `recent_share` of the period before
  the cut, so items that are hot right before it rank first (ties broken by popularity over
  the whole period).

Both count the events of `splits`: the training split by default, train + valid at the test cut,
where the valid events have happened (every model sees the same events there).
"""

from __future__ import annotations

import torch

from grec_dagster.graph.interactions import TRAIN, InteractionGraph

RECENT_SHARE = 0.1


def most_popular(graph: InteractionGraph, splits: tuple[int, ...] = (TRAIN,)) -> torch.Tensor:
    _, items, _ = graph.edges(*splits)
    return torch.bincount(items, minlength=graph.n_items).float()


def most_popular_recent(
    graph: InteractionGraph, recent_share: float = RECENT_SHARE, splits: tuple[int, ...] = (TRAIN,)
) -> torch.Tensor:
    _, items, ts = graph.edges(*splits)
    start, end = int(ts.min()), int(ts.max())
    recent = ts >= end - recent_share * (end - start)
    counts = torch.bincount(items[recent], minlength=graph.n_items).float()
    overall = torch.bincount(items, minlength=graph.n_items).float()
    return counts + overall / (overall.max() + 1.0)


def broadcast_scores(scores: torch.Tensor):
    """A user-independent score vector as a `ScoreFn`."""
    return lambda users: scores.unsqueeze(0).expand(len(users), -1)
