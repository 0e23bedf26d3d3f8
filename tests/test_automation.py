"""The retrain job, its schedule, and the sensor that retrains on new data when the GPU has room."""

import os
import time
import uuid
from pathlib import Path

import dagster as dg
import pytest
import yaml

from assets.ingestion import LANDED_FILES
from grec_dagster import resources
from grec_dagster.automation import RETRAIN_JOB, retrain_selection
from grec_dagster.cli import DAGSTER_YAML
from grec_dagster.data.synthetic import SyntheticConfig, generate_synthetic
from grec_dagster.definitions import build_definitions
from grec_dagster.settings import load_user_config
from grec_dagster.training.devices import DeviceStatus, accelerator_for, place

SENSOR = "retrain_on_new_data"
SNAPSHOT = {"source": {"kind": "synthetic", "synthetic_interactions": 2000, "synthetic_days": 20}}


def stand_in(key: str) -> dg.AssetsDefinition:
    """An asset with `key` that does nothing: its materialization is all the sensor reads."""

    @dg.asset(key=key)
    def _stand_in() -> None:
        return None

    return _stand_in


def record(instance: dg.DagsterInstance, *keys: str) -> None:
    """One run materializing `keys`, as a real run would record them."""
    assert dg.materialize([stand_in(key) for key in keys], instance=instance).success


def tick(defs: dg.Definitions, instance: dg.DagsterInstance, cursor: str | None = None):
    # A context manager, as the daemon opens it: the `gpu` resource is torn down after the tick.
    with dg.build_sensor_context(
        instance=instance, resources=defs.resources, definitions=defs, cursor=cursor
    ) as context:
        return defs.resolve_sensor_def(SENSOR)(context)


def test_retrain_selects_features_training_and_evaluation_but_not_ingestion(grec_home):
    defs = build_definitions()
    graph = defs.resolve_asset_graph()
    selected = {key.to_user_string() for key in retrain_selection().resolve(graph)}
    assert {
        "interaction_graph",
        "temporal_graph",
        "popularity_baselines",
        "lightgcn_checkpoint",
        "graphsage_checkpoint",
        "temporal_checkpoint",
        "evaluation_report",
        "user_profiles",
        "text_tower_checkpoint",
        "temporal_profiles_checkpoint",
        "fusion_checkpoint",
        "recommendations",
    } <= selected
    assert not selected & {"raw_interactions", "items", "users"}
    job = defs.resolve_job_def(RETRAIN_JOB)
    assert {key.to_user_string() for key in job.asset_layer.executable_asset_keys} == selected


def test_nightly_schedule_defaults_and_config(grec_home, tmp_path, monkeypatch):
    nightly = build_definitions().resolve_schedule_def("nightly_retrain")
    assert (nightly.cron_schedule, nightly.execution_timezone, nightly.job_name) == ("0 2 * * *", "UTC", RETRAIN_JOB)
    assert nightly.default_status == dg.DefaultScheduleStatus.RUNNING

    config = tmp_path / "grec.yaml"
    config.write_text(
        "automation: {cron: '30 3 * * 1', timezone: Europe/Berlin, running: false}\nsource: {kind: synthetic}\n"
    )
    monkeypatch.setenv("GREC_CONFIG", str(config))
    defs = build_definitions(load_user_config())
    weekly = defs.resolve_schedule_def("nightly_retrain")
    assert (weekly.cron_schedule, weekly.execution_timezone) == ("30 3 * * 1", "Europe/Berlin")
    assert weekly.default_status == dg.DefaultScheduleStatus.STOPPED
    assert defs.resolve_sensor_def(SENSOR).default_status == dg.DefaultSensorStatus.STOPPED
    with pytest.raises(ValueError, match="unknown time zone"):
        build_definitions({"automation": {"timezone": "Mars/Olympus"}})
    with pytest.raises(ValueError, match="cronn"):
        build_definitions({"automation": {"cronn": "0 3 * * *"}})


def test_a_new_partition_with_a_free_gpu_requests_one_retrain(grec_home: Path):
    landing = grec_home / "landing"
    landing.mkdir()
    log = generate_synthetic(SyntheticConfig(n_interactions=2000, n_days=20)).interactions
    for day, rows in (("day1.csv", log.iloc[:1000]), ("day2.csv", log.iloc[1000:])):
        rows[["user_id", "item_id", "ts", "event", "value"]].to_csv(landing / day, index=False)
        past = time.time() - 60
        os.utime(landing / day, (past, past))
    defs = build_definitions({"source": {"kind": "files", "interactions_path": str(landing / "*.csv")}})
    with dg.instance_for_test(temp_dir=str(grec_home / "dagster")) as instance:
        assert tick(defs, instance).skip_message.startswith("no new data")
        instance.add_dynamic_partitions(LANDED_FILES.name, ["day1.csv", "day2.csv"])

        def ingest(day: str) -> None:
            ingested = dg.materialize(
                defs.assets,
                selection=["raw_interactions"],
                partition_key=day,
                resources=defs.resources,
                instance=instance,
            )
            assert ingested.success

        ingest("day1.csv")
        first = tick(defs, instance)
        [request] = first.run_requests
        assert request.tags["grec/device"] == "cpu" and request.tags["grec/new_raw_events"] == "1"
        assert tick(defs, instance, first.cursor).skip_message.startswith("no new data")
        assert [r.run_key for r in tick(defs, instance).run_requests] == [request.run_key]  # the daemon drops it

        ingest("day2.csv")
        ingest("day1.csv")  # re-ingesting a rewritten file is new data too
        second = tick(defs, instance, first.cursor)
        [again] = second.run_requests
        assert again.run_key != request.run_key and again.tags["grec/new_raw_events"] == "2"


