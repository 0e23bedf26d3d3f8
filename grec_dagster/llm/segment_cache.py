"""Crowd segments fitted once per catalog and users table, kept in DuckDB.

Refitting on every run would move every centroid a little whenever a few histories change, and with
them the segment options -- and so the profile cache key -- of users whose own history did not
change. So the fit is keyed by a fingerprint of what defines the segment space (the catalog's
categories, the users table, the fitting method's constants and seed) and reused while those stay
the same; new events only move users between segments. A new users table or a new category refits,
which can re-profile many users at once (the per-run budget bounds that: `profile_cache`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import UTC, datetime

import duckdb
import pandas as pd

from grec_dagster.data.schema import USER_KEY
from grec_dagster.llm import segments as method
from grec_dagster.llm.profile_schema import UserHistory
from grec_dagster.llm.segments import CrowdSegments, fit_segments
from grec_dagster.llm.vocabulary import with_none

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS crowd_segments (
    fingerprint VARCHAR PRIMARY KEY,
    segments_json VARCHAR NOT NULL,
    created_at TIMESTAMP NOT NULL
)
"""
METHOD_CONSTANTS = (
    "ATTRIBUTE_WEIGHT",
    "MAX_ATTRIBUTE_LEVELS",
    "NUMERIC_BANDS",
    "MAX_DISTINCT_SHARE",
    "DOMINANT_SHARE",
    "MIN_TASTE_SHARE",
    "MAX_SEGMENTS",
    "RESTARTS",
    "ITERATIONS",
)


def crowd_segments(
    con: duckdb.DuckDBPyConnection,
    histories: Sequence[UserHistory],
    categories: Sequence[str],
    users: pd.DataFrame | None,
    seed: int = 0,
) -> CrowdSegments:
    """The segments of this catalog and `users` table: the stored fit, or a new one fitted on `histories`."""
    con.execute(_CREATE_TABLE)
    key = fingerprint(categories, users, seed)
    stored = con.execute("SELECT segments_json FROM crowd_segments WHERE fingerprint = ?", [key]).fetchone()
    if stored is not None:
        return CrowdSegments.from_json(stored[0])
    fitted = fit_segments(histories, categories, seed)
    con.execute(
        "INSERT OR REPLACE INTO crowd_segments VALUES (?, ?, ?)",
        [key, fitted.to_json(), datetime.now(UTC).replace(tzinfo=None)],
    )
    return fitted


def fingerprint(categories: Sequence[str], users: pd.DataFrame | None, seed: int) -> str:
    """sha256 of the method's constants, the seed, the categories and the users table's rows."""
    rows: list[list[str | None]] = []
    if users is not None:
        ordered = with_none(users.astype("string").sort_values(USER_KEY, kind="stable"))
        rows = [list(ordered.columns), *ordered.values.tolist()]
    canonical = json.dumps(
        {
            "method": {name: getattr(method, name) for name in METHOD_CONSTANTS},
            "seed": seed,
            "categories": sorted(categories),
            "users": rows,
        },
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
