"""DuckDB tables of the warehouse: created once, replaced per batch in one transaction.

Every statement that carries user data goes through a registered frame or a bound parameter;
nothing the user wrote is ever spliced into SQL text.
"""

from __future__ import annotations

from collections.abc import Collection

import duckdb
import pandas as pd

from grec_dagster.data.schema import DUCKDB_TYPES, INTERACTION_COLUMNS, ITEM_COLUMNS, QUARANTINE_COLUMNS
from grec_dagster.data.validation import IngestedBatch
from grec_dagster.storage import transaction

TABLES: dict[str, dict[str, str]] = {
    "interactions": INTERACTION_COLUMNS,
    "items": ITEM_COLUMNS,
    "quarantine": QUARANTINE_COLUMNS,
}


ADDED_COLUMNS: dict[str, dict[str, str]] = {"interactions": {"positive": "true"}}
"""Columns added after warehouses were first written, with the value their older rows had
(before `positive_min` existed, every accepted event was trained on)."""


def ensure_tables(con: duckdb.DuckDBPyConnection) -> None:
    """Create the fixed-schema tables if they are missing, and add the columns an older warehouse
    lacks (users' columns vary, so that table is made on write)."""
    for table, columns in TABLES.items():
        body = ", ".join(f'"{name}" {DUCKDB_TYPES[dtype]}' for name, dtype in columns.items())
        con.execute(f"CREATE TABLE IF NOT EXISTS {table} ({body})")
        for name, old_rows in ADDED_COLUMNS.get(table, {}).items():
            kind = DUCKDB_TYPES[columns[name]]
            con.execute(f'ALTER TABLE {table} ADD COLUMN IF NOT EXISTS "{name}" {kind} DEFAULT {old_rows}')


def replace_batches(
    con: duckdb.DuckDBPyConnection, batches: dict[str, IngestedBatch], keep: Collection[str] = ()
) -> None:
    """Swap the rows of each named batch (accepted and quarantined) in a single transaction.

    Rows of the batches named in `keep` stay; rows of every other batch are removed, so the
    tables hold exactly the source's current batches (a source switched from MovieLens to your
    files leaves nothing behind). A process killed half-way leaves the previous rows: DuckDB
    never replays a transaction that did not commit.
    """
    ensure_tables(con)
    kept = pd.DataFrame({"source": sorted(set(keep) - set(batches))}, dtype="string")
    con.register("kept_batches", kept)
    try:
        with transaction(con):
            for table in ("interactions", "quarantine"):
                con.execute(f"DELETE FROM {table} WHERE source IS NULL OR source NOT IN (SELECT source FROM kept_batches)")
            for batch in batches.values():
                con.register("accepted_rows", batch.accepted)
                con.register("quarantined_rows", batch.quarantine)
                con.execute("INSERT INTO interactions BY NAME SELECT * FROM accepted_rows")
                con.execute("INSERT INTO quarantine SELECT * FROM quarantined_rows")
                con.unregister("accepted_rows")
                con.unregister("quarantined_rows")
    finally:
        con.unregister("kept_batches")


def replace_catalog(con: duckdb.DuckDBPyConnection, table: str, batch: IngestedBatch) -> None:
    """Replace a whole catalog table (items or users) and its rejected rows in one transaction.

    Rejected catalog rows go to `catalog_quarantine` (the quarantine columns plus `table_name`),
    apart from the interaction quarantine whose rows are replaced per log batch.
    """
    if table not in {"items", "users"}:
        raise ValueError(f"replace_catalog only writes items or users, not {table!r}")
    body = ", ".join(f'"{name}" {DUCKDB_TYPES[dtype]}' for name, dtype in QUARANTINE_COLUMNS.items())
    con.execute(f"CREATE TABLE IF NOT EXISTS catalog_quarantine (table_name VARCHAR, {body})")
    con.register("new_rows", batch.accepted)
    con.register("rejected_rows", batch.quarantine)
    try:
        with transaction(con):
            con.execute(f"CREATE OR REPLACE TABLE {table} AS SELECT * FROM new_rows")
            con.execute("DELETE FROM catalog_quarantine WHERE table_name = $table", {"table": table})
            con.execute("INSERT INTO catalog_quarantine SELECT $table, * FROM rejected_rows", {"table": table})
    finally:
        con.unregister("new_rows")
        con.unregister("rejected_rows")


def count_rows(con: duckdb.DuckDBPyConnection, table: str, source: str | None = None) -> int:
    if table not in {*TABLES, "users"}:
        raise ValueError(f"unknown table {table!r}")
    if source is None:
        return con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0]
    return con.execute(f"SELECT count(*) FROM {table} WHERE source = $source", {"source": source}).fetchall()[0][0]


VERDICTS_DDL = (
    "CREATE TABLE IF NOT EXISTS batch_verdicts (source VARCHAR PRIMARY KEY, passed BOOLEAN, checked_at TIMESTAMP)"
)


def record_verdict(con: duckdb.DuckDBPyConnection, source: str | None, passed: bool) -> None:
    """Remember whether a batch (one file; None: every batch of the snapshot) passed its blocking check.

    A failing blocking check stops its own run; the verdict also keeps the batch out of every later
    build of the graph (a nightly retrain, say) until the file is fixed, re-ingested and passes.
    """
    con.execute(VERDICTS_DDL)
    sources = (
        [source]
        if source is not None
        else [row[0] for row in con.execute("SELECT DISTINCT source FROM interactions").fetchall()]
    )
    con.register("checked_batches", pd.DataFrame({"source": pd.Series(sources, dtype="string")}))
    try:
        con.execute(
            """INSERT OR REPLACE INTO batch_verdicts
               SELECT source, $passed, now()::TIMESTAMP FROM checked_batches""",
            {"passed": passed},
        )
    finally:
        con.unregister("checked_batches")


def trusted_interactions(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """What models train on: the accepted positives (no rating below `positive_min`) outside the
    batches whose last blocking check failed, in time order."""
    con.execute(VERDICTS_DDL)
    ensure_tables(con)
    return con.execute(
        """SELECT user_id, item_id, ts FROM interactions
           WHERE positive AND source NOT IN (SELECT source FROM batch_verdicts WHERE NOT passed)
           ORDER BY ts, source, source_row"""
    ).df()


def rows_below_positive_min(con: duckdb.DuckDBPyConnection) -> int:
    """Accepted rows kept but not trained on because their rating is below the source's `positive_min`."""
    ensure_tables(con)
    return con.execute("SELECT count(*) FROM interactions WHERE NOT positive").fetchall()[0][0]


def held_back_rows(con: duckdb.DuckDBPyConnection) -> int:
    con.execute(VERDICTS_DDL)
    return con.execute(
        "SELECT count(*) FROM interactions WHERE source IN (SELECT source FROM batch_verdicts WHERE NOT passed)"
    ).fetchall()[0][0]
