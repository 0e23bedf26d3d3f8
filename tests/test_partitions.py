"""Partitions through Dagster: one partition per landed file, re-materializing replaces only that
file, a failing blocking check stops what is downstream, and the sensor turns new files into partitions."""

import hashlib
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path

import dagster as dg
import duckdb
import pandas as pd
import pytest

from assets.ingestion import LANDED_FILES, materialize_in_process
from grec_dagster.data.errors import DataSourceError
from grec_dagster.data.landing import LandedFile, landed_files, plan_landing, read_cursor
from grec_dagster.data.schema import SourceFrames
from grec_dagster.data.synthetic import SyntheticConfig, generate_synthetic
from grec_dagster.data.validation import validate_interactions
from grec_dagster.data.warehouse import replace_batches
from grec_dagster.definitions import build_definitions

LOG_COLUMNS = ["user_id", "item_id", "ts", "event", "value"]
BAD = Path(__file__).parent / "data" / "bad"
SENSOR = "landed_interaction_files"


def settle(*paths: Path) -> None:
    """Date files a minute back, as if their copy into the landing folder had long finished."""
    past = time.time() - 60
    for path in paths:
        os.utime(path, (past, past))


@pytest.fixture
def shop() -> SourceFrames:
    return generate_synthetic(SyntheticConfig(n_interactions=3000, n_days=30))


@pytest.fixture
def landing(grec_home: Path, shop: SourceFrames) -> Path:
    """A landing folder with two daily files and the catalog beside it."""
    folder = grec_home / "landing"
    folder.mkdir()
    shop.interactions[LOG_COLUMNS].iloc[:1500].to_csv(folder / "day1.csv", index=False)
    shop.interactions[LOG_COLUMNS].iloc[1500:].to_csv(folder / "day2.csv", index=False)
    shop.items.to_csv(grec_home / "items.csv", index=False)
    settle(folder / "day1.csv", folder / "day2.csv")
    return folder


def files_definitions(landing: Path, catalog: bool = True) -> dg.Definitions:
    source = {"kind": "files", "interactions_path": str(landing / "*.csv")}
    return build_definitions(
        {"source": source | ({"items_path": str(landing.parent / "items.csv")} if catalog else {})}
    )


def materialize(
    defs: dg.Definitions, instance: dg.DagsterInstance, partition: str, *assets: str
) -> dg.ExecuteInProcessResult:
    """Materialize `assets` (with their checks) for one file, as a run the sensor requests would."""
    return materialize_in_process(defs, instance, list(assets), partition)


def warehouse_rows(home: Path, table: str) -> pd.DataFrame:
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as con:
        return con.execute(f"SELECT * FROM {table} ORDER BY source, source_row").df()


def test_partitioning_follows_the_source(grec_home: Path, landing: Path):
    snapshot, by_file = build_definitions(), files_definitions(landing)
    for defs in (snapshot, by_file):
        specs = {spec.name: spec for checks in defs.asset_checks for spec in checks.check_specs}
        assert set(specs) == {"raw_interactions_quality", "items_quality", "users_quality", "user_profiles_fidelity"}
        assert all(spec.blocking for name, spec in specs.items() if name.endswith("_quality"))  # data gates
        assert not specs["user_profiles_fidelity"].blocking  # profiles that miss a target warn, never stop training
    assert snapshot.resolve_assets_def("raw_interactions").partitions_def is None
    assert SENSOR not in {sensor.name for sensor in snapshot.sensors}
    assert by_file.resolve_assets_def("raw_interactions").partitions_def == LANDED_FILES
    assert by_file.resolve_sensor_def(SENSOR) is not None
    assert by_file.resolve_assets_def("interaction_graph").partitions_def is None


