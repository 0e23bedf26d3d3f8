"""Retraining as a service: the `retrain` job, its nightly schedule, and a sensor that retrains
when new raw logs have landed and the GPU has room.

What `retrain` runs: every asset of the groups in `RETRAIN_GROUPS` (a group nobody defines yet,
like `fusion` before its stage exists, selects nothing) plus everything they read, except
ingestion. Features (the interaction graph and the like) are rebuilt from the warehouse, so
the models see all logs ingested so far; ingestion itself stays with the runs that land data
(the landing sensor, one run per file) or whoever refreshes a built-in snapshot.

What counts as new data: a `raw_interactions` materialization, which is one ingested file when
your logs are partitioned by file and a fresh snapshot of a built-in source otherwise. Such an
event is covered once a retrain requested by this sensor was made after it (the cursor holds the
newest event it covered) or once a training asset was materialized by a run that started after
it (or by the same run, as `materialize '*'` does), so a manual full run counts as a retrain.
"""

from __future__ import annotations

import zoneinfo
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import dagster as dg
from pydantic import BaseModel, ConfigDict, Field, field_validator

from grec_dagster.resources import GPU_POOL, GpuResource

if TYPE_CHECKING:  # what `define_asset_job` returns; Dagster does not export the name
    from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

RETRAIN_JOB = "retrain"
RETRAIN_GROUPS = ("training", "fusion", "evaluation")
TRAINING_GROUP = "training"
INGESTION_GROUP = "ingestion"
ACTIVE_STATUSES = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]
TRIGGER_TAG = "grec/trigger"


class AutomationSettings(BaseModel):
    """The `automation:` section of GREC_CONFIG."""

    model_config = ConfigDict(extra="forbid")  # a misspelt key must not leave the default in place silently
    cron: str = Field(default="0 2 * * *", description="When the nightly retrain runs.")
    timezone: str = Field(default="UTC", description="IANA time zone the cron is read in.")
    running: bool = Field(default=True, description="Whether the schedule and sensor start switched on.")
    sensor_interval_seconds: int = Field(default=60, ge=10, description="Seconds between the sensor's looks.")

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as error:
            raise ValueError(f"unknown time zone {value!r}") from error
        return value


@dataclass(frozen=True)
class Automation:
    jobs: list[UnresolvedAssetJobDefinition]
    schedules: list[dg.ScheduleDefinition]
    sensors: list[dg.SensorDefinition]


def retrain_selection() -> dg.AssetSelection:
    return dg.AssetSelection.groups(*RETRAIN_GROUPS).upstream() - dg.AssetSelection.groups(INGESTION_GROUP)


def build_automation(
    settings: AutomationSettings, assets: Sequence[dg.AssetsDefinition], raw: dg.AssetKey
) -> Automation:
    status = dg.DefaultSensorStatus.RUNNING if settings.running else dg.DefaultSensorStatus.STOPPED
    job = dg.define_asset_job(
        RETRAIN_JOB,
        selection=retrain_selection(),
        description="Features, training, fusion and evaluation from the logs in the warehouse.",
    )
    schedule = dg.ScheduleDefinition(
        name="nightly_retrain",
        job=job,
        cron_schedule=settings.cron,
        execution_timezone=settings.timezone,
        tags={TRIGGER_TAG: "schedule"},
        default_status=dg.DefaultScheduleStatus(status.value),
    )
    training = [key for asset in assets for key, group in asset.group_names_by_key.items() if group == TRAINING_GROUP]
    sensor = build_retrain_sensor(job, raw, training, settings.sensor_interval_seconds, status)
    return Automation(jobs=[job], schedules=[schedule], sensors=[sensor])


def build_retrain_sensor(
    job: UnresolvedAssetJobDefinition,
    raw: dg.AssetKey,
    training: Sequence[dg.AssetKey],
    interval_seconds: int,
    status: dg.DefaultSensorStatus,
) -> dg.SensorDefinition:
    @dg.sensor(job=job, minimum_interval_seconds=interval_seconds, default_status=status)
    def retrain_on_new_data(context: dg.SensorEvaluationContext, gpu: GpuResource) -> dg.SensorResult | dg.SkipReason:
        """Requests `retrain` once per batch of newly ingested logs, when no retrain is under way and
        the GPU has room (or the CPU may stand in); otherwise its tick says why it waits."""
        instance = context.instance
        fresh = new_raw_events(instance, raw, training, covered=int(context.cursor or 0))
        if not fresh:
            return dg.SkipReason("no new data: no raw-log materialization since the last training run")
        waiting = f"{len(fresh)} new raw-log materialization(s) wait"
        active = instance.get_runs(dg.RunsFilter(job_name=job.name, statuses=ACTIVE_STATUSES), limit=1)
        if active:
            run = active[0]
            return dg.SkipReason(f"retrain run {run.run_id} is {run.status.value}; {waiting} for it to finish")
        pool = gpu_pool_busy(instance)
        if pool:
            return dg.SkipReason(f"GPU busy: {pool}; {waiting}")
        placement = gpu.placement()
        if placement.device is None:
            return dg.SkipReason(f"GPU busy: {placement.reason}; {waiting}")
        newest = max(record.storage_id for record in fresh)
        request = dg.RunRequest(
            run_key=f"retrain-after-{newest}",
            tags={TRIGGER_TAG: "new-data", "grec/new_raw_events": str(len(fresh)), "grec/device": placement.device},
        )
        context.log.info(f"requesting {job.name} for {len(fresh)} new raw-log materialization(s): {placement.reason}")
        return dg.SensorResult(run_requests=[request], cursor=str(newest))

    return retrain_on_new_data


def new_raw_events(
    instance: dg.DagsterInstance, raw: dg.AssetKey, training: Sequence[dg.AssetKey], covered: int
) -> list[dg.EventLogRecord]:
    """Materializations of `raw` after storage id `covered` that the last training run did not see."""
    run_id, started = _latest_training_run(instance, training) or (None, None)
    since = dg.AssetRecordsFilter(asset_key=raw, after_storage_id=covered, after_timestamp=started)
    return [record for record in _all_materializations(instance, since) if record.run_id != run_id]


def gpu_pool_busy(instance: dg.DagsterInstance) -> str | None:
    """Why the `gpu` concurrency pool has no free slot, or None when it has one (or no limit)."""
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return None
    info = storage.get_concurrency_info(GPU_POOL)
    if info.limit is None or len(info.claimed_slots) < info.limit:
        return None
    holders = ", ".join(f"step {slot.step_key} of run {slot.run_id}" for slot in info.claimed_slots) or "none"
    return f"all {info.limit} slot(s) of the {GPU_POOL!r} pool are taken (by {holders})"


def _all_materializations(instance: dg.DagsterInstance, records_filter: dg.AssetRecordsFilter) -> list:
    records, cursor = [], None
    while True:
        page = instance.fetch_materializations(records_filter, limit=1000, cursor=cursor, ascending=True)
        records.extend(page.records)
        if not page.has_more:
            return records
        cursor = page.cursor


def _latest_training_run(instance: dg.DagsterInstance, training: Sequence[dg.AssetKey]) -> tuple[str, float] | None:
    """The run that made the newest training materialization, and when it started."""
    latest = [instance.fetch_materializations(key, limit=1).records for key in training]
    records = [found[0] for found in latest if found]
    if not records:
        return None
    newest = max(records, key=lambda record: record.storage_id)
    run = instance.get_run_record_by_id(newest.run_id)
    started = run.start_time if run is not None and run.start_time is not None else newest.timestamp
    return newest.run_id, started
