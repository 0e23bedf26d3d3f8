"""Stage 4, training: the popularity baselines and every tower, each tracked in MLflow; which
towers exist and where their checkpoints go is `grec_dagster.layout`'s registry."""

import shutil
import time
from collections.abc import Callable
from functools import partial

import dagster as dg
from pydantic import BaseModel, Field

from assets.features import interaction_graph, temporal_graph
from assets.ingestion import items, users
from assets.llm import item_text_embeddings, profile_embeddings
from assets.params import engine_params
from assets.priority import LONGEST_CHAIN
from grec_dagster.evaluation.evaluator import evaluate
from grec_dagster.evaluation.tables import headline_table, markdown_preview
from grec_dagster.graph.features import item_features, user_features
from grec_dagster.graph.interactions import TEST, InteractionGraph, known_before
from grec_dagster.graph.temporal import TemporalGraph
from grec_dagster.layout import (
    EASE,
    GRAPHSAGE,
    LIGHTGCN,
    MOST_POPULAR,
    MOST_POPULAR_RECENT,
    SASREC,
    TEMPORAL,
    TEMPORAL_PROFILES,
    TEXT_TOWER,
)
from grec_dagster.llm.texts import item_texts
from grec_dagster.models.ease import EASEParams
from grec_dagster.models.graphsage import GraphSAGEParams
from grec_dagster.models.lightgcn import LightGCNParams
from grec_dagster.models.popularity import most_popular, most_popular_recent
from grec_dagster.models.profile_fusion import ProfileFacets
from grec_dagster.models.sasrec import SASRecParams
from grec_dagster.models.temporal import TemporalParams
from grec_dagster.models.text_tower import TextTowerParams
from grec_dagster.models.towers import with_cold_start
from grec_dagster.resources import GPU_POOL, CheckpointStoreResource, GpuResource, MlflowResource, WarehouseResource
from grec_dagster.storage import load_tensors, save_tensors, tensor_fingerprint, write_json
from grec_dagster.training.devices import accelerator_for
from grec_dagster.training.embeddings import TrainedEmbeddings, save_embeddings
from grec_dagster.training.grokking_wiring import OnlineGrokking
from grec_dagster.training.launch import TrainFn, launch
from grec_dagster.training.loop import TrainingContext, TrainParams
from grec_dagster.training.train_ease import train_ease
from grec_dagster.training.train_graphsage import GraphSAGETraining, pairs_per_batch, train_graphsage
from grec_dagster.training.train_lightgcn import LightGCNTraining, train_lightgcn
from grec_dagster.training.train_sasrec import SASRecTraining, train_sasrec
from grec_dagster.training.train_temporal import TemporalTraining, events_per_batch, train_temporal
from grec_dagster.training.train_text_tower import mean_profile_facets, train_text_tower

GROUP = "training"
TRAINING = {
    "group_name": GROUP,
    "kinds": {"pytorch", "mlflow"},
    "pool": GPU_POOL,
    "op_tags": {"dagster-celery/queue": GPU_POOL},
}
"""What every tower's asset shares: its group, its kinds, the `gpu` pool, and (under Celery) the
workers of the `gpu` queue."""


def _graph(checkpoints: CheckpointStoreResource) -> InteractionGraph:
    return InteractionGraph.load(checkpoints.layout.interaction_graph)


@dg.asset(group_name=GROUP, deps=[interaction_graph], kinds={"pytorch"})
def popularity_baselines(checkpoints: CheckpointStoreResource) -> dg.MaterializeResult:
    """Most popular and most popular recent item scores at the test cut: from the events before it
    (train + valid), as every model sees them there."""
    graph = _graph(checkpoints)
    known = known_before(TEST)
    scores = {
        MOST_POPULAR: most_popular(graph, splits=known),
        MOST_POPULAR_RECENT: most_popular_recent(graph, splits=known),
    }
    save_tensors(checkpoints.layout.popularity_scores, scores, {"protocol": graph.protocol})
    top = scores[MOST_POPULAR].topk(min(10, graph.n_items)).indices
    return dg.MaterializeResult(
        metadata={"top_items": [str(graph.item_ids[i]) for i in top.tolist()], "items": graph.n_items}
    )


