"""Popularity baselines: the bar every learned model has to clear.

- most popular: training events per item.
- most popular recent: training events per item within the last `recent_share` of the
  training period, so items that are hot right before the cut rank first (ties broken by
  all-time popularity).
"""

from __future__ import annotations

import torch

from grec_dagster.graph.interactions import TRAIN, InteractionGraph

RECENT_SHARE = 0.1


def most_popular(graph: InteractionGraph) -> torch.Tensor:
    return graph.train_item_counts.float()


def most_popular_recent(graph: InteractionGraph, recent_share: float = RECENT_SHARE) -> torch.Tensor:
    _, items, ts = graph.edges(TRAIN)
    start, end = int(ts.min()), int(ts.max())
    recent = ts >= end - recent_share * (end - start)
    counts = torch.bincount(items[recent], minlength=graph.n_items).float()
    tie_break = most_popular(graph) / (most_popular(graph).max() + 1.0)
    return counts + tie_break


def broadcast_scores(scores: torch.Tensor):
    """A user-independent score vector as a `ScoreFn`."""
    return lambda users: scores.unsqueeze(0).expand(len(users), -1)
