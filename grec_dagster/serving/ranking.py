"""One ranking for one user from what a model learned, each pick with the tower that drove it.

A model serves either scores (a tower alone: one score per item) or picks (the gated fusion: the
top items `recommendations` stored, each credited to the tower whose gated contribution was
largest). Both become the same `Pick`s, so `grec recommend` prints every model alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
from numpy.typing import ArrayLike


class Tower(Protocol):
    name: str

    def scores(self, user: int) -> np.ndarray:
        """One score per item (higher is better) for dense user `user`."""


@dataclass(frozen=True)
class DotTower:
    """Embedding towers (LightGCN, GraphSAGE, ...): score = user vector . item vector."""

    name: str
    user_embedding: np.ndarray
    item_embedding: np.ndarray

    def scores(self, user: int) -> np.ndarray:
        return self.item_embedding @ self.user_embedding[user]


@dataclass(frozen=True)
class ItemTower:
    """User-independent scores (recent popularity): the same for everyone, so it answers anyone."""

    name: str
    item_scores: np.ndarray

    def scores(self, user: int) -> np.ndarray:
        return self.item_scores


@dataclass(frozen=True)
class Pick:
    item: int
    score: float
    tower: str
    """The tower that drove the pick: the tower itself when it ranks alone."""


def top_items(scores: np.ndarray, exclude: ArrayLike, k: int, tower: str) -> list[Pick]:
    """The `k` best-scored items, `exclude` left out, best first (ties by item order)."""
    ranked = np.asarray(scores, dtype=np.float64).copy()
    ranked[np.asarray(exclude, dtype=np.int64)] = -np.inf
    k = min(k, int(np.isfinite(ranked).sum()))
    top = np.argpartition(-ranked, k - 1)[:k] if k else np.array([], dtype=np.int64)
    top = top[np.lexsort((top, -ranked[top]))]
    return [Pick(int(item), float(ranked[item]), tower) for item in top]


def stored_picks(items: np.ndarray, scores: np.ndarray, towers: np.ndarray, names: np.ndarray, k: int) -> list[Pick]:
    """The first `k` of one user's stored picks (padding, item -1, left out)."""
    kept = np.flatnonzero(items >= 0)[:k]
    return [Pick(int(items[i]), float(scores[i]), str(names[towers[i]])) for i in kept]
