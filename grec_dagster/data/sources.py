"""Every data source behind one interface, chosen by name in config.

A source lists its batches (`batches()`): one per file for the user's own logs, a single one
for MovieLens and the synthetic shop. Each batch is ingested on its own, so re-ingesting a file
replaces exactly its rows.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from functools import cached_property
from pathlib import Path
from typing import Protocol

import pandas as pd
from pydantic import BaseModel, Field

from grec_dagster.data.errors import DataSourceError
from grec_dagster.data.files import (
    OPTIONAL_INTERACTION_COLUMNS,
    REQUIRED_INTERACTION_COLUMNS,
    content_version,
    map_columns,
    read_text_table,
    resolve_files,
)
from grec_dagster.data.grokking_shop import SOURCE as SHOP_SOURCE
from grec_dagster.data.grokking_shop import GrokkingShopConfig, generate_grokking_shop
from grec_dagster.data.movielens import fetch_movielens_100k, load_movielens_100k
from grec_dagster.data.schema import ITEM_COLUMNS, USER_KEY, SourceFrames, conform, conform_users
from grec_dagster.data.synthetic import SyntheticConfig, generate_synthetic
from grec_dagster.data.validation import IngestedBatch, validate_catalog, validate_interactions

SOURCE_KINDS = ("movielens-100k", "synthetic", "grokking-shop", "files")


class SourceParams(BaseModel):
    """Which data to ingest. Flat on purpose: it doubles as the Dagster resource's config."""

    kind: str = Field(
        default="movielens-100k",
        description="movielens-100k | synthetic | grokking-shop (a planted (a + b) mod p taste, data/grokking_shop.py) | files",
    )
    cache_dir: str = Field(default=".grec/data", description="Where downloaded datasets are cached.")
    synthetic_interactions: int = Field(default=100_000, description="Size of the synthetic log.")
    synthetic_days: int = Field(default=90, description="Days the synthetic log spans.")
    seed: int = Field(default=0, description="Seed of the synthetic generator (and of the grokking shop).")
    interactions_path: str | None = Field(default=None, description="files: path or glob of CSV/Parquet logs.")
    items_path: str | None = Field(default=None, description="files: optional item table.")
    users_path: str | None = Field(default=None, description="files: optional user table.")
    columns: dict[str, str] = Field(
        default_factory=dict, description="files: our column name -> yours, e.g. {user_id: customer}."
    )
    delimiter: str | None = Field(default=None, description="files: CSV delimiter; sniffed when unset.")
    timestamp_format: str = Field(default="auto", description="auto | unix_s | unix_ms | a strftime format.")
    positive_min: float | None = Field(
        default=None,
        description="files: explicit ratings to implicit feedback: a `value` below this is kept but not trained on.",
    )


class DataSource(Protocol):
    name: str

    def batches(self) -> list[str]: ...

    def interactions(self, batch: str) -> IngestedBatch: ...

    def items(self) -> IngestedBatch: ...

    def users(self) -> IngestedBatch: ...


class _SingleBatchSource(ABC):
    """MovieLens and the synthetic shop: all frames come from one load, done once."""

    name: str

    @abstractmethod
    def _load(self) -> SourceFrames: ...

    @cached_property
    def frames(self) -> SourceFrames:
        return self._load()

    def batches(self) -> list[str]:
        return [self.name]

    def interactions(self, batch: str) -> IngestedBatch:
        if batch != self.name:
            raise DataSourceError(f"unknown batch {batch!r}; this source has only {self.name!r}")
        return validate_interactions(self.frames.interactions, self.name)

    def items(self) -> IngestedBatch:
        return _typed_catalog(
            validate_catalog(self.frames.items, "item_id", f"{self.name} items", numeric=("price",)), conform_items
        )

    def users(self) -> IngestedBatch:
        return _typed_catalog(validate_catalog(self.frames.users, USER_KEY, f"{self.name} users"), conform_users)


class MovieLensSource(_SingleBatchSource):
    name = "movielens-100k"

    def __init__(self, cache_dir: Path):
        self.cache_dir = Path(cache_dir)

    def _load(self) -> SourceFrames:
        return load_movielens_100k(fetch_movielens_100k(self.cache_dir))


class SyntheticSource(_SingleBatchSource):
    name = "synthetic"

    def __init__(self, config: SyntheticConfig):
        self.config = config

    def _load(self) -> SourceFrames:
        return generate_synthetic(self.config).conformed()


