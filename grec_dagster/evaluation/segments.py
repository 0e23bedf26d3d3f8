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
    counts = graph.train_item_counts
    warm = counts > 0
    n_head = max(1, int(round(head_share * int(warm.sum()))))
    head = torch.zeros(graph.n_items, dtype=torch.bool)
    head[torch.argsort(counts, descending=True, stable=True)[:n_head]] = True
    head &= warm
    return {"head_items": head, "tail_items": warm & ~head, "cold_items": ~warm}


def user_segments(graph: InteractionGraph) -> dict[str, torch.Tensor]:
    warm = graph.train_user_counts > 0
    return {"warm_users": warm, "cold_users": ~warm}
