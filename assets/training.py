"""Stage 3, training: popularity baselines and the LightGCN checkpoint, each tracked in MLflow."""

import shutil
import time

import dagster as dg

from assets.graph import interaction_graph, load_graph
from grec_dagster.evaluation.evaluator import evaluate
from grec_dagster.evaluation.tables import headline_table, markdown_preview
from grec_dagster.graph.interactions import TEST
from grec_dagster.models.lightgcn import LightGCNParams
from grec_dagster.models.popularity import most_popular, most_popular_recent
from grec_dagster.resources import CheckpointStoreResource, MlflowResource
from grec_dagster.training.checkpoints import resumable_state_dir, save_tensors, write_json
from grec_dagster.training.loop import TrainParams
from grec_dagster.training.train_lightgcn import save_embeddings, train_lightgcn

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
    lr: float = 5e-3
    reg_weight: float = 1e-4


@dg.asset(group_name=GROUP, deps=[interaction_graph], kinds={"pytorch", "mlflow"})
def lightgcn_checkpoint(
    context: dg.AssetExecutionContext,
    config: LightGCNConfig,
    checkpoints: CheckpointStoreResource,
    mlflow: MlflowResource,
) -> dg.MaterializeResult:
    """LightGCN trained with BPR, early-stopped on validation NDCG@20; safetensors plus config."""
    started = time.perf_counter()
    graph = load_graph(checkpoints)
    folder = checkpoints.folder("lightgcn")
    state_dir = resumable_state_dir(folder, graph.fingerprint(), config.model_dump_json())
    params = config.model_dump() | {"protocol": graph.protocol, "n_users": graph.n_users, "n_items": graph.n_items}
    with mlflow.run(context, run_name="lightgcn") as run:
        run.log_params(params)
        trained = train_lightgcn(
            graph,
            LightGCNParams.model_validate(config.model_dump()),
            TrainParams.model_validate(config.model_dump()),
            checkpoint_dir=state_dir,
            on_epoch=lambda record: run.log_metrics(record, step=int(record["epoch"])),
        )
        save_embeddings(folder / "model.safetensors", trained, params)
        write_json(folder / "config.json", params)
        test = evaluate(trained.score, graph, "lightgcn", TEST)
        headline = headline_table(test).drop(columns=["model"]).iloc[0].to_dict()
        run.log_metrics(
            {f"test_{k}": v for k, v in headline.items()} | {"best_valid_ndcg@20": trained.result.best_metric}
        )
        run.log_artifact(folder / "model.safetensors", "checkpoint")
        run.log_artifact(folder / "config.json", "checkpoint")
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
            "seconds": round(time.perf_counter() - started, 3),
        }
    )
