"""Node features from the catalog and user tables, aligned with a graph's dense ids.

Inductive models (GraphSAGE, the temporal attention model) need features to embed a node
they never saw in training. Items: multi-hot categories, one-hot brand, log price and hashed
title words. Users: one-hot categorical attributes and standardized numeric ones. Nodes the
tables do not describe get all-zero features (plus a flag saying so).
"""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pandas as pd
import torch

from grec_dagster.data.schema import CATEGORY_SEPARATOR

TITLE_BUCKETS = 128
MAX_LEVELS = 50
"""Categorical attributes keep their most frequent levels; the rest share one 'other' column."""


def _align(frame: pd.DataFrame, key: str, ids: np.ndarray) -> pd.DataFrame:
    """Rows of `frame` in the order of `ids`; ids the table lacks become all-NULL rows."""
    deduplicated = frame.drop_duplicates(key, keep="last").set_index(key)
    return deduplicated.reindex(pd.Index(ids.astype(str), name=key))


def _one_hot(values: pd.Series, max_levels: int = MAX_LEVELS) -> np.ndarray:
    text = values.astype("string")
    levels = text.value_counts().index[:max_levels]
    codes = pd.Categorical(text, categories=levels).codes
    out = np.zeros((len(values), len(levels) + 1), dtype=np.float32)
    known = codes >= 0
    out[np.nonzero(known)[0], codes[known]] = 1.0
    out[~known & text.notna().to_numpy(), len(levels)] = 1.0
    return out


def _multi_hot(values: pd.Series) -> np.ndarray:
    lists = values.astype("string").fillna("").str.split(CATEGORY_SEPARATOR)
    exploded = lists.explode()
    exploded = exploded[exploded != ""]
    levels = pd.Index(exploded.value_counts().index[:MAX_LEVELS])
    out = np.zeros((len(values), len(levels)), dtype=np.float32)
    rows = exploded.index.to_numpy()
    cols = levels.get_indexer(exploded.to_numpy())
    keep = cols >= 0
    out[rows[keep], cols[keep]] = 1.0
    return out


def _standardized(values: pd.Series) -> np.ndarray:
    numbers = pd.to_numeric(values, errors="coerce").astype("float64")
    filled = numbers.fillna(numbers.median() if numbers.notna().any() else 0.0)
    spread = filled.std() or 1.0
    return ((filled - filled.mean()) / spread).to_numpy(np.float32)[:, None]


def _hashed_words(titles: pd.Series, buckets: int = TITLE_BUCKETS) -> np.ndarray:
    """Bag of title words in `buckets` columns (stable hashing, so features survive restarts)."""
    out = np.zeros((len(titles), buckets), dtype=np.float32)
    for row, title in enumerate(titles.astype("string").fillna("")):
        for word in re.findall(r"[a-z0-9]+", title.lower()):
            out[row, int(hashlib.md5(word.encode()).hexdigest()[:8], 16) % buckets] += 1.0
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.maximum(norms, 1.0)


def item_features(items: pd.DataFrame, item_ids: np.ndarray) -> torch.Tensor:
    aligned = _align(items, "item_id", item_ids).reset_index()
    described = aligned["title"].notna().to_numpy(np.float32)[:, None]
    parts = [described, _multi_hot(aligned["category"]), _one_hot(aligned["brand"]), _hashed_words(aligned["title"])]
    if aligned["price"].notna().any():
        parts.append(_standardized(np.log1p(pd.to_numeric(aligned["price"], errors="coerce").clip(lower=0))))
    return torch.from_numpy(np.concatenate(parts, axis=1))


def user_features(users: pd.DataFrame, user_ids: np.ndarray) -> torch.Tensor:
    aligned = _align(users, "user_id", user_ids).reset_index()
    attributes = [c for c in aligned.columns if c != "user_id"]
    described = aligned[attributes].notna().any(axis=1).to_numpy(np.float32)[:, None] if attributes else None
    parts = [described] if described is not None else [np.zeros((len(aligned), 1), np.float32)]
    for column in attributes:
        numeric = pd.to_numeric(aligned[column], errors="coerce")
        if numeric.notna().sum() == aligned[column].notna().sum() and aligned[column].notna().any():
            parts.append(_standardized(numeric))
        elif aligned[column].nunique() <= MAX_LEVELS * 20:
            parts.append(_one_hot(aligned[column]))
    return torch.from_numpy(np.concatenate(parts, axis=1))
