"""Stage 5, fusion: the towers combined by context-aware gates (and the static baseline), and the
recommendations they make, each pick credited to the tower that drove it."""

import time
from pathlib import Path

import dagster as dg
import pandas as pd
import torch
from pydantic import Field

from assets.graph import interaction_graph, load_graph
from assets.ingestion import items
from assets.llm import llm_checkpoint
from assets.temporal import temporal_checkpoint, temporal_profiles_checkpoint
from assets.training import graphsage_checkpoint, lightgcn_checkpoint
from grec_dagster.evaluation.evaluator import evaluate, ranking_task
from grec_dagster.evaluation.plots import markdown_image, segment_bars, training_curves
from grec_dagster.evaluation.tables import headline_table, markdown_preview
from grec_dagster.graph.interactions import TEST, TRAIN, VALID
from grec_dagster.models.fusion import GatedFusion, StaticFusion, top_picks
from grec_dagster.models.towers import CONTEXTS, TowerInputs
from grec_dagster.resources import CheckpointStoreResource, MlflowResource, WarehouseResource
from grec_dagster.training.checkpoints import write_json
from grec_dagster.training.grokking import GrokkingEvent
from grec_dagster.training.grokking_wiring import check_grokking, record_grokking
from grec_dagster.training.loop import TrainParams
from grec_dagster.training.runs import latest_history
from grec_dagster.training.train_fusion import (
    POPULARITY,
    FusionParams,
    fusion_scores,
    load_fusion,
    read_grokking_events,
    save_fusion,
    tower_inputs,
    train_fusion,
)

GROUP = "fusion"
FOLDER = "fusion"
EMBEDDING_TOWERS = ("lightgcn", "graphsage", "temporal", "llm")
"""Checkpoint folders fusion can read `user_embedding`/`item_embedding` from (`llm`: the text tower)."""
GROKKING_FILE = "grokking.json"


class FusionConfig(dg.Config, FusionParams, TrainParams):
    towers: list[str] = Field(
        default=[POPULARITY, *EMBEDDING_TOWERS],
        description="Towers to fuse: `popularity` and checkpoint folders; a folder without a checkpoint is skipped.",
    )
    epochs: int = 100
    lr: float = 3e-3
    batch_size: int = 1024
    patience: int = 10


def tower_checkpoints(checkpoints: CheckpointStoreResource, towers: list[str]) -> dict[str, Path]:
    """The embedding towers among `towers` that have a checkpoint, in the order given."""
    paths = {name: Path(checkpoints.root) / name / "model.safetensors" for name in towers if name != POPULARITY}
    return {name: path for name, path in paths.items() if path.exists()}


def fusion_at_test(checkpoints: CheckpointStoreResource) -> tuple[TowerInputs, StaticFusion, GatedFusion]:
    """The saved fusion and its towers at the test cut, in the order it was trained with."""
    towers, static, gated = load_fusion(checkpoints.folder(FOLDER) / "model.safetensors")
    inputs = tower_inputs(
        load_graph(checkpoints), tower_checkpoints(checkpoints, towers), TEST, popularity=POPULARITY in towers
    )
    if inputs.names != towers:
        raise FileNotFoundError(f"fusion was trained on {towers}, found {inputs.names}: materialize the towers")
    return inputs, static, gated


def _gate_table(gated: GatedFusion, towers: list[str]) -> pd.DataFrame:
    """Each context's gates before item offsets and the MLP: softmax of the context biases."""
    gates = torch.softmax(gated.context_bias.detach(), dim=-1)
    return pd.DataFrame(gates.numpy(), columns=towers).round(3).assign(context=CONTEXTS)[["context", *towers]]


def _tower_curves(mlflow: MlflowResource, towers: list[str], events: dict[str, list[GrokkingEvent]]) -> bytes:
    histories = {
        name: latest_history(mlflow.tracking_uri, mlflow.experiment, name, ("train_loss", "ndcg_at_20")).rename(
            columns={"ndcg_at_20": "ndcg@20"}
        )
        for name in towers
    }
    return training_curves({name: history for name, history in histories.items() if len(history)}, events)