def test_each_file_is_a_partition_and_rematerializing_replaces_only_it(
    grec_home: Path, landing: Path, shop: SourceFrames
):
    # Rows of an earlier source (the synthetic snapshot) must not survive the switch to files.
    with duckdb.connect(str(grec_home / "warehouse.duckdb")) as con:
        replace_batches(con, {"synthetic": validate_interactions(shop.interactions.iloc[:100], "synthetic")})
    defs = files_definitions(landing)
    with dg.instance_for_test(temp_dir=str(grec_home / "dagster")) as instance:
        instance.add_dynamic_partitions(LANDED_FILES.name, ["day1.csv", "day2.csv"])
        for day in ("day1.csv", "day2.csv"):
            result = materialize(defs, instance, day, "raw_interactions")
            assert result.success
            metadata = result.asset_materializations_for_node("raw_interactions")[0].metadata
            assert metadata["row_accounting"].value == (
                f"read 1500 = accepted {metadata['rows_accepted'].value} + quarantined {metadata['rows_quarantined'].value}"
            )
        accepted, quarantined = warehouse_rows(grec_home, "interactions"), warehouse_rows(grec_home, "quarantine")
        assert set(accepted.source) == {"day1.csv", "day2.csv"}
        counts = pd.concat([accepted.source, quarantined.source]).value_counts().sort_index()
        assert counts.to_dict() == {"day1.csv": 1500, "day2.csv": 1500}
        day2_before = accepted[accepted.source == "day2.csv"].reset_index(drop=True)

        broken = [["", "i000001", "2024-01-02", "view", 1], ["u1", "i000001", "2999-01-01", "view", 1]]
        rewritten = pd.concat([shop.interactions[LOG_COLUMNS].iloc[:500], pd.DataFrame(broken, columns=LOG_COLUMNS)])
        rewritten.to_csv(landing / "day1.csv", index=False)
        assert materialize(defs, instance, "day1.csv", "raw_interactions").success

        accepted, quarantined = warehouse_rows(grec_home, "interactions"), warehouse_rows(grec_home, "quarantine")
        assert (accepted.source == "day1.csv").sum() == 500
        assert quarantined[quarantined.source == "day1.csv"].source_row.tolist() == [501, 502]
        pd.testing.assert_frame_equal(accepted[accepted.source == "day2.csv"].reset_index(drop=True), day2_before)


def test_a_failing_blocking_check_stops_everything_downstream(grec_home: Path, landing: Path, shop: SourceFrames):
    """overlap.csv repeats events of day1.csv (an export sent twice); tiny.csv is a tenth of a tenth of it."""
    log = shop.interactions[LOG_COLUMNS]
    pd.concat([log.iloc[:200], log.iloc[1500:1700]]).to_csv(landing / "overlap.csv", index=False)
    log.iloc[1700:1705].to_csv(landing / "tiny.csv", index=False)
    defs = files_definitions(landing)
    with dg.instance_for_test(temp_dir=str(grec_home / "dagster")) as instance:
        instance.add_dynamic_partitions(LANDED_FILES.name, ["day1.csv", "overlap.csv", "tiny.csv"])
        passing = materialize(defs, instance, "day1.csv", "raw_interactions", "items", "interaction_graph")
        assert passing.success and passing.asset_materializations_for_node("interaction_graph")

        blocked = materialize(defs, instance, "overlap.csv", "raw_interactions", "items", "interaction_graph")
        assert not blocked.success
        [check] = [e for e in blocked.get_asset_check_evaluations() if e.check_name == "raw_interactions_quality"]
        assert not check.passed and check.metadata["unexpected_rows"].value == 200
        assert "copies" in check.metadata["failing_expectations"].value
        assert "day1.csv" not in check.metadata["bad_rows_sample"].value  # the sample is overlap.csv's own rows
        assert blocked.asset_materializations_for_node("raw_interactions")
        assert not blocked.asset_materializations_for_node("interaction_graph")

        # A later run that only rebuilds the graph (a nightly retrain) still leaves the failed file out.
        retrain = dg.materialize(
            defs.assets,
            selection=dg.AssetSelection.assets("interaction_graph"),
            resources=defs.resources,
            instance=instance,
        )
        graph = retrain.asset_materializations_for_node("interaction_graph")[0].metadata
        held = warehouse_rows(grec_home, "interactions").source.eq("overlap.csv").sum()
        assert held == 400 and graph["held_back_rows"].value == held
        assert graph["events"].value == warehouse_rows(grec_home, "interactions").source.eq("day1.csv").sum()

        shrunk = materialize(defs, instance, "tiny.csv", "raw_interactions")
        [check] = shrunk.get_asset_check_evaluations()
        assert not check.passed and check.metadata["previous_rows"].value == 400
        assert "expect_table_row_count_to_be_between" in check.metadata["failing_expectations"].value


