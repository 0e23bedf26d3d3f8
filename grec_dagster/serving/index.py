"""The on-disk index `grec recommend` answers from: ids, titles, what each user has already met,
and each tower's arrays, copied once out of the checkpoints and the warehouse.

Building it needs torch, pandas and DuckDB; loading it needs only NumPy, which is what makes a
call fast. The index records the size and modification time of every file it was built from
and is rebuilt when one of them changes, so a retrain shows up on the next call.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from grec_dagster.layout import GRAPH_FILES, LIGHTGCN, MOST_POPULAR_RECENT, POPULARITY, CheckpointLayout
from grec_dagster.serving.blend import DotTower, ItemTower, Pick, Tower, blend
from grec_dagster.storage import atomic_write


@dataclass(frozen=True)
class TowerSource:
    path: Callable[[CheckpointLayout], Path]
    """Where its checkpoint is."""
    arrays: dict[str, tuple[str, str]]
    """Index array -> (tensor in the checkpoint, `users` or `items`: whose rows it has)."""


SOURCES = {
    LIGHTGCN: TowerSource(
        lambda layout: layout.model(LIGHTGCN).checkpoint,
        {"user_embedding": ("user_embedding", "users"), "item_embedding": ("item_embedding", "items")},
    ),
    POPULARITY: TowerSource(
        lambda layout: layout.popularity_scores, {"item_scores": (MOST_POPULAR_RECENT, "items")}
    ),
}
"""The towers `grec recommend` blends."""
WEIGHTS = {LIGHTGCN: 1.0, POPULARITY: 0.5}
"""Fixed blend weights until a fusion stage learns them: collaborative signal first, popularity as a prior."""


@dataclass(frozen=True)
class IndexInputs:
    checkpoints: Path
    warehouse: Path

    @property
    def layout(self) -> CheckpointLayout:
        return CheckpointLayout(self.checkpoints)

    def files(self) -> list[Path]:
        graph = [self.layout.interaction_graph / name for name in GRAPH_FILES]
        return [*graph, *(tower.path(self.layout) for tower in SOURCES.values()), self.warehouse]


@dataclass
class ServingIndex:
    user_ids: np.ndarray
    item_ids: np.ndarray
    titles: np.ndarray
    seen_ptr: np.ndarray
    """User u has met items `seen_items[seen_ptr[u]:seen_ptr[u + 1]]` (any split)."""
    seen_items: np.ndarray
    towers: list[Tower]
    notes: list[str]
    """Why a tower was left out (a checkpoint older than the graph, say)."""

    def user(self, user_id: str) -> int | None:
        hits = np.flatnonzero(self.user_ids == user_id)
        return int(hits[0]) if len(hits) else None

    def recommend(self, user_id: str, k: int) -> list[Pick]:
        """The `k` best items `user_id` has not met yet; an unknown user gets what needs no history."""
        user = self.user(user_id)
        seen = self.seen_items[self.seen_ptr[user] : self.seen_ptr[user + 1]] if user is not None else []
        return blend(self.towers, WEIGHTS, user, seen, k)


def load_index(inputs: IndexInputs, cache: Path) -> ServingIndex:
    """The index at `cache` if it was built from the current files, else a fresh one written there."""
    stamp = _stamp(inputs.files())
    if cache.exists():
        with np.load(cache) as stored:
            if str(stored["stamp"]) == stamp:
                return _from_arrays(stored)
    arrays = _build_arrays(inputs) | {"stamp": np.array(stamp)}
    atomic_write(cache, lambda partial: _save_npz(partial, arrays))
    return _from_arrays(arrays)


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as handle:  # a file handle: given a path, NumPy would add its own suffix
        np.savez(handle, **arrays)


def _stamp(files: list[Path]) -> str:
    def one(path: Path) -> list:
        try:
            status = path.stat()
        except FileNotFoundError:
            return [str(path), None, None]
        return [str(path), status.st_size, status.st_mtime_ns]

    return json.dumps([one(path) for path in files])


def _from_arrays(arrays) -> ServingIndex:
    towers: list[Tower] = []
    for name in SOURCES:
        if f"{name}/item_embedding" in arrays:
            towers.append(DotTower(name, arrays[f"{name}/user_embedding"], arrays[f"{name}/item_embedding"]))
        elif f"{name}/item_scores" in arrays:
            towers.append(ItemTower(name, arrays[f"{name}/item_scores"]))
    return ServingIndex(
        user_ids=arrays["user_ids"],
        item_ids=arrays["item_ids"],
        titles=arrays["titles"],
        seen_ptr=arrays["seen_ptr"],
        seen_items=arrays["seen_items"],
        towers=towers,
        notes=[str(note) for note in arrays["notes"]],
    )


def _build_arrays(inputs: IndexInputs) -> dict[str, np.ndarray]:
    """Everything the index holds, read with the same loaders the assets use."""
    from grec_dagster.graph.interactions import InteractionGraph

    folder = inputs.layout.interaction_graph
    if not folder.exists():
        raise FileNotFoundError(f"no interaction graph in {folder}: materialize interaction_graph first")
    graph = InteractionGraph.load(folder)
    pairs = np.unique(graph.users.numpy() * graph.n_items + graph.items.numpy())
    titles, why = _titles(inputs.warehouse, graph.item_ids.astype(str))
    arrays = {
        "user_ids": graph.user_ids.astype(str),
        "item_ids": graph.item_ids.astype(str),
        "titles": titles,
        "seen_ptr": np.searchsorted(pairs // graph.n_items, np.arange(graph.n_users + 1)),
        "seen_items": pairs % graph.n_items,
    }
    notes, towers = [f"titles: {why}"] if why else [], 0
    for name, tower in SOURCES.items():
        found, why = _tower_arrays(tower.path(inputs.layout), tower, {"users": graph.n_users, "items": graph.n_items})
        arrays |= {f"{name}/{key}": value for key, value in found.items()}
        notes += [f"{name}: {why}"] if why else []
        towers += bool(found)
    if not towers:
        raise FileNotFoundError("no tower to score with: " + "; ".join(notes))
    return arrays | {"notes": np.array(notes, dtype=str)}


def _tower_arrays(path: Path, tower: TowerSource, rows: dict[str, int]) -> tuple[dict[str, np.ndarray], str | None]:
    """A tower's arrays, or none and why: missing, or shaped for another graph (trained before it changed)."""
    from grec_dagster.storage import load_tensors

    if not path.exists():
        return {}, f"no checkpoint at {path}: materialize it"
    tensors, _ = load_tensors(path)
    arrays = {}
    for key, (tensor, side) in tower.arrays.items():
        arrays[key] = tensors[tensor].numpy()
        if len(arrays[key]) != rows[side]:
            return {}, f"{tensor} has {len(arrays[key])} rows, the graph {rows[side]} {side}: materialize it again"
    return arrays, None


def _titles(warehouse: Path, item_ids: np.ndarray) -> tuple[np.ndarray, str | None]:
    """Each item's title from the `items` table (its id where there is none), or the ids and why.

    A pipeline writing the warehouse holds its lock; the ids stand in until its write changes the
    file, which rebuilds the index on the next call.
    """
    import duckdb

    try:
        with duckdb.connect(str(warehouse), read_only=True) as con:
            rows = con.execute("SELECT CAST(item_id AS VARCHAR), title FROM items WHERE title IS NOT NULL").fetchall()
    except duckdb.Error as error:
        return item_ids, f"item ids shown: no titles from {warehouse} ({str(error).splitlines()[0]})"
    titles = dict(rows)
    return np.array([titles.get(item, item) for item in item_ids], dtype=str), None