class Processes(BaseModel):
    processes: int = Field(
        default=1,
        ge=1,
        description="Train in this many DDP processes (torchrun: gloo on the CPU, NCCL with one GPU each).",
    )


def _train(train: TrainFn, processes: int, device: str, context: TrainingContext) -> TrainedEmbeddings:
    """`train` in this process on `device`, or in `processes` DDP processes (`training/launch.py`)."""
    if processes == 1:
        return train(TrainingContext(context.checkpoint_dir, context.on_epoch, accelerator_for(device)))
    return launch(train, processes, context, "cpu" if device == "cpu" else "cuda")


def _train_tower(
    context: dg.AssetExecutionContext,
    name: str,
    config: dg.Config,
    graph: InteractionGraph,
    data_fingerprint: str,
    train: TrainFn,
    checkpoints: CheckpointStoreResource,
    mlflow: MlflowResource,
    gpu: GpuResource,
    derived: dict[str, int | float] | None = None,
) -> dg.MaterializeResult:
    """The body every tower's asset shares: train tracked in MLflow with the grokking check running
    along, save, test, report (the watch and the verdict per validation segment included).

    `train` takes the run's plumbing (resumable state, epoch callback, device); it must pickle
    (a `functools.partial` of a `train_*` function) so that `processes > 1` can launch it.
    `derived`: settings the engine works out from the config and the data (logged and saved with
    the config, and shown as metadata, so a run says what it actually trained with)."""
    started = time.perf_counter()
    files = checkpoints.layout.model(name)
    state_dir = files.resume_state(data_fingerprint, config.model_dump_json())
    derived = derived or {}
    params = config.model_dump() | derived | {
        "protocol": graph.protocol,
        "split_seed": graph.seed,
        "n_users": graph.n_users,
        "n_items": graph.n_items,
    }
    device = gpu.device()
    with mlflow.run(context, run_name=name) as run:
        run.log_params(params)
        grokking_watch = OnlineGrokking(name, run, files.plot("training_curves"))
        processes = config.processes if isinstance(config, Processes) else 1  # a closed form has no DDP
        trained = _train(train, processes, device, TrainingContext(state_dir, grokking_watch))
        save_embeddings(files.checkpoint, trained, params)
        write_json(files.config, params)
        test = evaluate(with_cold_start(trained.score, graph, TEST), graph, name, TEST)
        headline = headline_table(test).drop(columns=["model"]).iloc[0].to_dict()
        extra = {f"test_{k}": v for k, v in trained.result.extra.items()}  # a model's own test readouts
        run.log_metrics(
            {f"test_{k}": v for k, v in headline.items()} | extra | {"best_valid_ndcg@20": trained.result.best_metric}
        )
        run.log_artifact(files.checkpoint, "checkpoint")
        run.log_artifact(files.config, "checkpoint")
        grokking = grokking_watch.finish(trained.result.history, files.grokking)
        watch = trained.result.watch
        run.log_metrics({key: value for key, value in watch.items() if isinstance(value, int | float)})
        run.set_tags({"watch": watch["watch"]})
        run_url = run.url
    shutil.rmtree(state_dir, ignore_errors=True)
    return dg.MaterializeResult(
        metadata={
            "mlflow_run": dg.MetadataValue.url(run_url),
            "best_epoch": trained.result.best_epoch,
            "epochs_run": len(trained.result.history),
            "best_valid_ndcg@20": trained.result.best_metric,
            "seconds_per_epoch": sum(r["seconds"] for r in trained.result.history) / len(trained.result.history),
            **derived,
            "test": dg.MetadataValue.md(markdown_preview(headline_table(test))),
            **watch,
            **extra,
            **{f"grokking.{segment}": verdict for segment, verdict in grokking.verdicts.items()},
            "grokking": dg.MetadataValue.json(grokking.to_dict()),
            "seconds": round(time.perf_counter() - started, 3),
        }
    )


def _graph_tower(
    context: dg.AssetExecutionContext,
    name: str,
    config: dg.Config,
    params: tuple[type, ...],
    train: Callable[..., TrainedEmbeddings],
    checkpoints: CheckpointStoreResource,
    mlflow: MlflowResource,
    gpu: GpuResource,
) -> dg.MaterializeResult:
    """A tower that reads the interaction graph alone (LightGCN, EASE, SASRec): `train(graph, *params)`,
    with `params` the engine params the config inherits, through `_train_tower`."""
    graph = _graph(checkpoints)
    trains = partial(train, graph, *engine_params(config, *params))
    return _train_tower(context, name, config, graph, graph.fingerprint(), trains, checkpoints, mlflow, gpu)


