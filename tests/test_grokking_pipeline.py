"""End to end on a shop that groks (`data/grokking_shop.py`), through the assets, MLflow and the
fusion: GraphSAGE memorises the shop under light weight decay, its validation stalls and early
stopping would end it; the grokking watch keeps it training under weight decay, it generalizes
during the watch, the detector records the event in MLflow as it happens, and the fusion proposes
a shift toward GraphSAGE and keeps it only if held-out validation rises, recording both numbers."""

from pathlib import Path

import dagster as dg
import pytest
from mlflow.tracking import MlflowClient

from grec_dagster.cli import init_home
from grec_dagster.definitions import build_definitions

SELECTION = ["raw_interactions", "items", "users", "interaction_graph", "popularity_baselines",
             "lightgcn_checkpoint", "graphsage_checkpoint", "fusion_checkpoint"]
GRAPHSAGE = {
    "dim": 128, "fanouts": [0, 0], "id_dropout": 0.5, "dropout": 0.0, "negatives": 16, "lr": 0.01, "batch_size": 4096,
    "epochs": 1000, "eval_every": 10, "weight_decay": 0.1, "patience": 10, "watch_epochs": 800,
    "watch_weight_decay": 2.0,
}
"""The shop's recipe, but with weight decay 0.1 until early stopping would stop: that memorises and
leaves validation at chance. The watch then trains on under the recipe's weight decay 2.0."""
RUN_CONFIG = {
    "ops": {
        "graphsage_checkpoint": {"config": GRAPHSAGE},
        "lightgcn_checkpoint": {"config": {"epochs": 20}},
        "fusion_checkpoint": {"config": {"towers": ["popularity", "lightgcn", "graphsage"]}},
    }
}


@pytest.fixture(scope="module")
def grokked(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, dict], MlflowClient, Path]:
    """One pipeline run on the grokking shop (~2 min on 2 cores): each asset's metadata, the MLflow store."""
    home = tmp_path_factory.mktemp("grokking-shop") / "grec"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GREC_HOME", str(home))
        patch.setenv("DAGSTER_HOME", str(home / "dagster"))
        patch.delenv("GREC_CONFIG", raising=False)
        init_home()
        defs = build_definitions({"source": {"kind": "grokking-shop"}})
        with dg.instance_for_test(temp_dir=str(home / "dagster")) as instance:
            result = dg.materialize(
                defs.assets, selection=SELECTION, resources=defs.resources, instance=instance, run_config=RUN_CONFIG
            )
            assert result.success
            metadata = {
                name: {key: value.value for key, value in result.asset_materializations_for_node(name)[0].metadata.items()}
                for name in ("graphsage_checkpoint", "fusion_checkpoint")
            }
        return metadata, MlflowClient(defs.resources["mlflow"].tracking_uri), home


def run_of(client: MlflowClient, name: str):
    experiments = [experiment.experiment_id for experiment in client.search_experiments()]
    [run] = client.search_runs(experiments, f"tags.mlflow.runName = '{name}'")
    return run


def test_graphsage_groks_during_its_watch(grokked):
    metadata, _, _ = grokked
    graphsage = metadata["graphsage_checkpoint"]
    event = next(event for event in graphsage["grokking"]["events"] if event["segment"] == "all")
    started = graphsage["watch_started_epoch"]
    assert graphsage["watch_weight_decay"] == 2.0 and graphsage["watch_epochs_used"] > 0
    assert started < event["epoch"] <= graphsage["best_epoch"]  # the jump came under the watch, and is what was kept
    assert event["plateau_epoch"] < started  # memorised before the watch began
    assert graphsage["best_valid_ndcg@20"] > 5 * event["val_before"] and graphsage["best_valid_ndcg@20"] > 0.8
    assert graphsage["grokking.all"].startswith("grokked at epoch")
    assert graphsage["watch"].startswith("validation improved under the watch")


def test_the_event_is_in_mlflow_at_its_step_with_the_curves(grokked):
    metadata, client, _ = grokked
    run = run_of(client, "graphsage")
    event = next(event for event in metadata["graphsage_checkpoint"]["grokking"]["events"] if event["segment"] == "all")
    [jump] = client.get_metric_history(run.info.run_id, "grokking_jump/all")
    assert jump.step == event["epoch"] and jump.value == pytest.approx(event["jump_abs"])
    assert run.data.tags["grokking.all"].startswith("grokked at epoch")
    assert run.data.tags["watch"].startswith("validation improved under the watch")
    assert "grokking/training_curves.png" in {a.path for a in client.list_artifacts(run.info.run_id, "grokking")}


def test_the_fusion_judges_the_shift_toward_graphsage_on_held_out_validation(grokked):
    metadata, client, _ = grokked
    fusion = metadata["fusion_checkpoint"]
    assert {shift["tower"] for shift in fusion["grokking_shifts"]} == {"graphsage"}
    metrics = run_of(client, "fusion").data.metrics
    before, after = metrics["stop_ndcg_at_20_before_shift"], metrics["stop_ndcg_at_20_after_shift"]
    assert fusion["grokking_shift_applied"] == (after > before)
    verdict = "applied" if after > before else "rejected"
    assert fusion["grokking_shift"] == (
        f"{verdict}: held-out validation NDCG@20 {before:.4f} without the shift, {after:.4f} with it"
    )
