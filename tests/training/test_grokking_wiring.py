"""Every training run records its grokking check, per validation segment: in MLflow (metric, tags,
JSON artifact), in the asset's metadata and in `grokking.json` next to the checkpoint."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import dagster as dg
import pytest
import torch
from mlflow import MlflowClient

from assets.training import lightgcn_checkpoint
from grec_dagster.data.synthetic import SyntheticConfig, generate_synthetic
from grec_dagster.evaluation.evaluator import evaluate, ranking_task, validation_ndcg
from grec_dagster.evaluation.segments import item_segments
from grec_dagster.graph.interactions import VALID, InteractionGraph, build_graph
from grec_dagster.graph.splits import split_labels
from grec_dagster.grokking import NONE_DETECTED
from grec_dagster.layout import ModelFiles
from grec_dagster.resources import CheckpointStoreResource, GpuResource, MlflowResource
from grec_dagster.training.grokking_wiring import check_grokking, record_grokking
from grec_dagster.training.tracking import tracked_run

SEGMENTS = {"all", "head_items", "tail_items", "cold_items"}
EPOCHS = 24
"""Past the detector's earliest possible report, so its verdict is observed, not implied by a short run
(patience is set to EPOCHS: early stopping must not end the run first)."""


@pytest.fixture(scope="module")
def shop() -> InteractionGraph:
    """A temporal split of a small shop: items arrive over time, so validation has cold items too."""
    log = generate_synthetic(SyntheticConfig(n_interactions=4000, seed=0)).interactions
    return build_graph(log, split_labels(log, "temporal"), "temporal")


def tracking(tmp_path: Path) -> MlflowResource:
    return MlflowResource(
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", artifact_location=str(tmp_path / "artifacts")
    )


def only_run(resource: MlflowResource):
    client = MlflowClient(resource.tracking_uri)
    [run] = client.search_runs([client.get_experiment_by_name(resource.experiment).experiment_id])
    return client, run


FILE_NAME = ModelFiles(Path()).grokking.name


def artifact_json(client: MlflowClient, run_id: str, tmp_path: Path) -> dict:
    return json.loads(Path(client.download_artifacts(run_id, FILE_NAME, str(tmp_path))).read_text())


def test_validation_reports_every_segment_with_relevant_items_as_evaluate_does(shop: InteractionGraph) -> None:
    scores = torch.randn(shop.n_users, shop.n_items, generator=torch.Generator().manual_seed(0))
    found = validation_ndcg(lambda users: scores[users], ranking_task(shop, VALID), item_segments(shop))
    table = evaluate(lambda users: scores[users], shop, "random", VALID)
    expected = table[(table.metric == "ndcg") & (table.k == 20) & table.segment.isin(SEGMENTS)]
    assert found == pytest.approx(
        {"ndcg@20" if row.segment == "all" else f"ndcg@20/{row.segment}": row.value for row in expected.itertuples()}
    )
    assert set(found) == {"ndcg@20", "ndcg@20/head_items", "ndcg@20/tail_items", "ndcg@20/cold_items"}


def test_training_asset_records_the_verdict_on_the_curves_it_logged(shop: InteractionGraph, tmp_path: Path) -> None:
    checkpoints = CheckpointStoreResource(root=str(tmp_path / "checkpoints"))
    shop.save(checkpoints.layout.interaction_graph)
    mlflow = tracking(tmp_path)

    result = dg.materialize(
        [lightgcn_checkpoint],
        resources={"checkpoints": checkpoints, "mlflow": mlflow, "gpu": GpuResource()},
        run_config={
            "ops": {"lightgcn_checkpoint": {"config": {"epochs": EPOCHS, "patience": EPOCHS, "batch_size": 1024, "dim": 16}}}
        },
    )

    metadata = result.asset_materializations_for_node("lightgcn_checkpoint")[0].metadata
    client, run = only_run(mlflow)
    # The detector, fed again the curves MLflow shows for this run, gives the verdicts the run recorded.
    curves = {
        key: {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
        for key in ("train_loss", "ndcg_at_20", *(f"ndcg_at_20/{segment}" for segment in SEGMENTS - {"all"}))
    }
    assert all(len(curve) == EPOCHS for curve in curves.values())
    history = [
        {"epoch": float(epoch)} | {key.replace("_at_", "@"): curve[epoch] for key, curve in curves.items()}
        for epoch in range(EPOCHS)
    ]
    expected = check_grokking("lightgcn", history)
    assert {key: metadata[f"grokking.{key}"].value for key in SEGMENTS} == expected.verdicts
    saved = json.loads(checkpoints.layout.model("lightgcn").grokking.read_text())
    assert saved == expected.to_dict() == metadata["grokking"].value
    assert {k: v for k, v in run.data.tags.items() if k.startswith("grokking.")} == {
        f"grokking.{segment}": verdict for segment, verdict in expected.verdicts.items()
    }
    jumps = {key for key in run.data.metrics if key.startswith("grokking_jump")}
    assert jumps == {f"grokking_jump/{event.segment}" for event in expected.events}
    assert artifact_json(client, run.info.run_id, tmp_path / "download") == saved


def grokking_history(n_epochs: int = 40, jump_at: int = 25) -> list[dict[str, float]]:
    """Epoch records as `fit` keeps them: the loss is flat from about epoch 20, and tail items'
    NDCG@20 jumps from 0.02 to 0.08 at `jump_at` and stays there; overall NDCG only wobbles."""
    noise = random.Random(0)
    return [
        {
            "epoch": float(t),
            "train_loss": 0.1 + 2.0 * math.exp(-t / 3),
            "seconds": 0.1,
            "ndcg@20": 0.05 + noise.gauss(0, 0.001),
            "ndcg@20/tail_items": (0.02 if t < jump_at else 0.08) + noise.gauss(0, 0.001),
        }
        for t in range(n_epochs)
    ]


def test_a_grokking_segment_is_recorded_as_metric_tag_and_json(tmp_path: Path) -> None:
    mlflow = tracking(tmp_path)
    check = check_grokking("temporal", grokking_history(jump_at=25))
    with tracked_run(mlflow.tracking_uri, mlflow.experiment, "temporal", {}, mlflow.artifact_location) as run:
        record_grokking(check, run, ModelFiles(tmp_path).grokking)

    [event] = check.events
    assert (event.segment, event.epoch) == ("tail_items", 25)
    assert event.jump_abs == pytest.approx(0.06, abs=0.005)
    assert event.plateau_train_loss == pytest.approx(0.1 + 2.0 * math.exp(-25 / 3))

    client, found = only_run(mlflow)
    [jump] = client.get_metric_history(found.info.run_id, "grokking_jump/tail_items")
    assert (jump.step, jump.value) == (25, pytest.approx(event.jump_abs))
    assert found.data.tags["grokking.tail_items"] == event.describe()
    assert found.data.tags["grokking.tail_items"].startswith("grokked at epoch 25")
    assert found.data.tags["grokking.all"] == NONE_DETECTED
    saved = json.loads(ModelFiles(tmp_path).grokking.read_text())
    assert saved["events"] == [event.to_dict()]
    assert saved["summary"] == {"all": NONE_DETECTED, "tail_items": event.describe()}
    assert artifact_json(client, found.info.run_id, tmp_path / "download") == saved