class LightGCNConfig(dg.Config, LightGCNParams, LightGCNTraining, Processes):
    pass


@dg.asset(deps=[interaction_graph], **TRAINING)
def lightgcn_checkpoint(
    context: dg.AssetExecutionContext,
    config: LightGCNConfig,
    checkpoints: CheckpointStoreResource,
    mlflow: MlflowResource,
    gpu: GpuResource,
) -> dg.MaterializeResult:
    """LightGCN trained with BPR, early-stopped on validation NDCG@20; safetensors plus config."""
    return _graph_tower(
        context, LIGHTGCN, config, (LightGCNParams, TrainParams), train_lightgcn, checkpoints, mlflow, gpu
    )


class GraphSAGEConfig(dg.Config, GraphSAGEParams, GraphSAGETraining, Processes):
    pass


@dg.asset(deps=[interaction_graph, items, users], **TRAINING)
def graphsage_checkpoint(
    context: dg.AssetExecutionContext,
    config: GraphSAGEConfig,
    warehouse: WarehouseResource,
    checkpoints: CheckpointStoreResource,
    mlflow: MlflowResource,
    gpu: GpuResource,
) -> dg.MaterializeResult:
    """Inductive GraphSAGE on features from `items`/`users`, mini-batch BPR; embeddings for the test period."""
    graph = _graph(checkpoints)
    with warehouse.connect(read_only=True) as con:
        item_x = item_features(con.execute("SELECT * FROM items").df(), graph.item_ids)
        user_x = user_features(con.execute("SELECT * FROM users").df(), graph.user_ids)
    model, train = engine_params(config, GraphSAGEParams, GraphSAGETraining)
    return _train_tower(
        context,
        GRAPHSAGE,
        config,
        graph,
        f"{graph.fingerprint()}-{tensor_fingerprint(user_x, item_x)}",
        partial(train_graphsage, graph, user_x, item_x, model, train),
        checkpoints,
        mlflow,
        gpu,
        {"pairs_per_batch": pairs_per_batch(graph, train)},
    )


class TemporalConfig(dg.Config, TemporalParams, TemporalTraining, Processes):
    pass


def _train_temporal(
    context: dg.AssetExecutionContext,
    name: str,
    config: TemporalConfig,
    checkpoints: CheckpointStoreResource,
    mlflow: MlflowResource,
    gpu: GpuResource,
    profiles: ProfileFacets | None = None,
) -> dg.MaterializeResult:
    """Both temporal assets' body; resumable state is keyed by the profiles too, so new ones train afresh."""
    if config.processes > 1 and config.memory:
        raise ValueError(
            "the temporal model's memory follows one event stream: train it with processes: 1, or memory: false"
        )
    graph = _graph(checkpoints)
    temporal = TemporalGraph.load(checkpoints.layout.temporal_graph)
    model, train = engine_params(config, TemporalParams, TemporalTraining)
    data = temporal.fingerprint() if profiles is None else f"{temporal.fingerprint()}-{profiles.fingerprint()}"
    return _train_tower(
        context,
        name,
        config,
        graph,
        data,
        partial(train_temporal, graph, temporal, model, train, profiles=profiles),
        checkpoints,
        mlflow,
        gpu,
        {"events_per_batch": events_per_batch(temporal, train)},
    )


@dg.asset(deps=[interaction_graph, temporal_graph], **TRAINING)
def temporal_checkpoint(
    context: dg.AssetExecutionContext,
    config: TemporalConfig,
    checkpoints: CheckpointStoreResource,
    mlflow: MlflowResource,
    gpu: GpuResource,
) -> dg.MaterializeResult:
    """TGAT-style temporal attention (optional TGN memory) trained with BPR on the event stream;
    embeddings at the test cut, so the evaluator scores it like LightGCN, plus next-interaction MRR."""
    return _train_temporal(context, TEMPORAL, config, checkpoints, mlflow, gpu)


