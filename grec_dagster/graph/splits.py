"""Train/valid/test splits of an event log sorted by time.

- `temporal` (the default): two global time cuts at the 80% and 90% quantiles of event
  time. Nothing after a cut is visible before it, which is how a deployed recommender lives.
- `random`: per user, a random 8:1:1 split of that user's events, computed exactly as
  RecBole's `RS` + `RO` + `group_by=user` does (val and test get floor(10%) each, at least
  one when the user has few events), so results compare with RecBole-style published numbers.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field

from grec_dagster.graph.interactions import TEST, TRAIN, VALID

PROTOCOLS = ("temporal", "random")


def temporal_split(ts: pd.Series, ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> np.ndarray:
    """Label events by two global time cuts; events at a cut's exact time go to the later split."""
    seconds = ts.to_numpy("datetime64[us]").astype(np.int64)
    order = np.sort(seconds)
    n = len(order)
    cut_valid = order[min(int(round(ratios[0] * n)), n - 1)]
    cut_test = order[min(int(round((ratios[0] + ratios[1]) * n)), n - 1)]
    labels = np.full(n, TRAIN, dtype=np.uint8)
    labels[seconds >= cut_valid] = VALID
    labels[seconds >= cut_test] = TEST
    return labels


def random_user_split(
    users: pd.Series, seed: int, ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
) -> np.ndarray:
    """Per-user random split with RecBole's counting rule, vectorized over users."""
    codes, _ = pd.factorize(users)
    n = len(codes)
    rng = np.random.default_rng(seed)
    shuffled = np.lexsort((rng.random(n), codes))
    counts = np.bincount(codes)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(n, dtype=np.int64)
    rank[shuffled] = np.arange(n) - np.repeat(starts, counts)

    n_valid = np.floor(ratios[1] * counts).astype(np.int64)
    n_test = np.floor(ratios[2] * counts).astype(np.int64)
    # RecBole: a part whose share is in (0, 1) gets one event, while the train part keeps more than one.
    for part, ratio in ((n_test, ratios[2]), (n_valid, ratios[1])):
        fractional = (ratio * counts > 0) & (ratio * counts < 1)
        n_train = counts - n_valid - n_test
        grant = fractional & (n_train > 1)
        part[grant] += 1
    n_train = counts - n_valid - n_test

    labels = np.full(n, TRAIN, dtype=np.uint8)
    labels[rank >= n_train[codes]] = VALID
    labels[rank >= n_train[codes] + n_valid[codes]] = TEST
    return labels


PROFILE_SHARE = 0.5
"""LLM profiles read the first half of the training period; models fuse them only after it."""


def profile_cut(first: pd.Timestamp, last: pd.Timestamp, share: float = PROFILE_SHARE) -> pd.Timestamp:
    """When profiles are written, as a share of the training period [first, last] of event times.

    A profile summarizes training events before the cut, and a model may use it only for
    predictions at or after the cut: had the LLM read a user's whole training history, a model
    learning from that profile on a training event would read a summary of the very event it
    predicts (and of later ones). Validation and test predictions read only training events
    through it, so they may use it at any time. A time share, not an event quantile, so adding a
    few events inside the period does not move the cut for everyone.
    """
    return first + share * (last - first)


def split_labels(interactions: pd.DataFrame, protocol: str, seed: int = 0) -> np.ndarray:
    if protocol == "temporal":
        return temporal_split(interactions["ts"])
    if protocol == "random":
        return random_user_split(interactions["user_id"], seed)
    raise ValueError(f"unknown split protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")


class SplitParams(BaseModel):
    protocol: str = Field(default="temporal", description="temporal (global 80/10/10 time cut) | random (per-user 8:1:1)")
    seed: int = Field(default=0, description="Seed of the random protocol.")