def test_a_hostile_file_name_is_just_a_partition_key(grec_home: Path, landing: Path):
    hostile = "x'); DROP TABLE interactions; --.csv"
    for day in ("day1.csv", "day2.csv"):
        (landing / day).unlink()
    shutil.copy(BAD / "injection.csv", landing / hostile)
    defs = files_definitions(landing, catalog=False)
    with dg.instance_for_test(temp_dir=str(grec_home / "dagster")) as instance:
        instance.add_dynamic_partitions(LANDED_FILES.name, [hostile])
        result = materialize(defs, instance, hostile, "raw_interactions")
    stored = warehouse_rows(grec_home, "interactions")
    assert result.success and stored.source.tolist() == [hostile] * 5
    assert stored.item_id[0] == "i1'); DROP TABLE interactions; --"


class Sensor:
    """The landing sensor ticking as the daemon runs it: its cursor carried from tick to tick, the
    partitions it asks for added to the instance."""

    def __init__(self, defs: dg.Definitions, instance: dg.DagsterInstance):
        self.defs, self.instance, self.cursor = defs, instance, None

    def tick(self) -> dg.SensorResult:
        sensor = self.defs.resolve_sensor_def(SENSOR)
        with dg.build_sensor_context(
            instance=self.instance, resources=self.defs.resources, definitions=self.defs, cursor=self.cursor
        ) as context:
            result = sensor(context)
        for request in result.dynamic_partitions_requests:
            self.instance.add_dynamic_partitions(request.partitions_def_name, request.partition_keys)
        self.cursor = result.cursor
        return result

    def requested(self) -> dict[str, str]:
        """Partition -> run key of what the next tick requests."""
        return {request.partition_key: request.run_key for request in self.tick().run_requests}


def test_the_sensor_turns_landed_files_into_partitions(grec_home: Path, landing: Path):
    defs = files_definitions(landing)
    (landing / "arriving.csv").write_text("user_id,item_id,ts\nu1,i000001,2024-01-02\n")  # still being copied in
    with dg.instance_for_test(temp_dir=str(grec_home / "dagster")) as instance:
        sensor = Sensor(defs, instance)
        first = sensor.tick()
        assert [r.partition_keys for r in first.dynamic_partitions_requests] == [["day1.csv", "day2.csv"]]
        assert [r.partition_key for r in first.run_requests] == ["day1.csv", "day2.csv"]
        again = sensor.tick()
        assert again.dynamic_partitions_requests == [] and again.run_requests == []  # each version once

        assert materialize(defs, instance, "day1.csv", "raw_interactions").success
        settle(landing / "arriving.csv")
        later = sensor.tick()
        assert [r.partition_keys for r in later.dynamic_partitions_requests] == [["arriving.csv"]]
        assert [r.partition_key for r in later.run_requests] == ["arriving.csv"]

        (landing / "day2.csv").write_text("user_id,item_id,ts\nu1,i000001,2024-01-02\n")
        settle(landing / "day2.csv")
        rewritten = sensor.requested()
        assert list(rewritten) == ["day2.csv"]
        assert rewritten["day2.csv"] not in {r.run_key for r in first.run_requests}
        assert instance.get_dynamic_partitions(LANDED_FILES.name) == ["day1.csv", "day2.csv", "arriving.csv"]


