"""Stage 3, training: popularity baselines and the LightGCN and GraphSAGE checkpoints, each tracked in MLflow."""

import shutil
import time
from collections.abc import Callable
from pathlib import Path

import dagster as dg

from assets.graph import interaction_graph, load_graph
from assets.ingestion import items, users
from grec_dagster.evaluation.evaluator import evaluate
from grec_dagster.evaluation.tables import headline_table, markdown_preview
from grec_dagster.graph.features import item_features, user_features
from grec_dagster.graph.interactions import TEST, InteractionGraph
from grec_dagster.models.graphsage import GraphSAGEParams
from grec_dagster.models.lightgcn import LightGCNParams
from grec_dagster.models.popularity import most_popular, most_popular_recent
from grec_dagster.resources import GPU_POOL, CheckpointStoreResource, GpuResource, MlflowResource, WarehouseResource
from grec_dagster.training.checkpoints import resumable_state_dir, save_tensors, tensor_fingerprint, write_json
from grec_dagster.training.devices import accelerator_for
from grec_dagster.training.embeddings import TrainedEmbeddings, save_embeddings
from grec_dagster.training.grokking_wiring import check_grokking, record_grokking
from grec_dagster.training.loop import EpochCallback, TrainParams
from grec_dagster.training.train_graphsage import train_graphsage
from grec_dagster.training.train_lightgcn import train_lightgcn

GROUP = "training"


@dg.asset(group_name=GROUP, deps=[interaction_graph], kinds={"pytorch"})
def popularity_baselines(checkpoints: CheckpointStoreResource) -> dg.MaterializeResult:
    """Most popular and most popular recent item scores from the training split."""
    graph = load_graph(checkpoints)
    scores = {"most_popular": most_popular(graph), "most_popular_recent": most_popular_recent(graph)}
    save_tensors(
        checkpoints.folder("popularity_baselines") / "scores.safetensors", scores, {"protocol": graph.protocol}
    )
    top = scores["most_popular"].topk(min(10, graph.n_items)).indices
    return dg.MaterializeResult(
        metadata={"top_items": [str(graph.item_ids[i]) for i in top.tolist()], "items": graph.n_items}
    )


class LightGCNConfig(dg.Config, LightGCNParams, TrainParams):
    """Defaults tuned on MovieLens-100K validation NDCG@20 (see README, Results)."""

    lr: float = 2e-3
    epochs: int = 400


TrainFn = Callable[[Path, EpochCallback], TrainedEmbeddings]
"""Trains one model, given where to keep resumable state and what to call after each epoch."""


def _train_embeddings(
    context: dg.AssetExecutionContext,
    name: str,
    config: dg.Config,
    graph: InteractionGraph,
    data_fingerprint: str,
    train: TrainFn,
    checkpoints: CheckpointStoreResource,
    mlflow: MlflowResource,
) -> dg.MaterializeResult:
    """The body every embedding model's asset shares: train tracked in MLflow, save, test, check
    for grokking (per validation segment), report."""
    started = time.perf_counter()
    folder = checkpoints.folder(name)
    state_dir = resumable_state_dir(folder, data_fingerprint, config.model_dump_json())
    params = config.model_dump() | {"protocol": graph.protocol, "n_users": graph.n_users, "n_items": graph.n_items}
    with mlflow.run(context, run_name=name) as run:
        run.log_params(params)
        trained = train(state_dir, lambda record: run.log_metrics(record, step=int(record["epoch"])))
        save_embeddings(folder / "model.safetensors", trained, params)
        write_json(folder / "config.json", params)
        test = evaluate(trained.score, graph, name, TEST)
        headline = headline_table(test).drop(columns=["model"]).iloc[0].to_dict()
        extra = {f"test_{k}": v for k, v in trained.result.extra.items()}  # a model's own test readouts
        run.log_metrics(
            {f"test_{k}": v for k, v in headline.items()} | extra | {"best_valid_ndcg@20": trained.result.best_metric}
        )
        run.log_artifact(folder / "model.safetensors", "checkpoint")
        run.log_artifact(folder / "config.json", "checkpoint")
        grokking = check_grokking(name, trained.result.history)
        record_grokking(grokking, run, folder)
        run_url = run.url
    shutil.rmtree(state_dir, ignore_errors=True)
    return dg.MaterializeResult(
        metadata={
            "mlflow_run": dg.MetadataValue.url(run_url),
            "best_epoch": trained.result.best_epoch,
            "epochs_run": len(trained.result.history),
            "best_valid_ndcg@20": trained.result.best_metric,
            "seconds_per_epoch": sum(r["seconds"] for r in trained.result.history) / len(trained.result.history),
            "test": dg.MetadataValue.md(markdown_preview(headline_table(test))),
            **extra,
            **{f"grokking.{segment}": verdict for segment, verdict in grokking.verdicts.items()},
            "grokking": dg.MetadataValue.json(grokking.to_dict()),
            "seconds": round(time.perf_counter() - started, 3),
        }
    )


@dg.asset(group_name=GROUP, deps=[interaction_graph], kinds={"pytorch", "mlflow"}, pool=GPU_POOL)
def lightgcn_checkpoint(
    context: dg.AssetExecutionContext,
    config: LightGCNConfig,
    checkpoints: CheckpointStoreResource,
    mlflow: MlflowResource,
    gpu: GpuResource,
) -> dg.MaterializeResult:
    """LightGCN trained with BPR, early-stopped on validation NDCG@20; safetensors plus config."""
    graph = load_graph(checkpoints)
    model, train = LightGCNParams.model_validate(config.model_dump()), TrainParams.model_validate(config.model_dump())
    accelerator = accelerator_for(gpu.device())
    return _train_embeddings(
        context,
        "lightgcn",
        config,
        graph,
        graph.fingerprint(),
        lambda state_dir, on_epoch: train_lightgcn(graph, model, train, state_dir, on_epoch, accelerator),
        checkpoints,
        mlflow,
    )


class GraphSAGEConfig(dg.Config, GraphSAGEParams, TrainParams):
    lr: float = 2e-3


@dg.asset(group_name=GROUP, deps=[interaction_graph, items, users], kinds={"pytorch", "mlflow"}, pool=GPU_POOL)
def graphsage_checkpoint(
    context: dg.AssetExecutionContext,
    config: GraphSAGEConfig,
    warehouse: WarehouseResource,
    checkpoints: CheckpointStoreResource,
    mlflow: MlflowResource,
    gpu: GpuResource,
) -> dg.MaterializeResult:
    """Inductive GraphSAGE on features from `items`/`users`, mini-batch BPR; embeddings for the test period."""
    graph = load_graph(checkpoints)
    with warehouse.connect(read_only=True) as con:
        item_x = item_features(con.execute("SELECT * FROM items").df(), graph.item_ids)
        user_x = user_features(con.execute("SELECT * FROM users").df(), graph.user_ids)
    features = tensor_fingerprint(user_x, item_x)
    model, train = GraphSAGEParams.model_validate(config.model_dump()), TrainParams.model_validate(config.model_dump())
    accelerator = accelerator_for(gpu.device())
    return _train_embeddings(
        context,
        "graphsage",
        config,
        graph,
        f"{graph.fingerprint()}-{features}",
        lambda state_dir, on_epoch: train_graphsage(graph, user_x, item_x, model, train, state_dir, on_epoch, accelerator),
        checkpoints,
        mlflow,
    )
