"""DuckDB tables of the warehouse: created once, replaced per batch in one transaction.

Every statement that carries user data goes through a registered frame or a bound parameter;
nothing the user wrote is ever spliced into SQL text.
"""

from __future__ import annotations

import duckdb
import pandas as pd

from grec_dagster.data.schema import DUCKDB_TYPES, INTERACTION_COLUMNS, ITEM_COLUMNS, QUARANTINE_COLUMNS
from grec_dagster.data.validation import IngestedBatch

TABLES: dict[str, dict[str, str]] = {
    "interactions": INTERACTION_COLUMNS,
    "items": ITEM_COLUMNS,
    "quarantine": QUARANTINE_COLUMNS,
}


def ensure_tables(con: duckdb.DuckDBPyConnection) -> None:
    """Create the fixed-schema tables if they are missing (users' columns vary, so it is made on write)."""
    for table, columns in TABLES.items():
        body = ", ".join(f'"{name}" {DUCKDB_TYPES[dtype]}' for name, dtype in columns.items())
        con.execute(f"CREATE TABLE IF NOT EXISTS {table} ({body})")


def replace_batches(con: duckdb.DuckDBPyConnection, batches: dict[str, IngestedBatch], only_these: bool) -> None:
    """Swap the rows of each named batch (accepted and quarantined) in a single transaction.

    With `only_these`, rows of every other batch are removed too, so the tables hold exactly
    this ingestion (a source switched from MovieLens to synthetic leaves nothing behind).
    A process killed half-way leaves the previous rows: DuckDB rolls back the open transaction.
    """
    ensure_tables(con)
    try:
        con.execute("BEGIN TRANSACTION")
        if only_these:
            con.execute("DELETE FROM interactions")
            con.execute("DELETE FROM quarantine")
        for source, batch in batches.items():
            con.execute("DELETE FROM interactions WHERE source = $source", {"source": source})
            con.execute("DELETE FROM quarantine WHERE source = $source", {"source": source})
            con.register("accepted_rows", batch.accepted)
            con.register("quarantined_rows", batch.quarantine)
            con.execute("INSERT INTO interactions SELECT * FROM accepted_rows")
            con.execute("INSERT INTO quarantine SELECT * FROM quarantined_rows")
            con.unregister("accepted_rows")
            con.unregister("quarantined_rows")
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


def replace_table(con: duckdb.DuckDBPyConnection, table: str, frame: pd.DataFrame) -> None:
    """Replace a whole table (the catalog, the users) atomically from a frame."""
    if table not in {"items", "users"}:
        raise ValueError(f"replace_table only writes items or users, not {table!r}")
    con.register("new_rows", frame)
    try:
        con.execute(f"CREATE OR REPLACE TABLE {table} AS SELECT * FROM new_rows")
    finally:
        con.unregister("new_rows")


def count_rows(con: duckdb.DuckDBPyConnection, table: str, source: str | None = None) -> int:
    if table not in {*TABLES, "users"}:
        raise ValueError(f"unknown table {table!r}")
    if source is None:
        return con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    return con.execute(f"SELECT count(*) FROM {table} WHERE source = $source", {"source": source}).fetchone()[0]
