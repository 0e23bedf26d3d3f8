"""The `evaluation_results` table: every evaluation ever run, newest per (dataset, protocol, model)."""

from __future__ import annotations

import duckdb
import pandas as pd

from grec_dagster.storage import transaction

RESULT_COLUMNS = ("dataset", "protocol", "model", "split", "segment", "metric", "k", "value", "users")


def store_results(con: duckdb.DuckDBPyConnection, results: pd.DataFrame, run_id: str) -> None:
    """Replace the rows of the same dataset, protocol and models; keep every other result."""
    con.execute(
        """CREATE TABLE IF NOT EXISTS evaluation_results (
            dataset VARCHAR, protocol VARCHAR, model VARCHAR, split VARCHAR, segment VARCHAR,
            metric VARCHAR, k INTEGER, value DOUBLE, users BIGINT, run_id VARCHAR, created_at TIMESTAMP)"""
    )
    rows = results.loc[:, list(RESULT_COLUMNS)].assign(run_id=run_id, created_at=pd.Timestamp.now(tz="UTC").tz_localize(None))
    con.register("new_results", rows)
    try:
        with transaction(con):
            con.execute(
                """DELETE FROM evaluation_results r USING (SELECT DISTINCT dataset, protocol, model FROM new_results) n
                   WHERE r.dataset = n.dataset AND r.protocol = n.protocol AND r.model = n.model"""
            )
            con.execute("INSERT INTO evaluation_results SELECT * FROM new_results")
    finally:
        con.unregister("new_results")


def load_results(con: duckdb.DuckDBPyConnection, dataset: str | None = None) -> pd.DataFrame:
    query = "SELECT * FROM evaluation_results" + (" WHERE dataset = $dataset" if dataset else "")
    return con.execute(query + " ORDER BY dataset, protocol, model", {"dataset": dataset} if dataset else {}).df()
