"""Blending towers into one ranking, and saying which tower drove each pick.

A tower scores every item for a user (or abstains for a user it has never seen). Scores of
different towers live on different scales (dot products, event counts), so each is
standardized over the items before weighting; an item's blended score is the sum of the
weighted standardized scores, and the tower with the largest share of it drove the pick.
A fusion stage can bring its own tower here, or replace the blend with its stored picks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
from numpy.typing import ArrayLike


class Tower(Protocol):
    name: str

    def scores(self, user: int | None) -> np.ndarray | None:
        """One score per item (higher is better) for dense user `user`, or None to abstain."""


@dataclass(frozen=True)
class DotTower:
    """Embedding towers (LightGCN, GraphSAGE, ...): score = user vector . item vector."""

    name: str
    user_embedding: np.ndarray
    item_embedding: np.ndarray

    def scores(self, user: int | None) -> np.ndarray | None:
        return None if user is None else self.item_embedding @ self.user_embedding[user]


@dataclass(frozen=True)
class ItemTower:
    """User-independent scores (popularity): the same for everyone, so it answers unknown users too."""

    name: str
    item_scores: np.ndarray

    def scores(self, user: int | None) -> np.ndarray | None:
        return self.item_scores


@dataclass(frozen=True)
class Pick:
    item: int
    score: float
    tower: str
    """The tower whose weighted share of `score` is largest."""
    shares: dict[str, float]


def blend(towers: list[Tower], weights: dict[str, float], user: int | None, exclude: ArrayLike, k: int) -> list[Pick]:
    """The `k` best items for `user` by the weighted sum of standardized tower scores, `exclude` left out."""
    names, shares = [], []
    for tower in towers:
        scores = tower.scores(user)
        if scores is None or weights.get(tower.name, 0.0) == 0.0:
            continue
        spread = scores.std()
        names.append(tower.name)
        shares.append(weights[tower.name] * (scores - scores.mean()) / (spread if spread > 0 else 1.0))
    if not shares:
        raise ValueError("no tower can score this user")
    share_matrix = np.stack(shares)
    total = share_matrix.sum(axis=0)
    total[np.asarray(exclude, dtype=np.int64)] = -np.inf
    k = min(k, int(np.isfinite(total).sum()))
    top = np.argpartition(-total, k - 1)[:k] if k else np.array([], dtype=np.int64)
    top = top[np.argsort(-total[top], kind="stable")]
    return [
        Pick(
            item=int(item),
            score=float(total[item]),
            tower=names[int(share_matrix[:, item].argmax())],
            shares={name: float(share_matrix[row, item]) for row, name in enumerate(names)},
        )
        for item in top
    ]
