"""Stage 1, ingestion: the configured source's logs, catalog and users as DuckDB tables.

Your own files arrive one by one, so with the `files` source `raw_interactions` has one dynamic
partition per file, added by the landing sensor; re-materializing a partition replaces exactly
that file's rows. The built-in sources (MovieLens, synthetic) are single snapshots and stay
unpartitioned. Which applies is decided when the definitions are built (`raw_interactions_for`).
"""

import time

import dagster as dg
import pandas as pd

from grec_dagster.data.errors import DataSourceError
from grec_dagster.data.landing import SETTLE_SECONDS, landed_files, plan_landing
from grec_dagster.data.quality import utc_now
from grec_dagster.data.validation import IngestedBatch, enforce_row_rules
from grec_dagster.data.warehouse import replace_batches, replace_catalog
from grec_dagster.evaluation.tables import markdown_preview
from grec_dagster.resources import DataSourceResource, QualityResource, WarehouseResource

GROUP = "ingestion"

LANDED_FILES = dg.DynamicPartitionsDefinition(name="interaction_files")
"""One partition per file of the `files` source, named by its file name."""


def build_raw_interactions(partitions_def: dg.DynamicPartitionsDefinition | None) -> dg.AssetsDefinition:
    """`raw_interactions`, one partition per landed file or (None) one snapshot of the whole source."""

    @dg.asset(name="raw_interactions", group_name=GROUP, kinds={"duckdb"}, partitions_def=partitions_def)
    def raw_interactions(
        context: dg.AssetExecutionContext,
        source: DataSourceResource,
        warehouse: WarehouseResource,
        quality: QualityResource,
    ) -> dg.MaterializeResult:
        """The accepted interaction log (`interactions`) and every rejected row with its reason (`quarantine`)."""
        started = time.perf_counter()
        data = source.source()
        rules = quality.params().row_rules(utc_now(), catalog=pd.Index(data.items().accepted["item_id"].dropna()))
        names = [context.partition_key] if partitions_def else data.batches()
        batches = {name: enforce_row_rules(data.interactions(name), rules) for name in names}
        accepted = sum(len(batch.accepted) for batch in batches.values())
        if accepted == 0 and not partitions_def:
            # A snapshot replaces every row: an unusable one must not wipe the previous state. A file
            # only replaces its own rows, so they are stored and its blocking check stops them.
            raise DataSourceError(f"source {data.name!r} yielded no usable interactions", file=", ".join(batches))
        keep = context.instance.get_dynamic_partitions(partitions_def.name) if partitions_def else ()
        with warehouse.connect() as con:
            replace_batches(con, batches, keep=keep)
        context.log.info(f"{data.name} {', '.join(batches)}: " + "; ".join(b.accounting() for b in batches.values()))
        return dg.MaterializeResult(metadata=_ingestion_metadata(data.name, batches, time.perf_counter() - started))

    return raw_interactions


def _ingestion_metadata(source: str, batches: dict[str, IngestedBatch], seconds: float) -> dict:
    accepted = pd.concat([batch.accepted for batch in batches.values()], ignore_index=True)
    quarantine = pd.concat([batch.quarantine for batch in batches.values()], ignore_index=True)
    rows_read = sum(batch.rows_read for batch in batches.values())
    by_column = quarantine.groupby("column").size().rename("rows").reset_index()
    return {
        "source": source,
        "batches": len(batches),
        "rows_read": rows_read,
        "rows_accepted": len(accepted),
        "rows_quarantined": len(quarantine),
        "row_accounting": f"read {rows_read} = accepted {len(accepted)} + quarantined {len(quarantine)}",
        "dagster/row_count": len(accepted),
        "quarantined_by_column": dg.MetadataValue.md(markdown_preview(by_column)),
        "quarantine_preview": dg.MetadataValue.md(markdown_preview(quarantine)),
        "preview": dg.MetadataValue.md(markdown_preview(accepted.nsmallest(10, "ts"))),
        "seconds": round(seconds, 3),
    }


raw_interactions = build_raw_interactions(None)
"""The snapshot form, the default; `assets.features` and friends depend on its key."""


def raw_interactions_for(source_kind: str) -> dg.AssetsDefinition:
    """Your files are partitioned by file; a built-in source is one snapshot."""
    return build_raw_interactions(LANDED_FILES) if source_kind == "files" else raw_interactions


def landing_sensors(raw: dg.AssetsDefinition) -> list[dg.SensorDefinition]:
    """The sensor turning landed files into partitions, when `raw_interactions` is partitioned by file."""
    if raw.partitions_def is None:
        return []

    @dg.sensor(target=raw, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING)
    def landed_interaction_files(context: dg.SensorEvaluationContext, source: DataSourceResource) -> dg.SensorResult:
        """Adds each file that lands in the source's folder as a partition and requests its ingestion once."""
        landed = landed_files(source.interactions_path or "", settled_before=time.time() - SETTLE_SECONDS)
        plan = plan_landing(
            landed,
            partitions=context.instance.get_dynamic_partitions(LANDED_FILES.name),
            ingested=context.instance.get_materialized_partitions(raw.key),
        )
        return dg.SensorResult(
            run_requests=[dg.RunRequest(partition_key=f.partition_key, run_key=f.version) for f in plan.to_ingest],
            dynamic_partitions_requests=[LANDED_FILES.build_add_request(plan.new_partitions)]
            if plan.new_partitions
            else [],
        )

    return [landed_interaction_files]


def _catalog_table(
    table: str, batch: IngestedBatch, warehouse: WarehouseResource, started: float
) -> dg.MaterializeResult:
    with warehouse.connect() as con:
        replace_catalog(con, table, batch)
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": len(batch.accepted),
            "rows_quarantined": len(batch.quarantine),
            "row_accounting": batch.accounting(),
            "columns": ", ".join(batch.accepted.columns),
            "preview": dg.MetadataValue.md(markdown_preview(batch.accepted)),
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
