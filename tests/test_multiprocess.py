"""The whole graph under Dagster's multiprocess executor (the `materialized` fixture's run), on the
instance `grec init` configures: steps writing DuckDB at once wait for its lock instead of
failing, and the training assets of the `gpu` pool never run at the same time."""

import subprocess
import sys
import time

import dagster as dg
import duckdb

from grec_dagster.definitions import build_definitions
from grec_dagster.layout import TOWERS, Scorer
from grec_dagster.resources import GPU_POOL, WarehouseResource

GPU_STEPS = tuple(spec.asset for spec in TOWERS.values() if spec.scorer == Scorer.EMBEDDINGS)
"""Every trained tower's asset: all of them sit in the `gpu` pool (checked below)."""
DUCKDB_WRITERS = ("raw_interactions", "items", "users")

Span = tuple[float, float]


def step_spans(instance: dg.DagsterInstance, run_id: str) -> dict[str, Span]:
    """(start, end) of each step, from its STEP_START and STEP_SUCCESS events."""
    starts, ends = {}, {}
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None or event.step_key is None:
            continue
        if event.event_type == dg.DagsterEventType.STEP_START:
            starts[event.step_key] = entry.timestamp
        elif event.event_type == dg.DagsterEventType.STEP_SUCCESS:
            ends[event.step_key] = entry.timestamp
    return {step: (starts[step], ends[step]) for step in ends}


def overlap(a: Span, b: Span) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def test_the_whole_graph_ran_in_parallel_processes(materialized):
    with dg.DagsterInstance.from_config(str(materialized.home / "dagster")) as instance:
        spans = step_spans(instance, materialized.run_id)
        engine = " ".join(e.message or "" for e in instance.all_logs(materialized.run_id) if e.dagster_event)
        assert instance.get_run_by_id(materialized.run_id).status == dg.DagsterRunStatus.SUCCESS
    assert "Executing steps using multiprocess executor" in engine
    assert {"evaluation_report", *GPU_STEPS, *DUCKDB_WRITERS} <= set(spans)
    # Some steps ran side by side. Not asked of the DuckDB writers themselves: each takes well under
    # a second, so whether two of them overlap is a matter of scheduling (the lock wait is tested
    # deterministically below).
    assert any(overlap(spans[a], spans[b]) for a in spans for b in spans if a < b)
    with duckdb.connect(str(materialized.home / "warehouse.duckdb"), read_only=True) as con:
        models = {row[0] for row in con.execute("SELECT DISTINCT model FROM evaluation_results").fetchall()}
    assert {"lightgcn", "graphsage", "temporal"} <= models


def test_every_trained_tower_and_only_they_sit_in_the_gpu_pool():
    in_pool = {
        key.to_user_string() for asset in build_definitions().assets for key in asset.keys if asset.op.pool == GPU_POOL
    }
    assert in_pool == set(GPU_STEPS)


def test_the_gpu_pool_ran_one_training_step_at_a_time(materialized):
    with dg.DagsterInstance.from_config(str(materialized.home / "dagster")) as instance:
        spans = step_spans(instance, materialized.run_id)
        waited = [
            e.dagster_event.step_key
            for e in instance.all_logs(materialized.run_id)
            if e.dagster_event and e.message == "Step blocked by limit for pool gpu"
        ]
        gpu = instance.event_log_storage.get_concurrency_info("gpu")
    assert not any(overlap(spans[a], spans[b]) for a in GPU_STEPS for b in GPU_STEPS if a < b)
    assert set(waited) & set(GPU_STEPS)  # a step became ready while another held the slot, and waited
    assert (gpu.limit, gpu.claimed_slots) == (1, [])


def test_a_second_writer_process_waits_for_the_duckdb_lock(tmp_path):
    path = tmp_path / "warehouse.duckdb"
    hold = "import duckdb, sys, time; con = duckdb.connect(sys.argv[1]); print('locked', flush=True); time.sleep(3)"
    holder = subprocess.Popen([sys.executable, "-c", hold, str(path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    started = time.monotonic()
    with WarehouseResource(path=str(path)).connect() as con:
        waited = time.monotonic() - started
        con.execute("CREATE TABLE written AS SELECT 1 AS one")
    assert holder.wait() == 0
    assert waited > 1.0  # it retried on the lock until the other process let go, instead of failing