def test_each_new_content_of_a_file_is_requested_once_even_after_its_check_failed(
    grec_home: Path, landing: Path, shop: SourceFrames
):
    """overlap.csv repeats day1.csv's events, so its blocking check fails; fixed, it is ingested again."""
    log = shop.interactions[LOG_COLUMNS]
    (landing / "day2.csv").unlink()
    overlap = landing / "overlap.csv"
    pd.concat([log.iloc[:200], log.iloc[1500:1900]]).to_csv(overlap, index=False)
    settle(overlap)
    defs = files_definitions(landing)
    with dg.instance_for_test(temp_dir=str(grec_home / "dagster")) as instance:
        sensor = Sensor(defs, instance)
        assert list(sensor.requested()) == ["day1.csv", "overlap.csv"]
        assert materialize(defs, instance, "day1.csv", "raw_interactions").success
        failed = materialize(defs, instance, "overlap.csv", "raw_interactions")
        assert [check.passed for check in failed.get_asset_check_evaluations()] == [False]
        assert failed.asset_materializations_for_node("raw_interactions")  # stored, held back from training

        settle(overlap)  # touched, or copied in again: same content, no new request
        assert sensor.requested() == {}
        log.iloc[1500:1900].to_csv(overlap, index=False)  # fixed: the repeated events removed
        settle(overlap)
        fixed = f"overlap.csv@{hashlib.sha256(overlap.read_bytes()).hexdigest()}"
        assert sensor.requested() == {"overlap.csv": fixed}
        assert sensor.requested() == {}

        # A sensor that lost its cursor asks only for what no materialization has read.
        forgetful = Sensor(defs, instance)
        assert forgetful.requested() == {"overlap.csv": fixed}
        passed = materialize(defs, instance, "overlap.csv", "raw_interactions")
        assert [check.passed for check in passed.get_asset_check_evaluations()] == [True]
        metadata = passed.asset_materializations_for_node("raw_interactions")[0].metadata
        assert f"overlap.csv@{metadata['content_version'].value}" == fixed
        assert Sensor(defs, instance).requested() == {}


def test_which_partitions_are_new(tmp_path: Path):
    landed = [LandedFile(tmp_path / name, 10, 1, version=f"{name} v2") for name in ("a.csv", "b.csv", "c.csv")]
    seen = {"b.csv": LandedFile(Path("b.csv"), 10, 1, "b.csv v2")}
    ingested = {"a.csv": "a.csv v2", "b.csv": "b.csv v1"}.get
    plan = plan_landing(landed, partitions=["a.csv", "b.csv", "gone.csv"], seen=seen, ingested_version=ingested)
    assert plan.new_partitions == ["c.csv"]
    assert [f.partition_key for f in plan.to_ingest] == ["c.csv"]  # a: ingested as is; b: requested before
    assert read_cursor(plan.cursor) == {f.partition_key: replace(f, path=Path(f.partition_key)) for f in landed}
    assert plan_landing(landed, ["a.csv", "b.csv"], seen={}, ingested_version=ingested).to_ingest == landed[1:]
    assert plan_landing([], partitions=["a.csv"], seen={}, ingested_version=ingested).new_partitions == []


def test_landed_files_wait_to_settle_and_must_have_distinct_names(tmp_path: Path):
    for folder in ("x", "y"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "day.csv").write_text("user_id,item_id,ts\n")
    assert landed_files(str(tmp_path / "*" / "*.csv"), settled_before=time.time() - 60) == []
    with pytest.raises(DataSourceError, match="two landed files share this name"):
        landed_files(str(tmp_path / "*" / "*.csv"), settled_before=time.time() + 60)
    assert landed_files(str(tmp_path / "none" / "*.csv"), settled_before=time.time()) == []


def test_a_quiet_file_keeps_its_version_unread_and_a_rewritten_one_is_hashed(tmp_path: Path):
    day = tmp_path / "day.csv"
    day.write_text("user_id,item_id,ts\nu1,i1,2024-01-02\n")
    settle(day)
    [landed] = landed_files(str(tmp_path / "*.csv"), settled_before=time.time())
    assert landed.version == hashlib.sha256(day.read_bytes()).hexdigest()
    # The cursor's version is trusted while size and modification time are those it recorded.
    recorded = {"day.csv": replace(landed, version="as recorded")}
    assert landed_files(str(tmp_path / "*.csv"), time.time(), recorded)[0].version == "as recorded"
    day.write_text("user_id,item_id,ts\nu2,i1,2024-01-02\n")
    settle(day)
    assert landed_files(str(tmp_path / "*.csv"), time.time(), recorded)[0].version == (
        hashlib.sha256(day.read_bytes()).hexdigest()
    )
