"""The continuous-time dynamic graph temporal models read: events in time order, node
features, and time-sorted adjacency both ways (user -> items, item -> users).

An event is an edge (user, item, t). Neighbors are looked up through `TemporalCSR`, so a
query at time t reaches only events strictly before t. `history_before(split)` keeps the
events a model may know when ranking a split (train for valid, train + valid for test):
under the temporal protocol that is exactly "everything before the cut", and under the
random protocol, where splits interleave in time, it is what keeps held-out events unseen.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from torch import Tensor

from grec_dagster.graph.csr import TemporalCSR
from grec_dagster.graph.interactions import InteractionGraph, known_before
from grec_dagster.storage import load_tensors, save_tensors

USER, ITEM = 0, 1
"""Node sides; a user's neighbors are items and an item's are users."""
_CSR_FIELDS = tuple(field.name for field in fields(TemporalCSR))


@dataclass(frozen=True)
class TemporalGraph:
    """Events (`users`, `items`, `ts` in epoch seconds, `split`) sorted by time, with node features.

    In both CSRs `edge_id` is the event's position in the event tensors.
    """

    users: Tensor
    items: Tensor
    ts: Tensor
    split: Tensor
    user_features: Tensor
    item_features: Tensor
    user_csr: TemporalCSR
    item_csr: TemporalCSR
    source_fingerprint: str
    """Fingerprint of the `InteractionGraph` it was built from, so a stale graph is caught."""

    @property
    def n_users(self) -> int:
        return self.user_features.shape[0]

    @property
    def n_items(self) -> int:
        return self.item_features.shape[0]

    def fingerprint(self) -> str:
        """Changes with the events (through the source graph's fingerprint) or the features."""
        digest = hashlib.sha256(self.source_fingerprint.encode())
        for tensor in (self.user_features, self.item_features):
            digest.update(tensor.numpy().tobytes())
        return digest.hexdigest()[:16]

    def csr(self, side: int) -> TemporalCSR:
        """Adjacency of the nodes on `side`: a user's items, or an item's users."""
        return self.user_csr if side == USER else self.item_csr

    def restrict(self, *splits: int) -> TemporalGraph:
        """The same nodes and features with only the events of `splits`."""
        keep = torch.isin(self.split, torch.tensor(splits, dtype=self.split.dtype))
        return _assemble(
            self.users[keep],
            self.items[keep],
            self.ts[keep],
            self.split[keep],
            self.user_features,
            self.item_features,
            self.source_fingerprint,
        )

    def history_before(self, split: int) -> TemporalGraph:
        return self.restrict(*known_before(split))

    def cut_time(self, split: int) -> int:
        """When `split` is ranked: its first event (the temporal cut), yet after all of its history.

        Under the temporal protocol every history event precedes the cut; under the random
        one the second term moves the ranking to just after the last history event.
        """
        first = int(self.ts[self.split == split].min())
        history = self.history_before(split).ts
        return max(first, int(history.max()) + 1) if history.numel() else first

    def save(self, path: Path) -> None:
        tensors = {
            "users": self.users,
            "items": self.items,
            "ts": self.ts,
            "split": self.split,
            "user_features": self.user_features,
            "item_features": self.item_features,
        }
        for prefix, csr in (("user_csr", self.user_csr), ("item_csr", self.item_csr)):
            tensors |= {f"{prefix}.{name}": getattr(csr, name) for name in _CSR_FIELDS}
        save_tensors(path, tensors, {"source_fingerprint": self.source_fingerprint})

    @classmethod
    def load(cls, path: Path) -> TemporalGraph:
        tensors, meta = load_tensors(path)
        csrs = {
            prefix: TemporalCSR(**{name: tensors[f"{prefix}.{name}"] for name in _CSR_FIELDS})
            for prefix in ("user_csr", "item_csr")
        }
        plain = {name: tensors[name] for name in ("users", "items", "ts", "split", "user_features", "item_features")}
        return cls(**plain, **csrs, source_fingerprint=meta["source_fingerprint"])


def _assemble(
    users: Tensor,
    items: Tensor,
    ts: Tensor,
    split: Tensor,
    user_features: Tensor,
    item_features: Tensor,
    source_fingerprint: str,
) -> TemporalGraph:
    return TemporalGraph(
        users=users,
        items=items,
        ts=ts,
        split=split,
        user_features=user_features,
        item_features=item_features,
        user_csr=TemporalCSR.from_edges(users, items, user_features.shape[0], time=ts),
        item_csr=TemporalCSR.from_edges(items, users, item_features.shape[0], time=ts),
        source_fingerprint=source_fingerprint,
    )


def build_temporal_graph(graph: InteractionGraph, user_features: Tensor, item_features: Tensor) -> TemporalGraph:
    """The graph's events in time order (a stable sort: ties keep the log's order) with features."""
    if user_features.shape[0] != graph.n_users or item_features.shape[0] != graph.n_items:
        raise ValueError(
            f"features cover {user_features.shape[0]} users and {item_features.shape[0]} items, "
            f"the graph has {graph.n_users} and {graph.n_items}"
        )
    order = torch.sort(graph.ts, stable=True).indices
    return _assemble(
        graph.users[order],
        graph.items[order],
        graph.ts[order],
        graph.split[order],
        user_features,
        item_features,
        graph.fingerprint(),
    )


def chronological_batches(ts: Tensor, size: int) -> list[tuple[int, int]]:
    """`[start, end)` ranges of at most `size` events over sorted `ts`, cut only where the time changes.

    No timestamp spans two batches, so a state updated after a batch holds only events strictly
    before every event of the next one. A timestamp with more than `size` events is a batch of its own.
    """
    if size < 1:
        raise ValueError("batch size must be positive")
    batches: list[tuple[int, int]] = []
    start, n = 0, ts.numel()
    while start < n:
        end = start + size
        if end < n:
            end = int(torch.searchsorted(ts, ts[end], side="left"))  # back to the first event of that time
            if end == start:
                end = int(torch.searchsorted(ts, ts[start], side="right"))
        batches.append((start, min(end, n)))
        start = min(end, n)
    return batches
