"""Which files in the landing folder are new partitions, and which still need ingesting.

Each file matching the source's glob is one partition of `raw_interactions`, named by its
file name. The decision is plain Python over three lists (what landed, which partitions
exist, which are ingested) so the landing sensor and a retrain sensor can share it.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from grec_dagster.data.errors import DataSourceError
from grec_dagster.data.files import matching_files

SETTLE_SECONDS = 10.0
"""A file written more recently than this may still be being copied in: it waits for a later look."""


@dataclass(frozen=True)
class LandedFile:
    path: Path
    size: int
    modified_ns: int

    @property
    def partition_key(self) -> str:
        return self.path.name

    @property
    def version(self) -> str:
        """Changes when the file is rewritten: as a run key it requests each version of a file once."""
        return f"{self.path.name}@{self.size}:{self.modified_ns}"


@dataclass(frozen=True)
class LandingPlan:
    new_partitions: list[str]
    """Landed file names that are not partitions yet."""
    to_ingest: list[LandedFile]
    """Landed files whose partition has not been materialized (new, or failed before)."""


def landed_files(pattern: str, settled_before: float) -> list[LandedFile]:
    """Files matching `pattern` last written before `settled_before` (epoch seconds), by name.

    Two files of one name in different folders are an error: partitions are named by file name,
    and one of them would silently shadow the other.
    """
    found: dict[str, LandedFile] = {}
    for path in matching_files(pattern):
        stat = path.stat()
        if stat.st_mtime >= settled_before:
            continue
        if path.name in found:
            raise DataSourceError(
                f"two landed files share this name ({found[path.name].path} and {path}); "
                "partitions are named by file name, so rename one",
                file=path.name,
            )
        found[path.name] = LandedFile(path, stat.st_size, stat.st_mtime_ns)
    return sorted(found.values(), key=lambda landed: landed.partition_key)


def plan_landing(landed: list[LandedFile], partitions: Collection[str], ingested: Collection[str]) -> LandingPlan:
    """New partitions for unseen names; an ingestion request for every landed file not yet ingested."""
    known, done = set(partitions), set(ingested)
    return LandingPlan(
        new_partitions=[f.partition_key for f in landed if f.partition_key not in known],
        to_ingest=[f for f in landed if f.partition_key not in done],
    )