@dg.asset(
    group_name=GROUP,
    deps=[
        interaction_graph,
        lightgcn_checkpoint,
        graphsage_checkpoint,
        temporal_checkpoint,
        temporal_profiles_checkpoint,
        llm_checkpoint,
    ],
    kinds={"pytorch", "mlflow"},
)
def fusion_checkpoint(
    context: dg.AssetExecutionContext,
    config: FusionConfig,
    checkpoints: CheckpointStoreResource,
    mlflow: MlflowResource,
) -> dg.MaterializeResult:
    """Gated fusion of the towers learned on validation events (with the static baseline tuned there),
    grokking shifts applied; safetensors plus config, one MLflow run, test metrics of both."""
    started = time.perf_counter()
    graph = load_graph(checkpoints)
    folder = checkpoints.folder(FOLDER)
    paths = tower_checkpoints(checkpoints, config.towers)
    events = {name: read_grokking_events(path.parent / GROKKING_FILE) for name, path in paths.items()}
    valid = tower_inputs(graph, paths, VALID, popularity=POPULARITY in config.towers)
    fusion_params = FusionParams.model_validate(config.model_dump())
    train_params = TrainParams.model_validate(config.model_dump())
    params = config.model_dump() | {"protocol": graph.protocol, "fused": valid.names}
    with mlflow.run(context, run_name="fusion") as run:
        run.log_params(params)
        trained = train_fusion(
            graph,
            valid,
            fusion_params,
            train_params,
            [event for found in events.values() for event in found],
            on_epoch=lambda record: run.log_metrics(record, step=int(record["epoch"])),
        )
        static_weights = dict(zip(trained.towers, trained.static.weights.tolist(), strict=True))
        shifts = [vars(shift) for shift in trained.shifts]
        save_fusion(folder / "model.safetensors", trained, params)
        write_json(folder / "config.json", params | {"static_weights": static_weights, "grokking_shifts": shifts})

        test_inputs = tower_inputs(graph, paths, TEST, popularity=POPULARITY in config.towers)
        task = ranking_task(graph, TEST)
        test = pd.concat(
            [
                evaluate(fusion_scores(trained.static, test_inputs), graph, "static_fusion", TEST, task),
                evaluate(fusion_scores(trained.gated, test_inputs), graph, "gated_fusion", TEST, task),
            ],
            ignore_index=True,
        )
        headline = headline_table(test).set_index("model")
        run.log_metrics(
            {f"test_{k}": v for k, v in headline.loc["gated_fusion"].items()}
            | {f"test_static_{k}": v for k, v in headline.loc["static_fusion"].items()}
            | {f"static_weight/{name}": weight for name, weight in static_weights.items()}
            | {
                "best_valid_ndcg@20": trained.result.best_metric,
                "static_valid_ndcg@20": trained.static_valid_ndcg,
                "stop_ndcg@20_before_shift": trained.stop_ndcg_before_shift,
                "stop_ndcg@20_after_shift": trained.stop_ndcg_after_shift,
            }
        )
        grokking = check_grokking("fusion", trained.result.history)  # the gates' own training, like any run
        record_grokking(grokking, run, folder)
        curves = _tower_curves(mlflow, list(paths), events)
        bars = segment_bars(test)
        for name, png in (("tower_training_curves.png", curves), ("fusion_segments.png", bars)):
            (folder / name).write_bytes(png)
            run.log_artifact(folder / name, "plots")
        for name in ("model.safetensors", "config.json"):
            run.log_artifact(folder / name, "checkpoint")
        run_url = run.url
    return dg.MaterializeResult(
        metadata={
            "mlflow_run": dg.MetadataValue.url(run_url),
            "towers": valid.names,
            "static_weights": static_weights,
            "static_valid_ndcg@20": trained.static_valid_ndcg,
            "best_valid_ndcg@20": trained.result.best_metric,
            "best_epoch": trained.result.best_epoch,
            "context_gates": dg.MetadataValue.md(markdown_preview(_gate_table(trained.gated, trained.towers), 10)),
            "grokking_shifts": dg.MetadataValue.json(shifts),
            "grokking_shift_applied": bool(shifts),
            **{f"grokking.{segment}": verdict for segment, verdict in grokking.verdicts.items()},
            "test": dg.MetadataValue.md(markdown_preview(headline_table(test))),
            "tower_training_curves": dg.MetadataValue.md(markdown_image(curves, "tower training curves")),
            "segments": dg.MetadataValue.md(markdown_image(bars, "NDCG@20 per segment")),
            "seconds": round(time.perf_counter() - started, 3),
        }
    )


class RecommendationsConfig(dg.Config):
    k: int = Field(default=20, ge=1, description="Items per user.")


@dg.asset(group_name=GROUP, deps=[fusion_checkpoint, items], kinds={"duckdb", "parquet"})
def recommendations(
    config: RecommendationsConfig, warehouse: WarehouseResource, checkpoints: CheckpointStoreResource
) -> dg.MaterializeResult:
    """Every known user's top-K from the gated fusion, each pick with the tower whose gated
    contribution to it is largest; DuckDB `recommendations` and a Parquet copy."""
    started = time.perf_counter()
    graph = load_graph(checkpoints)
    inputs, _, gated = fusion_at_test(checkpoints)
    users = torch.arange(graph.n_users)
    picked, scores, drivers = top_picks(gated, inputs, users, graph.pairs(TRAIN, VALID, TEST), config.k)
    keep = torch.isfinite(scores)
    rows = pd.DataFrame(
        {
            "user_id": graph.user_ids[users.unsqueeze(1).expand_as(picked)[keep].numpy()].astype(str),
            "rank": (torch.arange(picked.shape[1]).expand_as(picked)[keep] + 1).numpy(),
            "item_id": graph.item_ids[picked[keep].numpy()].astype(str),
            "score": scores[keep].numpy(),
            "tower": pd.Series(inputs.names).to_numpy()[drivers[keep].numpy()],
        }
    )
    with warehouse.connect() as con:
        con.register("picks", rows)
        con.execute(
            """CREATE OR REPLACE TABLE recommendations AS
               SELECT p.user_id, p.rank, p.item_id, i.title, p.score, p.tower
               FROM picks p LEFT JOIN items i ON CAST(i.item_id AS VARCHAR) = p.item_id
               ORDER BY p.user_id, p.rank"""
        )
        con.unregister("picks")
        table = con.execute("SELECT * FROM recommendations ORDER BY user_id, rank").df()
        shares = con.execute("SELECT tower, count(*) AS picks FROM recommendations GROUP BY tower ORDER BY 2 DESC").df()
    path = checkpoints.folder(FOLDER) / "recommendations.parquet"
    table.to_parquet(path, index=False)
    return dg.MaterializeResult(
        metadata={
            "rows": len(table),
            "users": int(table["user_id"].nunique()),
            "picks_per_tower": dg.MetadataValue.md(markdown_preview(shares, 20)),
            "preview": dg.MetadataValue.md(markdown_preview(table, 10)),
            "file": dg.MetadataValue.path(str(path)),
            "seconds": round(time.perf_counter() - started, 3),
        }
    )
