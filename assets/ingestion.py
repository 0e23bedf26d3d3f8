"""Stage 1, ingestion: the configured source's logs, catalog and users as DuckDB tables."""

import time

import dagster as dg
import pandas as pd

from grec_dagster.data.errors import DataSourceError
from grec_dagster.data.warehouse import count_rows, replace_batches, replace_table
from grec_dagster.evaluation.tables import markdown_preview
from grec_dagster.resources import DataSourceResource, WarehouseResource

GROUP = "ingestion"


@dg.asset(group_name=GROUP, kinds={"duckdb"})
def raw_interactions(
    context: dg.AssetExecutionContext, source: DataSourceResource, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """The accepted interaction log (`interactions`) and every rejected row with its reason (`quarantine`)."""
    started = time.perf_counter()
    data = source.source()
    batches = {name: data.interactions(name) for name in data.batches()}
    accepted = sum(len(batch.accepted) for batch in batches.values())
    if accepted == 0:
        raise DataSourceError(f"source {data.name!r} yielded no usable interactions", file=", ".join(batches))
    with warehouse.connect() as con:
        replace_batches(con, batches, only_these=True)
        preview = con.execute("SELECT * FROM interactions ORDER BY ts LIMIT 10").df()
        total = count_rows(con, "interactions")
    rows_read = sum(batch.rows_read for batch in batches.values())
    quarantined = sum(len(batch.quarantine) for batch in batches.values())
    context.log.info(f"{data.name}: read {rows_read}, accepted {accepted}, quarantined {quarantined}")
    return dg.MaterializeResult(
        metadata={
            "source": data.name,
            "batches": len(batches),
            "rows_read": rows_read,
            "rows_accepted": accepted,
            "rows_quarantined": quarantined,
            "dagster/row_count": total,
            "preview": dg.MetadataValue.md(markdown_preview(preview)),
            "seconds": round(time.perf_counter() - started, 3),
        }
    )


def _catalog_table(
    table: str, frame: pd.DataFrame, warehouse: WarehouseResource, started: float
) -> dg.MaterializeResult:
    with warehouse.connect() as con:
        replace_table(con, table, frame)
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": len(frame),
            "columns": ", ".join(frame.columns),
            "preview": dg.MetadataValue.md(markdown_preview(frame)),
            "seconds": round(time.perf_counter() - started, 3),
        }
    )


@dg.asset(group_name=GROUP, kinds={"duckdb"})
def items(source: DataSourceResource, warehouse: WarehouseResource) -> dg.MaterializeResult:
    """The item catalog: title, category, brand, description, price (NULL where the source has none)."""
    started = time.perf_counter()
    return _catalog_table("items", source.source().items(), warehouse, started)


@dg.asset(group_name=GROUP, kinds={"duckdb"})
def users(source: DataSourceResource, warehouse: WarehouseResource) -> dg.MaterializeResult:
    """Users and whatever attributes the source knows (age, gender, occupation, region ...)."""
    started = time.perf_counter()
    return _catalog_table("users", source.source().users(), warehouse, started)
