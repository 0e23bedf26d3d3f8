"""Blocking data-quality checks: Great Expectations suites over raw_interactions, items and users.

A check that fails stops every asset downstream of its asset in the run, so nothing bad
reaches training; its metadata names the failing expectations, their counts and a sample
of the rows that broke them.
"""

import time
import warnings

import dagster as dg

from assets.ingestion import items, users
from grec_dagster.data.quality import SuiteReport, check_interactions, check_items, check_users, utc_now
from grec_dagster.data.warehouse import record_verdict
from grec_dagster.evaluation.tables import markdown_preview
from grec_dagster.resources import QualityResource, WarehouseResource


def build_quality_checks(raw: dg.AssetsDefinition) -> list[dg.AssetChecksDefinition]:
    """The three blocking checks; the one on `raw` judges one file per partition when `raw` is partitioned."""
    return [_raw_interactions_check(raw), items_quality, users_quality]


def _raw_interactions_check(raw: dg.AssetsDefinition) -> dg.AssetChecksDefinition:
    with warnings.catch_warnings():
        # Partitioned asset checks are a preview feature of Dagster 1.13 (pinned <1.14): we rely on them knowingly.
        warnings.simplefilter("ignore", dg.PreviewWarning)

        @dg.asset_check(asset=raw, blocking=True, partitions_def=raw.partitions_def, additional_deps=[items])
        def raw_interactions_quality(
            context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource, quality: QualityResource
        ) -> dg.AssetCheckResult:
            """Schema and types, ids, time window, value range, no event twice (across files too),
            every item in the catalog (when there is one), volume within a factor of the previous batch."""
            started = time.perf_counter()
            partition = context.partition_key if raw.partitions_def else None
            previous = _previous_accepted_rows(context, raw, partition)
            with warehouse.connect() as con:
                report = check_interactions(con, quality.params(), utc_now(), partition, previous)
                record_verdict(con, partition, report.passed)
            return _check_result(report, started, previous_rows=previous)

    return raw_interactions_quality


def _previous_accepted_rows(
    context: dg.AssetCheckExecutionContext, raw: dg.AssetsDefinition, partition: str | None
) -> int | None:
    """Accepted rows of the batch before this one: the previous materialized file, or the previous snapshot."""
    instance = context.instance
    if partition is None:
        records = instance.fetch_materializations(raw.key, limit=2).records[1:]
    else:
        keys = list(instance.get_dynamic_partitions(raw.partitions_def.name))
        done = instance.get_materialized_partitions(raw.key)
        earlier = [key for key in keys[: keys.index(partition)] if key in done]
        if not earlier:
            return None
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=raw.key, asset_partitions=earlier[-1:]), limit=1
        ).records
    if not records:
        return None
    value = records[0].asset_materialization.metadata.get("rows_accepted")
    return int(value.value) if value is not None else None


@dg.asset_check(asset=items, blocking=True)
def items_quality(warehouse: WarehouseResource, quality: QualityResource) -> dg.AssetCheckResult:
    """Schema and types, one row per non-blank item id, no negative price."""
    started = time.perf_counter()
    with warehouse.connect(read_only=True) as con:
        return _check_result(check_items(con, quality.params()), started)


@dg.asset_check(asset=users, blocking=True)
def users_quality(warehouse: WarehouseResource, quality: QualityResource) -> dg.AssetCheckResult:
    """The user id first and a string, one row per non-blank id."""
    started = time.perf_counter()
    with warehouse.connect(read_only=True) as con:
        return _check_result(check_users(con, quality.params()), started)


def _check_result(report: SuiteReport, started: float, **extra: int | None) -> dg.AssetCheckResult:
    failures = report.table(failures_only=True)
    return dg.AssetCheckResult(
        passed=report.passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=report.summary(),
        metadata={
            "rows_checked": report.rows,
            "expectations": len(report.outcomes),
            "expectations_failed": len(report.failures),
            "unexpected_rows": int(failures["unexpected"].fillna(0).sum()),
            "failing_expectations": dg.MetadataValue.md(markdown_preview(failures, rows=100)),
            "bad_rows_sample": dg.MetadataValue.md(markdown_preview(report.bad_rows, rows=100)),
            "all_expectations": dg.MetadataValue.md(markdown_preview(report.table(), rows=100)),
            **{name: value for name, value in extra.items() if value is not None},
            "seconds": round(time.perf_counter() - started, 3),
        },
    )