class GrokkingShopSource(_SingleBatchSource):
    name = SHOP_SOURCE

    def __init__(self, config: GrokkingShopConfig):
        self.config = config

    def _load(self) -> SourceFrames:
        return generate_grokking_shop(self.config).conformed()


class FilesSource:
    """The user's logs; each file matching `interactions_path` is one batch, named by its file name."""

    name = "files"

    def __init__(self, params: SourceParams):
        if not params.interactions_path:
            raise DataSourceError("source 'files' needs `interactions_path` (a path or glob)")
        self.params = params

    def _files(self) -> dict[str, Path]:
        return {path.name: path for path in resolve_files(self.params.interactions_path or "")}

    def batches(self) -> list[str]:
        return list(self._files())

    def interactions(self, batch: str) -> IngestedBatch:
        files = self._files()
        if batch not in files:
            raise DataSourceError("no such file among the configured logs", file=batch)
        path = files[batch]
        # Hashed before reading: should the file change in between, the version recorded is the older
        # one, and the landing sensor asks for the newer one later (never the other way round).
        version = content_version(path)
        raw = read_text_table(path, self.params.delimiter)
        if raw.empty:
            raise DataSourceError("the log has no rows", file=str(path))
        mapped = map_columns(
            raw,
            self._mapping((*REQUIRED_INTERACTION_COLUMNS, *OPTIONAL_INTERACTION_COLUMNS)),
            wanted=(*REQUIRED_INTERACTION_COLUMNS, *OPTIONAL_INTERACTION_COLUMNS),
            required=REQUIRED_INTERACTION_COLUMNS,
            path=path,
        )
        if self.params.positive_min is not None and "value" not in mapped:
            raise DataSourceError(
                f"positive_min {self.params.positive_min} needs a rating: map your rating column to `value` "
                "in `columns`",
                file=str(path),
                column="value",
            )
        return validate_interactions(
            mapped,
            batch,
            timestamp_format=self.params.timestamp_format,
            positive_min=self.params.positive_min,
            original=raw,
            version=version,
        )

    def _mapping(self, wanted: tuple[str, ...]) -> dict[str, str]:
        return {ours: theirs for ours, theirs in self.params.columns.items() if ours in wanted}

    def items(self) -> IngestedBatch:
        if not self.params.items_path:
            return _typed_catalog(validate_catalog(pd.DataFrame({"item_id": []}), "item_id", "items"), conform_items)
        path = resolve_files(self.params.items_path)[0]
        raw = read_text_table(path, self.params.delimiter)
        mapped = map_columns(
            raw, self._mapping(tuple(ITEM_COLUMNS)), wanted=tuple(ITEM_COLUMNS), required=("item_id",), path=path
        )
        batch = validate_catalog(mapped, "item_id", path.name, numeric=("price",), original=raw)
        return _typed_catalog(batch, conform_items)

    def users(self) -> IngestedBatch:
        if not self.params.users_path:
            return _typed_catalog(validate_catalog(pd.DataFrame({USER_KEY: []}), USER_KEY, "users"), conform_users)
        path = resolve_files(self.params.users_path)[0]
        raw = read_text_table(path, self.params.delimiter)
        mapped = map_columns(
            raw, self._mapping((USER_KEY,)), wanted=(USER_KEY,), required=(USER_KEY,), path=path, keep_others=True
        )
        return _typed_catalog(validate_catalog(mapped, USER_KEY, path.name, original=raw), conform_users)


def conform_items(frame: pd.DataFrame) -> pd.DataFrame:
    return conform(frame, ITEM_COLUMNS)


def _typed_catalog(batch: IngestedBatch, conform_to) -> IngestedBatch:
    """The same batch with its accepted rows in the canonical columns and types."""
    return IngestedBatch(conform_to(batch.accepted), batch.quarantine, batch.rows_read)


def make_source(params: SourceParams) -> DataSource:
    """The source `params.kind` names; an unknown name is a one-line error listing the valid ones."""
    if params.kind == "movielens-100k":
        return MovieLensSource(Path(params.cache_dir))
    if params.kind == "synthetic":
        return SyntheticSource(
            SyntheticConfig(
                n_interactions=params.synthetic_interactions, n_days=params.synthetic_days, seed=params.seed
            )
        )
    if params.kind == SHOP_SOURCE:
        return GrokkingShopSource(GrokkingShopConfig(seed=params.seed))
    if params.kind == "files":
        return FilesSource(params)
    raise DataSourceError(f"unknown data source {params.kind!r}; choose one of {', '.join(SOURCE_KINDS)}")
