"""Stage 1, ingestion: the configured source's logs, catalog and users as DuckDB tables.

Your own files arrive one by one, so with the `files` source `raw_interactions` has one dynamic
partition per file, added by the landing sensor (inside `dagster dev`) or by `grec ingest` (in
one shot, no daemon); re-materializing a partition replaces exactly that file's rows. The
built-in sources (MovieLens, synthetic) are single snapshots and stay unpartitioned. Which
applies is decided when the definitions are built (`raw_interactions_for`).
"""

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import dagster as dg
import pandas as pd
from dagster_shared.error import SerializableErrorInfo

from grec_dagster.data.errors import DataSourceError
from grec_dagster.data.landing import SETTLE_SECONDS, LandedFile, landed_files, plan_landing, read_cursor
from grec_dagster.data.quality import utc_now
from grec_dagster.data.validation import IngestedBatch, enforce_row_rules
from grec_dagster.data.warehouse import replace_batches, replace_catalog
from grec_dagster.evaluation.tables import markdown_preview
from grec_dagster.resources import DataSourceResource, QualityResource, WarehouseResource

GROUP = "ingestion"

LANDED_FILES = dg.DynamicPartitionsDefinition(name="interaction_files")
"""One partition per file of the `files` source, named by its file name."""

CONTENT_VERSION = "content_version"
"""Metadata key of the content hash of the file a partition's materialization read."""


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
        metadata = _ingestion_metadata(data.name, batches, time.perf_counter() - started)
        if not partitions_def:
            return dg.MaterializeResult(metadata=metadata)
        version = batches[context.partition_key].version
        return dg.MaterializeResult(
            metadata=metadata | {CONTENT_VERSION: version}, data_version=dg.DataVersion(version)
        )

    return raw_interactions


def _ingestion_metadata(source: str, batches: dict[str, IngestedBatch], seconds: float) -> dict:
    accepted = pd.concat([batch.accepted for batch in batches.values()], ignore_index=True)
    quarantine = pd.concat([batch.quarantine for batch in batches.values()], ignore_index=True)
    whole = IngestedBatch(accepted, quarantine, sum(batch.rows_read for batch in batches.values()))
    by_column = quarantine.groupby("column").size().rename("rows").reset_index()
    return {
        "source": source,
        "batches": len(batches),
        "rows_read": whole.rows_read,
        "rows_accepted": len(accepted),
        "rows_quarantined": len(quarantine),
        "rows_below_positive_min": whole.rows_below_positive_min,
        "row_accounting": whole.accounting(),
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
        """Adds each file that lands in the source's folder as a partition, and requests the ingestion
        of each version of it (content hash) once; the cursor remembers what it saw."""
        seen = read_cursor(context.cursor)
        landed = landed_files(source.interactions_path or "", time.time() - SETTLE_SECONDS, seen)
        plan = plan_landing(
            landed,
            context.instance.get_dynamic_partitions(LANDED_FILES.name),
            seen,
            ingested_version(context.instance, raw.key),
        )
        return dg.SensorResult(
            run_requests=[dg.RunRequest(partition_key=f.partition_key, run_key=f.run_key) for f in plan.to_ingest],
            dynamic_partitions_requests=[LANDED_FILES.build_add_request(plan.new_partitions)]
            if plan.new_partitions
            else [],
            cursor=plan.cursor,
        )

    return [landed_interaction_files]


def ingested_version(instance: dg.DagsterInstance, key: dg.AssetKey) -> Callable[[str], str | None]:
    """The content hash the partition's last materialization read; None before any (or before hashes were kept)."""

    def version(partition: str) -> str | None:
        where = dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition])
        records = instance.fetch_materializations(where, limit=1).records
        recorded = records[0].asset_materialization.metadata.get(CONTENT_VERSION) if records else None
        return None if recorded is None else str(recorded.value)

    return version