@dg.asset(deps=[interaction_graph, temporal_graph, profile_embeddings], **TRAINING)
def temporal_profiles_checkpoint(
    context: dg.AssetExecutionContext,
    config: TemporalConfig,
    checkpoints: CheckpointStoreResource,
    mlflow: MlflowResource,
    gpu: GpuResource,
) -> dg.MaterializeResult:
    """The temporal model with each user's profile facets fused into its embedding (DynLLM: distilled
    top-k facets, attention with the temporal embedding as query, gated residual); same readouts."""
    profiles = ProfileFacets.load(checkpoints.layout.profile_embeddings)
    return _train_temporal(context, TEMPORAL_PROFILES, config, checkpoints, mlflow, gpu, profiles)


class TextTowerConfig(dg.Config, TextTowerParams, TrainParams, Processes):
    use_profiles: bool = True
    """Feed each user's mean profile-facet embedding to the user side, next to their history's texts."""


@dg.asset(
    deps=[interaction_graph, items, item_text_embeddings, profile_embeddings],
    **(TRAINING | {"op_tags": TRAINING["op_tags"] | LONGEST_CHAIN}),
)
def text_tower_checkpoint(
    context: dg.AssetExecutionContext,
    config: TextTowerConfig,
    warehouse: WarehouseResource,
    checkpoints: CheckpointStoreResource,
    mlflow: MlflowResource,
    gpu: GpuResource,
) -> dg.MaterializeResult:
    """The text tower: projection heads aligning item-text and profile embeddings with interactions
    (BPR, early-stopped on validation NDCG@20), over frozen MiniLM item vectors or, with `encoder:
    lora`, MiniLM with LoRA adapters trained alongside (kept in the checkpoint). Items are scored
    from text alone, so cold items too."""
    graph = _graph(checkpoints)
    item_text = load_tensors(checkpoints.layout.item_text_embeddings)[0]["item_text"]
    texts = None
    if config.encoder == "lora":
        with warehouse.connect(read_only=True) as con:
            texts = item_texts(con.execute("SELECT * FROM items").df(), graph.item_ids)
    profile_text, profile_from = (
        mean_profile_facets(checkpoints.layout.profile_embeddings) if config.use_profiles else (None, None)
    )
    inputs = (item_text,) if profile_text is None else (item_text, profile_text)
    model, train = engine_params(config, TextTowerParams, TrainParams)
    return _train_tower(
        context,
        TEXT_TOWER,
        config,
        graph,
        f"{graph.fingerprint()}-{tensor_fingerprint(*inputs)}",
        partial(train_text_tower, graph, item_text, profile_text, model, train, texts=texts, profile_from=profile_from),
        checkpoints,
        mlflow,
        gpu,
    )


class EASEConfig(dg.Config, EASEParams):
    pass


@dg.asset(deps=[interaction_graph], **TRAINING)
def ease_checkpoint(
    context: dg.AssetExecutionContext,
    config: EASEConfig,
    checkpoints: CheckpointStoreResource,
    mlflow: MlflowResource,
    gpu: GpuResource,
) -> dg.MaterializeResult:
    """EASE, the closed-form item-item collaborative filter: the regularization chosen on validation
    NDCG@20, refit on train + valid pairs for the test cut."""
    return _graph_tower(context, EASE, config, (EASEParams,), train_ease, checkpoints, mlflow, gpu)


class SASRecConfig(dg.Config, SASRecParams, SASRecTraining, Processes):
    pass


@dg.asset(deps=[interaction_graph], **TRAINING)
def sasrec_checkpoint(
    context: dg.AssetExecutionContext,
    config: SASRecConfig,
    checkpoints: CheckpointStoreResource,
    mlflow: MlflowResource,
    gpu: GpuResource,
) -> dg.MaterializeResult:
    """SASRec-style self-attention over each user's item sequence, trained on next-item prediction; at
    the test cut each user is read from their train + valid sequence."""
    return _graph_tower(context, SASREC, config, (SASRecParams, TrainParams), train_sasrec, checkpoints, mlflow, gpu)


TOWER_ASSETS = [
    lightgcn_checkpoint,
    graphsage_checkpoint,
    temporal_checkpoint,
    temporal_profiles_checkpoint,
    ease_checkpoint,
    sasrec_checkpoint,
    text_tower_checkpoint,
]
"""Every tower this module trains: what fusion waits for and the evaluation report scores."""
