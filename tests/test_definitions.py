"""The Dagster layer: definitions load, and the whole asset graph materializes on small data."""

import subprocess
import sys
from itertools import pairwise

import dagster as dg
import duckdb
import pytest
import yaml
from conftest import DEMO_RUN_CONFIG

from assets.priority import LONGEST_CHAIN
from grec_dagster.definitions import ASSETS, build_definitions, build_resources

FAST_TRAINING = {
    "ops": {
        "lightgcn_checkpoint": {"config": {"epochs": 4, "batch_size": 1024}},
        "graphsage_checkpoint": {"config": {"epochs": 2, "batch_size": 1024, "dim": 16}},
        "temporal_checkpoint": {"config": {"epochs": 2, "dim": 16, "neighbors": 5, "memory": True}},
        "temporal_profiles_checkpoint": {"config": {"epochs": 2, "dim": 16, "neighbors": 5, "memory": True}},
        "text_tower_checkpoint": {"config": {"epochs": 2, "batch_size": 1024}},
        "sasrec_checkpoint": {"config": {"epochs": 2}},
        "fusion_checkpoint": {"config": {"epochs": 3}},
    }
}


def test_definitions_load_and_validate(grec_home):
    defs = build_definitions()
    keys = {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {"raw_interactions", "items", "users", "user_histories", "interaction_graph", "lightgcn_checkpoint",
            "popularity_baselines", "evaluation_report", "temporal_graph", "temporal_checkpoint",
            "graphsage_checkpoint", "temporal_profiles_checkpoint", "user_profiles", "item_text_embeddings",
            "profile_embeddings", "text_tower_checkpoint", "ease_checkpoint", "sasrec_checkpoint", "fusion_checkpoint", "recommendations", "mlflow_comparison"} <= keys
    done = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-m", "grec_dagster.definitions"],
        capture_output=True, text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]


def test_unknown_resource_in_user_config_is_rejected(grec_home):
    with pytest.raises(ValueError, match="warehous"):
        build_resources({"warehous": {"path": "x"}})


def test_whole_graph_materializes_on_small_synthetic(grec_home):
    resources = build_resources({"source": {"kind": "synthetic", "synthetic_interactions": 6000, "synthetic_days": 30}})
    with dg.instance_for_test(temp_dir=str(grec_home / "dagster")) as instance:
        result = dg.materialize(ASSETS, resources=resources, instance=instance, run_config=FAST_TRAINING)
        assert result.success
        lightgcn = result.asset_materializations_for_node("lightgcn_checkpoint")[0].metadata
        assert lightgcn["mlflow_run"].value.startswith("http://127.0.0.1:5000/#/experiments/")
        # a verdict per validation segment each run validates on (cold items only where the split has any)
        for asset, segments in (
            ("lightgcn_checkpoint", {"all", "head_items", "tail_items"}),
            ("temporal_checkpoint", {"all", "head_items", "tail_items"}),
            ("fusion_checkpoint", {"all"}),
        ):
            metadata = result.asset_materializations_for_node(asset)[0].metadata
            assert {key.removeprefix("grokking.") for key in metadata if key.startswith("grokking.")} >= segments, asset
            assert metadata["watch"].value, asset  # what the grokking watch did, said in every training run
        temporal = result.asset_materializations_for_node("temporal_checkpoint")[0].metadata
        assert temporal["events_per_batch"].value == 200  # a short stream keeps TGN's batch: no step cap reached
        graphsage = result.asset_materializations_for_node("graphsage_checkpoint")[0].metadata
        assert graphsage["pairs_per_batch"].value == 1024  # the configured batch: far below the step cap
        fusion = result.asset_materializations_for_node("fusion_checkpoint")[0].metadata
        rows_read = result.asset_materializations_for_node("raw_interactions")[0].metadata["rows_read"].value
        assert set(fusion["towers"].value) == {
            "popularity", "lightgcn", "graphsage", "temporal", "ease", "sasrec", "text_tower"
        }
        recommendations = result.asset_materializations_for_node("recommendations")[0].metadata
        assert recommendations["rows"].value > 0
        assert instance.get_latest_materialization_event(dg.AssetKey("evaluation_report")) is not None
    with duckdb.connect(str(grec_home / "warehouse.duckdb"), read_only=True) as con:
        models = {row[0] for row in con.execute("SELECT DISTINCT model FROM evaluation_results").fetchall()}
        accepted = con.execute("SELECT count(*) FROM interactions").fetchone()[0]
        quarantined = con.execute("SELECT count(*) FROM quarantine").fetchone()[0]
    assert models == {
        "most_popular", "most_popular_recent", "lightgcn", "graphsage", "temporal", "temporal_profiles", "ease",
        "sasrec", "text_tower", "static_fusion", "gated_fusion",
    }
    assert accepted + quarantined == rows_read
    assert (grec_home / "checkpoints" / "lightgcn" / "model.safetensors").exists()
    assert (grec_home / "checkpoints" / "graphsage" / "model.safetensors").exists()
    for tower in ("lightgcn", "graphsage", "temporal", "temporal_profiles", "ease", "sasrec", "text_tower"):
        assert (grec_home / "checkpoints" / tower / "grokking.json").exists()


def test_the_demo_run_config_fits_the_whole_graph(grec_home):
    """`make demo` materializes `*` with configs/demo.yaml: its executor config must validate."""
    demo = yaml.safe_load(DEMO_RUN_CONFIG.read_text())
    job = build_definitions().resolve_implicit_global_asset_job_def()
    executor = dg.validate_run_config(job, demo)["execution"]["multi_or_in_process_executor"]
    assert executor["multiprocess"]["max_concurrent"] == 2


def test_the_profile_chain_and_only_it_starts_first():
    """The steps marked first form one dependency chain, from the histories to the text tower."""
    graph = build_definitions().resolve_asset_graph()
    first = [key.to_user_string() for key in graph.get_all_asset_keys()
             if graph.get(key).assets_def.op.tags.get("dagster/priority") == LONGEST_CHAIN["dagster/priority"]]
    chain = ["user_histories", "user_profiles", "profile_embeddings", "text_tower_checkpoint"]
    assert sorted(first) == sorted(chain)
    for upstream, downstream in pairwise(chain):
        assert dg.AssetKey(upstream) in graph.get(dg.AssetKey(downstream)).parent_keys
