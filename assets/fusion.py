"""Stage 5, fusion: the towers combined by context-aware gates (and the static baseline), and the
recommendations they make, each pick credited to the tower that drove it."""

import time

import dagster as dg
import pandas as pd
import torch
from pydantic import Field

from assets.features import interaction_graph
from assets.ingestion import items
from assets.params import engine_params
from assets.training import TOWER_ASSETS
from grec_dagster.evaluation.evaluator import evaluate, ranking_task
from grec_dagster.evaluation.plots import markdown_image, segment_bars, training_curves
from grec_dagster.evaluation.tables import headline_table, markdown_preview
from grec_dagster.graph.interactions import TEST, TRAIN, VALID, InteractionGraph
from grec_dagster.grokking import GrokkingEvent
from grec_dagster.layout import FUSION, GATED_FUSION, STATIC_FUSION, TOWERS, Scorer
from grec_dagster.models.fusion import GatedFusion, top_picks
from grec_dagster.models.towers import CONTEXTS, towers_at, trained_towers
from grec_dagster.resources import CheckpointStoreResource, MlflowResource, WarehouseResource
from grec_dagster.storage import atomic_write, write_json
from grec_dagster.training.grokking_wiring import OnlineGrokking
from grec_dagster.training.loop import TrainingContext, TrainParams
from grec_dagster.training.runs import latest_history
from grec_dagster.training.train_fusion import (
    FusionParams,
    FusionTraining,
    fusion_at,
    fusion_scores,
    read_grokking_events,
    save_fusion,
    train_fusion,
)

GROUP = "fusion"


class FusionConfig(dg.Config, FusionParams, FusionTraining):
    pass


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
    deps=[interaction_graph, *TOWER_ASSETS],
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
    layout = checkpoints.layout
    graph = InteractionGraph.load(layout.interaction_graph)
    files = layout.model(FUSION)
    fusion_params, train_params = engine_params(config, FusionParams, TrainParams)
    towers = trained_towers(layout, fusion_params.towers)
    skipped = [name for name in fusion_params.towers if name not in towers]
    if skipped:
        context.log.warning(f"fusing {towers}: no checkpoint of {skipped} yet")
    trained_embeddings = [name for name in towers if TOWERS[name].scorer == Scorer.EMBEDDINGS]
    events = {name: read_grokking_events(layout.model(name).grokking) for name in trained_embeddings}
    valid = towers_at(graph, layout, towers, VALID)
    params = config.model_dump() | {"protocol": graph.protocol, "split_seed": graph.seed, "fused": valid.names}
    with mlflow.run(context, run_name=FUSION) as run:
        run.log_params(params)
        gates_watch = OnlineGrokking(
            FUSION, run, files.plot("training_curves")
        )  # the gates' own training, like any run
        trained = train_fusion(
            graph,
            valid,
            fusion_params,
            train_params,
            [event for found in events.values() for event in found],
            TrainingContext(on_epoch=gates_watch),
        )
        static_weights = dict(zip(trained.towers, trained.static.weights.tolist(), strict=True))
        shifts = [vars(shift) for shift in trained.shifts]
        run.set_tags({"grokking_shift": trained.shift_decision()})
        save_fusion(files.checkpoint, trained, params)
        write_json(
            files.config,
            params
            | {"static_weights": static_weights, "grokking_shifts": shifts, "grokking_shift": trained.shift_decision()},
        )

        test_inputs = towers_at(graph, layout, towers, TEST)
        task = ranking_task(graph, TEST)
        test = pd.concat(
            [
                evaluate(fusion_scores(trained.static, test_inputs), graph, STATIC_FUSION, TEST, task),
                evaluate(fusion_scores(trained.gated, test_inputs), graph, GATED_FUSION, TEST, task),
            ],
            ignore_index=True,
        )
        headline = headline_table(test).set_index("model")
        run.log_metrics(
            {f"test_{k}": v for k, v in headline.loc[GATED_FUSION].items()}
            | {f"test_static_{k}": v for k, v in headline.loc[STATIC_FUSION].items()}
            | {f"static_weight/{name}": weight for name, weight in static_weights.items()}
            | {
                "best_valid_ndcg@20": trained.result.best_metric,
                "static_valid_ndcg@20": trained.static_valid_ndcg,
                "stop_ndcg@20_before_shift": trained.stop_ndcg_before_shift,
                "stop_ndcg@20_after_shift": trained.stop_ndcg_after_shift,
            }
        )
        grokking = gates_watch.finish(trained.result.history, files.grokking)
        run.set_tags({"watch": trained.result.watch["watch"]})
        curves = _tower_curves(mlflow, trained_embeddings, events)
        bars = segment_bars(test)
        for name, png in (("tower_training_curves", curves), ("fusion_segments", bars)):
            run.log_artifact(atomic_write(files.plot(name), lambda path, png=png: path.write_bytes(png)), "plots")
        for path in (files.checkpoint, files.config):
            run.log_artifact(path, "checkpoint")
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
            "grokking_shift_applied": trained.shift_accepted,
            "grokking_shift": trained.shift_decision(),
            **trained.result.watch,
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
    layout = checkpoints.layout
    graph = InteractionGraph.load(layout.interaction_graph)
    inputs, _, gated = fusion_at(layout, graph, TEST)
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
    path = atomic_write(layout.recommendations, lambda partial: table.to_parquet(partial, index=False))
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
