"""A DuckDB table of text embeddings, so each distinct text is encoded once per model.

Encoding is the slow part (hundreds of texts per second on a CPU); the catalog and the
profile facets change little between runs. Rows are keyed by the SHA-256 of the exact text
and the encoder's `model_id`, which changes whenever the vectors would. Lookups and inserts
go through one registered Arrow table each, never one statement per text, and no text is
ever spliced into SQL.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import duckdb
import numpy as np
import pyarrow as pa
import torch

TABLE_DDL = """
CREATE TABLE IF NOT EXISTS text_embeddings (
    text_hash VARCHAR,
    model VARCHAR,
    dim INTEGER,
    vector FLOAT[],
    PRIMARY KEY (text_hash, model)
)
"""


class Encoder(Protocol):
    """What the cache needs from an encoder; `TextEncoder` is one."""

    @property
    def model_id(self) -> str: ...

    @property
    def dim(self) -> int: ...

    def encode(self, texts: list[str]) -> torch.Tensor: ...


@dataclass(frozen=True)
class CacheStats:
    """Counts of distinct texts: encoded by this call vs. found in the table."""

    computed: int
    reused: int


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def embed_with_cache(
    texts: Sequence[str],
    encoder: Encoder,
    con: duckdb.DuckDBPyConnection,
    chunk_size: int = 4096,
) -> tuple[torch.Tensor, CacheStats]:
    """Embeddings [len(texts), dim] in input order, encoding only texts not yet stored.

    Missing texts are encoded and stored `chunk_size` at a time, so an interrupted run
    over a large catalog keeps what it already computed.
    """
    con.execute(TABLE_DDL)
    position: dict[str, int] = {}
    index = [position.setdefault(text, len(position)) for text in texts]
    distinct = list(position)
    hashes = [text_hash(text) for text in distinct]

    vectors = np.empty((len(distinct), encoder.dim), dtype=np.float32)
    found = _load(con, hashes, encoder.model_id, vectors)
    missing = np.flatnonzero(~found)
    for start in range(0, len(missing), chunk_size):
        rows = missing[start : start + chunk_size]
        vectors[rows] = encoder.encode([distinct[i] for i in rows]).numpy()
        _store(con, [hashes[i] for i in rows], encoder.model_id, vectors[rows])

    stats = CacheStats(computed=len(missing), reused=len(distinct) - len(missing))
    return torch.from_numpy(vectors[index]), stats


def _load(con: duckdb.DuckDBPyConnection, hashes: list[str], model_id: str, out: np.ndarray) -> np.ndarray:
    """Fills the rows of `out` whose hash is stored; returns which rows were found."""
    wanted = pa.table({"text_hash": hashes, "position": np.arange(len(hashes), dtype=np.int64)})
    con.register("grec_wanted_hashes", wanted)
    try:
        stored = con.sql(
            "SELECT w.position, e.vector FROM text_embeddings e "
            "JOIN grec_wanted_hashes w USING (text_hash) WHERE e.model = $model",
            params={"model": model_id},
        ).to_arrow_table()
    finally:
        con.unregister("grec_wanted_hashes")
    positions = stored.column("position").to_numpy()
    values = stored.column("vector").combine_chunks().flatten().to_numpy()
    out[positions] = values.reshape(len(positions), out.shape[1])
    found = np.zeros(len(hashes), dtype=bool)
    found[positions] = True
    return found


def _store(con: duckdb.DuckDBPyConnection, hashes: list[str], model_id: str, vectors: np.ndarray) -> None:
    """Appends rows in one statement, without ON CONFLICT (it made inserts ~3x slower): the
    hashes were just found missing, so only a concurrent writer of the same texts can
    collide, and then the primary key makes this fail loudly."""
    count, dim = vectors.shape
    offsets = np.arange(0, (count + 1) * dim, dim, dtype=np.int32)
    lists = pa.ListArray.from_arrays(offsets, vectors.ravel())
    con.register("grec_new_embeddings", pa.table({"text_hash": hashes, "vector": lists}))
    try:
        con.execute(
            "INSERT INTO text_embeddings SELECT text_hash, $model, $dim, vector FROM grec_new_embeddings",
            {"model": model_id, "dim": dim},
        )
    finally:
        con.unregister("grec_new_embeddings")
