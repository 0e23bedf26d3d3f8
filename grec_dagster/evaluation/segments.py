"""Who and what a metric is about: cold vs warm users, head vs tail vs cold items.

Segments are defined on the training split only, so they say what the model could know:
a cold user or item has no training event; head items are the top 20% of items by training
popularity (among items with any), tail items are the other items with training events.
"""

from __future__ import annotations

import torch

from grec_dagster.graph.interactions import InteractionGraph

HEAD_SHARE = 0.2


def item_segments(graph: InteractionGraph, head_share: float = HEAD_SHARE) -> dict[str, torch.Tensor]:
    return item_segments_from_counts(graph.train_item_counts, head_share)


def item_segments_from_counts(counts: torch.Tensor, head_share: float = HEAD_SHARE) -> dict[str, torch.Tensor]:
    """The item segments from events per item of any period (fusion counts those before each cut)."""
    warm = counts > 0
    n_head = max(1, int(round(head_share * int(warm.sum()))))
    head = torch.zeros(len(counts), dtype=torch.bool)
    head[torch.argsort(counts, descending=True, stable=True)[:n_head]] = True
    head &= warm
    return {"head_items": head, "tail_items": warm & ~head, "cold_items": ~warm}


def user_segments(graph: InteractionGraph) -> dict[str, torch.Tensor]:
    return user_segments_from_counts(graph.train_user_counts)


def user_segments_from_counts(counts: torch.Tensor) -> dict[str, torch.Tensor]:
    warm = counts > 0
    return {"warm_users": warm, "cold_users": ~warm}