@dataclass(frozen=True)
class Ingestion:
    """What became of one asset (`items`, `users`) or one file in `ingest_files`."""

    name: str
    accounting: str | None = None
    """read = accepted + quarantined, when it was ingested."""
    refused: str | None = None
    """Why nothing of it was stored (one line for bad input)."""
    failed_checks: tuple[str, ...] = ()
    """The summaries of its blocking checks that failed: stored, held back from training."""
    unchanged: bool = False
    """Skipped: this content was ingested before."""

    @property
    def ok(self) -> bool:
        return self.refused is None and not self.failed_checks


def ingest_files(defs: dg.Definitions, instance: dg.DagsterInstance, again: bool = False) -> Iterator[Ingestion]:
    """Without the daemon, what the landing sensor and the runs it requests do: the catalog and the
    users, then every file of the `files` source as its partition (added when new), with the same
    row rules, quarantine, blocking checks and accounting, recorded on `instance`. A file whose
    content was ingested before is skipped unless `again`; one whose catalog is refused is not tried.
    """
    raw = defs.resolve_assets_def("raw_interactions")
    if raw.partitions_def is None:
        raise DataSourceError(
            "`grec ingest` ingests the `files` source (GREC_CONFIG: source: {kind: files, ...}); "
            "materialize a built-in source with `dagster asset materialize --select '*'`"
        )
    pattern = defs.resources["source"].interactions_path or ""
    landed = landed_files(pattern, settled_before=math.inf)
    if not landed:
        raise DataSourceError("no file matches this path or glob", file=pattern)
    plan = plan_landing(
        landed, instance.get_dynamic_partitions(LANDED_FILES.name), {}, ingested_version(instance, raw.key)
    )
    instance.add_dynamic_partitions(LANDED_FILES.name, plan.new_partitions)
    catalog = materialize_in_process(defs, instance, ["items", "users"])
    for name in ("items", "users"):
        yield _ingestion(name, catalog)
    if not catalog.success:
        return
    wanted = {f.partition_key for f in (landed if again else plan.to_ingest)}
    for landed_file in landed:
        yield (
            _ingest_file(defs, instance, landed_file)
            if landed_file.partition_key in wanted
            else Ingestion(landed_file.partition_key, unchanged=True)
        )


def _ingest_file(defs: dg.Definitions, instance: dg.DagsterInstance, landed_file: LandedFile) -> Ingestion:
    result = materialize_in_process(defs, instance, ["raw_interactions"], landed_file.partition_key)
    return _ingestion("raw_interactions", result, name=landed_file.partition_key)


def materialize_in_process(
    defs: dg.Definitions, instance: dg.DagsterInstance, assets: list[str], partition: str | None = None
) -> dg.ExecuteInProcessResult:
    """One run of `assets` (for one partition) and their blocking checks, recorded on `instance` as a run
    the landing sensor requests would be (its events are in the UI; the console gets only what
    `grec ingest` prints)."""
    return dg.materialize(
        [*defs.assets, *defs.asset_checks],
        selection=dg.AssetSelection.assets(*assets),
        partition_key=partition,
        resources=defs.resources,
        instance=instance,
        run_config={"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}},
        tags={"grec/launched_by": "grec ingest"},
        raise_on_error=False,
    )


def _ingestion(node: str, result: dg.ExecuteInProcessResult, name: str | None = None) -> Ingestion:
    """`node`'s outcome in `result`, shown as `name`: its accounting, why it was refused, its failed checks."""
    materialized = result.asset_materializations_for_node(node)
    accounting = materialized[0].metadata["row_accounting"].value if materialized else None
    failures = [
        event.step_failure_data.error
        for event in result.all_node_events
        if event.is_step_failure and event.step_key == node
    ]
    checks = tuple(
        str(check.description)
        for check in result.get_asset_check_evaluations()
        if check.asset_key.to_user_string() == node and not check.passed
    )
    return Ingestion(name or node, accounting, _one_line(failures[0]) if failures else None, checks)


def _one_line(error: SerializableErrorInfo) -> str:
    """Bad input as its one-line message; anything else (a bug) with its traceback."""
    while error.cause is not None:
        error = error.cause
    qualified, _, message = error.message.strip().partition(": ")  # "package.module.Class: message"
    if error.cls_name == DataSourceError.__name__ and qualified.endswith(error.cls_name):
        return message
    return error.to_string()


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