def test_a_retrain_under_way_defers_the_next(grec_home: Path):
    defs = build_definitions(SNAPSHOT)
    with dg.instance_for_test(temp_dir=str(grec_home / "dagster")) as instance:
        record(instance, "raw_interactions")
        running = dg.DagsterRun(job_name=RETRAIN_JOB, run_id=str(uuid.uuid4()), status=dg.DagsterRunStatus.STARTED)
        instance.add_run(running)
        skipped = tick(defs, instance)
        assert f"retrain run {running.run_id} is STARTED" in skipped.skip_message
        instance.report_run_failed(running)
        assert tick(defs, instance).run_requests


def test_training_after_the_data_covers_it(grec_home: Path):
    defs = build_definitions(SNAPSHOT)
    with dg.instance_for_test(temp_dir=str(grec_home / "dagster")) as instance:
        record(instance, "raw_interactions", "lightgcn_checkpoint")  # `materialize '*'`: raw and training in one run
        assert tick(defs, instance).skip_message.startswith("no new data")
        record(instance, "raw_interactions")  # a new snapshot
        assert tick(defs, instance).run_requests
        record(instance, "graphsage_checkpoint")  # someone retrained by hand
        assert tick(defs, instance).skip_message.startswith("no new data")


def test_a_full_gpu_pool_skips_with_its_reason(grec_home: Path):
    defs = build_definitions(SNAPSHOT)
    grec_instance = yaml.safe_load(DAGSTER_YAML)  # instance_for_test rewrites dagster.yaml: hand it ours
    with dg.instance_for_test(temp_dir=str(grec_home / "dagster"), overrides=grec_instance) as instance:
        record(instance, "raw_interactions")
        storage = instance.event_log_storage
        run_id = str(uuid.uuid4())
        assert storage.get_concurrency_info("gpu").limit == 1  # the default limit `grec init` configures
        storage.initialize_concurrency_limit_to_default("gpu")  # as a step's first claim does
        assert storage.claim_concurrency_slot("gpu", run_id, "lightgcn_checkpoint").is_claimed
        message = tick(defs, instance).skip_message
        assert message.startswith("GPU busy: all 1 slot(s) of the 'gpu' pool are taken")
        assert f"step lightgcn_checkpoint of run {run_id}" in message
        storage.free_concurrency_slot_for_step(run_id, "lightgcn_checkpoint")
        assert tick(defs, instance).run_requests


@pytest.mark.parametrize(
    ("fallback", "gpus", "expected"),
    [
        (False, [DeviceStatus(0, "L4", 24000, 900, 97.0)], None),
        (True, [DeviceStatus(0, "L4", 24000, 900, 97.0)], "cpu"),
        (False, [], None),
        (False, [DeviceStatus(0, "L4", 24000, 900, 97.0), DeviceStatus(1, "L4", 24000, 20000, 3.0)], "cuda:1"),
    ],
)
def test_gpu_capacity_and_cpu_fallback(grec_home: Path, monkeypatch, fallback, gpus, expected):
    monkeypatch.setattr(resources, "probe_devices", lambda: gpus)  # the machine has no GPU to fill
    defs = build_definitions(SNAPSHOT | {"gpu": {"allow_cpu_fallback": fallback, "min_free_memory_mb": 4096}})
    with dg.instance_for_test(temp_dir=str(grec_home / "dagster")) as instance:
        record(instance, "raw_interactions")
        result = tick(defs, instance)
        if expected is None:
            assert result.skip_message.startswith("GPU busy: ")
            assert "CPU fallback is off" in result.skip_message
            assert ("no CUDA device" if not gpus else "cuda:0 (L4) 900/24000 MiB free, 97% busy") in result.skip_message
        else:
            [request] = result.run_requests
            assert request.tags["grec/device"] == expected


def test_placement_prefers_the_gpu_with_most_room():
    busy, idle, unknown = (
        DeviceStatus(i, "A10", 24000, free, util)
        for i, free, util in ((0, 20000, 99.0), (1, 8000, 10.0), (2, 12000, None))
    )
    assert place([busy, idle, unknown], 4096, 90.0, False).device == "cuda:2"
    assert place([busy, idle], 4096, 90.0, False).device == "cuda:1"
    assert place([busy, idle], 16000, 90.0, False).device is None
    assert place([busy, idle], 16000, 100.0, False).device == "cuda:0"
    assert place([], 0, 100.0, True).device == "cpu"


def test_a_cpu_placement_gives_a_cpu_accelerator():
    assert str(accelerator_for("cpu").device) == "cpu"
