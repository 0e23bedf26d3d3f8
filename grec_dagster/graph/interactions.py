"""The interaction graph: dense ids, time-stamped user-item edges, and each edge's split.

Dense integer ids are assigned here and saved with the graph, so every checkpoint and
embedding trained on it can be mapped back to the source's user and item ids.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from grec_dagster.layout import GRAPH_FILES
from grec_dagster.storage import atomic_write, write_json

TRAIN, VALID, TEST = 0, 1, 2
SPLIT_NAMES = {TRAIN: "train", VALID: "valid", TEST: "test"}
EDGES, USER_IDS, ITEM_IDS, META = GRAPH_FILES


def known_before(split: int) -> tuple[int, ...]:
    """The splits whose events have happened when `split` is ranked: train for valid, train and
    valid for test. What a model may read at that cut, and what the evaluator excludes as seen."""
    return tuple(earlier for earlier in (TRAIN, VALID) if earlier < split)


@dataclass
class InteractionGraph:
    """Edges are events (a user may meet an item more than once); `split` marks train/valid/test."""

    user_ids: np.ndarray
    item_ids: np.ndarray
    users: torch.Tensor
    items: torch.Tensor
    ts: torch.Tensor
    split: torch.Tensor
    protocol: str
    seed: int = 0
    """The split seed (the random protocol's; the temporal split has none to vary)."""

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def edges(self, *splits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(users, items, ts) of the events in the given splits, in time order."""
        mask = torch.isin(self.split, torch.tensor(splits, dtype=self.split.dtype))
        return self.users[mask], self.items[mask], self.ts[mask]

    def pairs(self, *splits: int) -> torch.Tensor:
        """Distinct (user, item) pairs of the given splits as one int64 key `user * n_items + item`, sorted."""
        users, items, _ = self.edges(*splits)
        return torch.unique(users * self.n_items + items)

    @cached_property
    def train_item_counts(self) -> torch.Tensor:
        users, items, _ = self.edges(TRAIN)
        return torch.bincount(items, minlength=self.n_items)

    @cached_property
    def train_user_counts(self) -> torch.Tensor:
        users, _, _ = self.edges(TRAIN)
        return torch.bincount(users, minlength=self.n_users)

    def fingerprint(self) -> str:
        """Changes whenever the events, their ids or their split change; keys resumable training state."""
        digest = hashlib.sha256(self.protocol.encode())
        for tensor in (self.users, self.items, self.ts, self.split):
            digest.update(tensor.numpy().tobytes())
        digest.update("\x1f".join(map(str, self.user_ids)).encode())
        digest.update("\x1f".join(map(str, self.item_ids)).encode())
        return digest.hexdigest()[:16]

    def save(self, folder: Path) -> None:
        """Tensors in safetensors, ids in Parquet; each written under a temporary name then renamed."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {"users": self.users, "items": self.items, "ts": self.ts, "split": self.split}
        atomic_write(folder / EDGES, lambda p: save_file(tensors, p, metadata={"protocol": self.protocol}))
        atomic_write(folder / USER_IDS, lambda p: pd.DataFrame({"user_id": self.user_ids}).to_parquet(p))
        atomic_write(folder / ITEM_IDS, lambda p: pd.DataFrame({"item_id": self.item_ids}).to_parquet(p))
        meta = {"protocol": self.protocol, "seed": self.seed, "n_users": self.n_users, "n_items": self.n_items}
        write_json(folder / META, meta)

    @classmethod
    def load(cls, folder: Path) -> InteractionGraph:
        folder = Path(folder)
        tensors = load_file(folder / EDGES)
        meta = json.loads((folder / META).read_text())
        return cls(
            user_ids=pd.read_parquet(folder / USER_IDS)["user_id"].to_numpy(dtype=object),
            item_ids=pd.read_parquet(folder / ITEM_IDS)["item_id"].to_numpy(dtype=object),
            users=tensors["users"],
            items=tensors["items"],
            ts=tensors["ts"],
            split=tensors["split"],
            protocol=meta["protocol"],
            seed=meta.get("seed", 0),  # graphs saved before the seed was recorded
        )


def encode_ids(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Dense codes in order of first appearance in time, and the id each code stands for."""
    codes, uniques = pd.factorize(values, sort=False)
    return codes.astype(np.int64), np.asarray(uniques, dtype=object)


def build_graph(interactions: pd.DataFrame, split: np.ndarray, protocol: str, seed: int = 0) -> InteractionGraph:
    """Assemble the graph from a log sorted by time and its per-event split labels."""
    user_codes, user_ids = encode_ids(interactions["user_id"])
    item_codes, item_ids = encode_ids(interactions["item_id"])
    seconds = interactions["ts"].to_numpy("datetime64[s]").astype(np.int64)
    return InteractionGraph(
        user_ids=user_ids,
        item_ids=item_ids,
        users=torch.from_numpy(user_codes),
        items=torch.from_numpy(item_codes),
        ts=torch.from_numpy(seconds),
        split=torch.from_numpy(split.astype(np.uint8)),
        protocol=protocol,
        seed=seed,
    )
