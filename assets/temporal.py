"""The temporal model's stages: the continuous-time graph (features) and its TGAT/TGN checkpoints (training),
without and with the users' LLM profile facets fused in (DynLLM)."""

import time

import dagster as dg
import pandas as pd

from assets import ingestion
from assets.graph import interaction_graph, load_graph
from assets.llm import PROFILE_FILE, profile_embeddings
from assets.training import _train_embeddings
from grec_dagster.evaluation.tables import markdown_preview
from grec_dagster.graph.features import item_features, user_features
from grec_dagster.graph.temporal import ITEM, USER, TemporalGraph, build_temporal_graph
from grec_dagster.models.profile_fusion import ProfileFacets
from grec_dagster.models.temporal import TemporalParams
from grec_dagster.resources import GPU_POOL, CheckpointStoreResource, GpuResource, MlflowResource, WarehouseResource
from grec_dagster.training.devices import accelerator_for
from grec_dagster.training.loop import TrainParams
from grec_dagster.training.train_temporal import train_temporal

GRAPH_FILE = "temporal_graph.safetensors"


def load_temporal_graph(checkpoints: CheckpointStoreResource) -> TemporalGraph:
    return TemporalGraph.load(checkpoints.folder("temporal_graph") / GRAPH_FILE)


def _degrees(temporal: TemporalGraph) -> pd.DataFrame:
    rows = []
    for name, side in (("user -> items", USER), ("item -> users", ITEM)):
        csr = temporal.csr(side)
        degree = csr.rowptr.diff().float()
        rows.append(
            {
                "adjacency": name,
                "nodes": csr.num_nodes,
                "without events": int((degree == 0).sum()),
                "median degree": float(degree.median()),
                "max degree": int(degree.max()),
            }
        )
    return pd.DataFrame(rows)


@dg.asset(group_name="features", deps=[interaction_graph, ingestion.items, ingestion.users], kinds={"pytorch"})
def temporal_graph(warehouse: WarehouseResource, checkpoints: CheckpointStoreResource) -> dg.MaterializeResult:
    """Events in time order, node features and time-sorted CSRs both ways, for temporal models."""
    started = time.perf_counter()
    graph = load_graph(checkpoints)
    with warehouse.connect(read_only=True) as con:
        catalog = con.execute("SELECT * FROM items").df()
        people = con.execute("SELECT * FROM users").df()
    temporal = build_temporal_graph(
        graph, user_features(people, graph.user_ids), item_features(catalog, graph.item_ids)
    )
    path = checkpoints.folder("temporal_graph") / GRAPH_FILE
    temporal.save(path)
    return dg.MaterializeResult(
        metadata={
            "events": temporal.ts.numel(),
            "distinct_times": temporal.user_csr.distinct_time.numel(),
            "from": str(pd.Timestamp(int(temporal.ts.min()), unit="s")),
            "to": str(pd.Timestamp(int(temporal.ts.max()), unit="s")),
            "user_feature_dim": temporal.user_features.shape[1],
            "item_feature_dim": temporal.item_features.shape[1],
            "degrees": dg.MetadataValue.md(markdown_preview(_degrees(temporal))),
            "fingerprint": temporal.fingerprint(),
            "file": dg.MetadataValue.path(str(path)),
            "seconds": round(time.perf_counter() - started, 3),
        }
    )


class TemporalConfig(dg.Config, TemporalParams, TrainParams):
    batch_size: int = 200
    epochs: int = 30
    patience: int = 5


@dg.asset(group_name="training", deps=[interaction_graph, temporal_graph], kinds={"pytorch", "mlflow"}, pool=GPU_POOL)
def temporal_checkpoint(
    context: dg.AssetExecutionContext,
    config: TemporalConfig,
    checkpoints: CheckpointStoreResource,
    mlflow: MlflowResource,
    gpu: GpuResource,
) -> dg.MaterializeResult:
    """TGAT-style temporal attention (optional TGN memory) trained with BPR on the event stream;
    embeddings at the test cut, so the evaluator scores it like LightGCN, plus next-interaction MRR."""
    return _train_temporal(context, "temporal", config, checkpoints, mlflow, gpu)


@dg.asset(
    group_name="training",
    deps=[interaction_graph, temporal_graph, profile_embeddings],
    kinds={"pytorch", "mlflow"},
    pool=GPU_POOL,
)
def temporal_profiles_checkpoint(
    context: dg.AssetExecutionContext,
    config: TemporalConfig,
    checkpoints: CheckpointStoreResource,
    mlflow: MlflowResource,
    gpu: GpuResource,
) -> dg.MaterializeResult:
    """The temporal model with each user's profile facets fused into its embedding (DynLLM: distilled
    top-k facets, attention with the temporal embedding as query, gated residual); same readouts."""
    profiles = ProfileFacets.load(checkpoints.folder("profile_embeddings") / PROFILE_FILE)
    return _train_temporal(context, "temporal_profiles", config, checkpoints, mlflow, gpu, profiles)


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
    graph = load_graph(checkpoints)
    temporal = load_temporal_graph(checkpoints)
    model, train = TemporalParams.model_validate(config.model_dump()), TrainParams.model_validate(config.model_dump())
    accelerator = accelerator_for(gpu.device())
    data = temporal.fingerprint() if profiles is None else f"{temporal.fingerprint()}-{profiles.fingerprint()}"
    return _train_embeddings(
        context,
        name,
        config,
        graph,
        data,
        lambda state_dir, on_epoch: train_temporal(
            graph, temporal, model, train, state_dir, on_epoch, accelerator, profiles
        ),
        checkpoints,
        mlflow,
    )
