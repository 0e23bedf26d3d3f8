"""Popularity baselines: the bar every learned model has to clear.

- most popular: training events per item.
- most popular recent: training events per item within the last `recent_share` of the
  training period, so items that are hot right before the cut rank first (ties broken by
  popularity over the whole period).
"""

from __future__ import annotations

import torch

from grec_dagster.graph.interactions import TRAIN, InteractionGraph

RECENT_SHARE = 0.1


def most_popular(graph: InteractionGraph) -> torch.Tensor:
    return graph.train_item_counts.float()


def most_popular_recent(
    graph: InteractionGraph, recent_share: float = RECENT_SHARE, splits: tuple[int, ...] = (TRAIN,)
) -> torch.Tensor:
    """Over the events of `splits`: the training split for the baseline; fusion also scores at the
    test cut, where the valid events have happened."""
    _, items, ts = graph.edges(*splits)
    start, end = int(ts.min()), int(ts.max())
    recent = ts >= end - recent_share * (end - start)
    counts = torch.bincount(items[recent], minlength=graph.n_items).float()
    overall = torch.bincount(items, minlength=graph.n_items).float()
    return counts + overall / (overall.max() + 1.0)


def broadcast_scores(scores: torch.Tensor):
    """A user-independent score vector as a `ScoreFn`."""
    return lambda users: scores.unsqueeze(0).expand(len(users), -1)
