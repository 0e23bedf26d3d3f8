"""Which files in the landing folder are new partitions, and which of their versions still need ingesting.

Each file matching the source's glob is one partition of `raw_interactions`, named by its file
name; a file's version is the hash of its content. A version is asked for once: when it was
neither ingested (each materialization records the version it read) nor seen by an earlier look
(the sensor's cursor). So a file fixed and dropped in again is ingested again, whether its
previous version passed its checks or not, and a file merely touched or copied in again is not.
The decision is plain Python over what landed and what was done, shared by the landing sensor
and `grec ingest`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

from grec_dagster.data.errors import DataSourceError
from grec_dagster.data.files import content_version, matching_files

SETTLE_SECONDS = 10.0
"""A file written more recently than this may still be being copied in: it waits for a later look."""


@dataclass(frozen=True)
class LandedFile:
    path: Path
    size: int
    modified_ns: int
    version: str
    """The content hash (`files.content_version`)."""

    @property
    def partition_key(self) -> str:
        return self.path.name

    @property
    def run_key(self) -> str:
        """One per version of a file: Dagster's daemon never launches a sensor's run key twice."""
        return f"{self.path.name}@{self.version}"


@dataclass(frozen=True)
class LandingPlan:
    new_partitions: list[str]
    """Landed file names that are not partitions yet."""
    to_ingest: list[LandedFile]
    """Landed files whose current version was neither ingested nor seen before."""
    cursor: str
    """What this look saw, for the next one (`read_cursor`)."""


def landed_files(pattern: str, settled_before: float, seen: Mapping[str, LandedFile] | None = None) -> list[LandedFile]:
    """Files matching `pattern` last written before `settled_before` (epoch seconds), by name.

    A file whose size and modification time are those `seen` recorded keeps that version unread,
    so a look at a quiet folder hashes nothing. Two files of one name in different folders are an
    error: partitions are named by file name, and one of them would silently shadow the other.
    """
    seen = seen or {}
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
        before = seen.get(path.name)
        unchanged = before is not None and (before.size, before.modified_ns) == (stat.st_size, stat.st_mtime_ns)
        version = before.version if unchanged else content_version(path)
        found[path.name] = LandedFile(path, stat.st_size, stat.st_mtime_ns, version)
    return sorted(found.values(), key=lambda landed: landed.partition_key)


def plan_landing(
    landed: list[LandedFile],
    partitions: Collection[str],
    seen: Mapping[str, LandedFile],
    ingested_version: Callable[[str], str | None],
) -> LandingPlan:
    """New partitions for unseen names; an ingestion request for each new version of a file.

    `ingested_version(partition)` is the version the partition's last materialization read (None
    if none or unknown); it is asked only about files that changed since `seen`.
    """
    known = set(partitions)
    changed = [f for f in landed if (f.partition_key not in seen) or seen[f.partition_key].version != f.version]
    return LandingPlan(
        new_partitions=[f.partition_key for f in landed if f.partition_key not in known],
        to_ingest=[
            f for f in changed if f.partition_key not in known or ingested_version(f.partition_key) != f.version
        ],
        cursor=json.dumps({f.partition_key: [f.size, f.modified_ns, f.version] for f in landed}),
    )


def read_cursor(cursor: str | None) -> dict[str, LandedFile]:
    """The files an earlier look saw, by name (their folder is not kept: partitions are named by file)."""
    return {
        name: LandedFile(Path(name), size, modified_ns, version)
        for name, (size, modified_ns, version) in json.loads(cursor or "{}").items()
    }
