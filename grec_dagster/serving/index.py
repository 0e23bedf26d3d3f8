"""The on-disk index `grec recommend` answers from: ids, titles, what each user has already met,
the gated fusion's stored picks, and every tower's arrays, copied once out of the checkpoints
and the warehouse.

What is served is what was learned: by default the gated fusion's picks as the `recommendations`
asset stored them (the fusion `fusion_checkpoint` fit, scored at the test cut by its own
`top_picks`, each pick credited to its driving tower); any single tower on request, scored from
its checkpoint. A user the model cannot speak for gets the evaluation's cold-start rule
(`models/towers.with_cold_start`), never an untrained vector: a user with no event before the test
cut, or unknown to the graph, is ranked by recent popularity. (The gated fusion speaks for every
user of the graph: its cold-user gates are its cold-start rule.)

Building it needs torch, pandas and DuckDB; loading it needs only NumPy, which is what makes a
call fast. The index records the size and modification time of every file it was built from
and is rebuilt when one of them changes, so a retrain shows up on the next call.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from grec_dagster.layout import (
    GATED_FUSION,
    GRAPH_FILES,
    MOST_POPULAR_RECENT,
    POPULARITY,
    TOWERS,
    CheckpointLayout,
    Scorer,
)
from grec_dagster.serving.ranking import DotTower, ItemTower, Pick, Tower, stored_picks, top_items
from grec_dagster.storage import atomic_write

if TYPE_CHECKING:
    from grec_dagster.graph.interactions import InteractionGraph  # torch: imported only to build the index

COLD_START = f"cold-start:{MOST_POPULAR_RECENT}"
"""The tower named on a pick the cold-start rule made."""


@dataclass(frozen=True)
class IndexInputs:
    checkpoints: Path
    warehouse: Path

    @property
    def layout(self) -> CheckpointLayout:
        return CheckpointLayout(self.checkpoints)

    def files(self) -> list[Path]:
        graph = [self.layout.interaction_graph / name for name in GRAPH_FILES]
        return [*graph, *(_tower_file(self.layout, name) for name in TOWERS), self.layout.recommendations, self.warehouse]


@dataclass(frozen=True)
class Recommendation:
    picks: list[Pick]
    rule: str | None
    """Why the model did not rank this user itself (the cold-start rule), or None."""


@dataclass
class ServingIndex:
    user_ids: np.ndarray
    item_ids: np.ndarray
    titles: np.ndarray
    seen_ptr: np.ndarray
    """User u has met items `seen_items[seen_ptr[u]:seen_ptr[u + 1]]` (any split)."""
    seen_items: np.ndarray
    known: np.ndarray
    """Whether each user has an event before the test cut, as the towers' checkpoints know them."""
    towers: dict[str, Tower]
    fusion: dict[str, np.ndarray]
    """The gated fusion's picks per user (`items`, `scores`, `towers` codes into `tower_names`); empty before it ran."""
    notes: list[str]
    """Why a model was left out (a checkpoint older than the graph, say)."""

    def user(self, user_id: str) -> int | None:
        hits = np.flatnonzero(self.user_ids == user_id)
        return int(hits[0]) if len(hits) else None

    def models(self) -> list[str]:
        """The models this index can serve, the default first."""
        return ([GATED_FUSION] if self.fusion else []) + list(self.towers)

    def recommend(self, user_id: str, k: int, model: str = GATED_FUSION) -> Recommendation:
        """The `k` best items `user_id` has not met yet, by `model`, or by the cold-start rule."""
        if model not in self.models():
            raise KeyError(f"cannot serve {model!r} here; available: {', '.join(self.models())}")
        user = self.user(user_id)
        if user is None:
            return self._cold_start([], k, "unknown user: items that need no history")
        seen = self.seen_items[self.seen_ptr[user] : self.seen_ptr[user + 1]]
        if model == GATED_FUSION:
            fusion = self.fusion
            return Recommendation(
                stored_picks(fusion["items"][user], fusion["scores"][user], fusion["towers"][user], fusion["tower_names"], k),
                None,
            )
        tower = self.towers[model]
        if not isinstance(tower, ItemTower) and not self.known[user]:
            return self._cold_start(seen, k, "no event before the test cut: recent popularity, the cold-start rule")
        return Recommendation(top_items(tower.scores(user), seen, k, model), None)

    def _cold_start(self, seen: np.ndarray | list, k: int, why: str) -> Recommendation:
        popular = self.towers[POPULARITY]
        return Recommendation(top_items(popular.scores(0), seen, k, COLD_START), why)


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
    towers: dict[str, Tower] = {}
    for name in TOWERS:
        if f"{name}/item_embedding" in arrays:
            towers[name] = DotTower(name, arrays[f"{name}/user_embedding"], arrays[f"{name}/item_embedding"])
        elif f"{name}/item_scores" in arrays:
            towers[name] = ItemTower(name, arrays[f"{name}/item_scores"])
    fusion = {key.split("/", 1)[1]: arrays[key] for key in arrays if key.startswith(f"{GATED_FUSION}/")}
    return ServingIndex(
        user_ids=arrays["user_ids"],
        item_ids=arrays["item_ids"],
        titles=arrays["titles"],
        seen_ptr=arrays["seen_ptr"],
        seen_items=arrays["seen_items"],
        known=arrays["known"],
        towers=towers,
        fusion=fusion,
        notes=[str(note) for note in arrays["notes"]],
    )


def _build_arrays(inputs: IndexInputs) -> dict[str, np.ndarray]:
    """Everything the index holds, read with the same loaders the assets use."""
    from grec_dagster.graph.interactions import TEST, InteractionGraph, known_before

    folder = inputs.layout.interaction_graph
    if not folder.exists():
        raise FileNotFoundError(f"no interaction graph in {folder}: materialize interaction_graph first")
    graph = InteractionGraph.load(folder)
    pairs = np.unique(graph.users.numpy() * graph.n_items + graph.items.numpy())
    known_users, _, _ = graph.edges(*known_before(TEST))
    known = np.zeros(graph.n_users, dtype=bool)
    known[known_users.numpy()] = True
    titles, why = _titles(inputs.warehouse, graph.item_ids.astype(str))
    arrays = {
        "user_ids": graph.user_ids.astype(str),
        "item_ids": graph.item_ids.astype(str),
        "titles": titles,
        "seen_ptr": np.searchsorted(pairs // graph.n_items, np.arange(graph.n_users + 1)),
        "seen_items": pairs % graph.n_items,
        "known": known,
    }
    notes = [f"titles: {why}"] if why else []
    rows = {"users": graph.n_users, "items": graph.n_items}
    for name in TOWERS:
        found, why = _tower_arrays(inputs.layout, name, rows)
        arrays |= {f"{name}/{key}": value for key, value in found.items()}
        notes += [f"{name}: {why}"] if why else []
    if f"{POPULARITY}/item_scores" not in arrays:
        raise FileNotFoundError("no popularity scores for the cold-start rule: " + "; ".join(notes))
    found, why = _fusion_arrays(inputs.layout.recommendations, graph)
    arrays |= {f"{GATED_FUSION}/{key}": value for key, value in found.items()}
    notes += [f"{GATED_FUSION}: {why}"] if why else []
    return arrays | {"notes": np.array(notes, dtype=str)}


def _tower_file(layout: CheckpointLayout, name: str) -> Path:
    return layout.popularity_scores if TOWERS[name].scorer == Scorer.RECENT_POPULARITY else layout.model(name).checkpoint


def _tower_arrays(layout: CheckpointLayout, name: str, rows: dict[str, int]) -> tuple[dict[str, np.ndarray], str | None]:
    """A tower's arrays, or none and why: missing, or shaped for another graph (trained before it changed)."""
    from grec_dagster.storage import load_tensors

    path = _tower_file(layout, name)
    if not path.exists():
        return {}, f"no checkpoint at {path}: materialize {TOWERS[name].asset}"
    tensors, _ = load_tensors(path)
    wanted = (
        {"item_scores": (MOST_POPULAR_RECENT, "items")}
        if TOWERS[name].scorer == Scorer.RECENT_POPULARITY
        else {"user_embedding": ("user_embedding", "users"), "item_embedding": ("item_embedding", "items")}
    )
    arrays = {}
    for key, (tensor, side) in wanted.items():
        arrays[key] = tensors[tensor].float().numpy()
        if len(arrays[key]) != rows[side]:
            return {}, f"{tensor} has {len(arrays[key])} rows, the graph {rows[side]} {side}: materialize it again"
    return arrays, None


def _fusion_arrays(path: Path, graph: InteractionGraph) -> tuple[dict[str, np.ndarray], str | None]:
    """The stored picks as [users, k] arrays in the graph's user order (item -1 where a user has fewer)."""
    import pandas as pd

    if not path.exists():
        return {}, f"no picks at {path}: materialize recommendations"
    picks = pd.read_parquet(path)
    users = pd.Index(graph.user_ids.astype(str)).get_indexer(picks["user_id"].astype(str))
    items = pd.Index(graph.item_ids.astype(str)).get_indexer(picks["item_id"].astype(str))
    if (users < 0).any() or (items < 0).any():
        return {}, "its picks name users or items the graph does not have: materialize recommendations again"
    names, codes = np.unique(picks["tower"].astype(str).to_numpy(), return_inverse=True)
    k = int(picks["rank"].max())
    arrays = {
        "items": np.full((graph.n_users, k), -1, dtype=np.int64),
        "scores": np.full((graph.n_users, k), -np.inf),
        "towers": np.zeros((graph.n_users, k), dtype=np.int64),
    }
    column = picks["rank"].to_numpy() - 1
    arrays["items"][users, column] = items
    arrays["scores"][users, column] = picks["score"].to_numpy()
    arrays["towers"][users, column] = codes
    return arrays | {"tower_names": names.astype(str)}, None


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
