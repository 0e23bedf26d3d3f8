"""Stage 4, evaluation: every model through the one evaluator, stored and rendered as a report."""

import time
from pathlib import Path

import dagster as dg
import pandas as pd
import torch
from pydantic import Field

from assets.fusion import FOLDER as FUSION_FOLDER
from assets.fusion import fusion_at_test, fusion_checkpoint
from assets.graph import interaction_graph, load_graph
from assets.llm import llm_checkpoint
from assets.temporal import temporal_checkpoint, temporal_profiles_checkpoint
from assets.training import graphsage_checkpoint, lightgcn_checkpoint, popularity_baselines
from grec_dagster.evaluation.evaluator import evaluate, ranking_task
from grec_dagster.evaluation.metrics import ScoreFn
from grec_dagster.evaluation.plots import markdown_image, segment_bars
from grec_dagster.evaluation.results import store_results
from grec_dagster.evaluation.tables import headline_table, markdown_preview
from grec_dagster.graph.interactions import TEST
from grec_dagster.models.popularity import broadcast_scores
from grec_dagster.resources import CheckpointStoreResource, DataSourceResource, MlflowResource, WarehouseResource
from grec_dagster.training.checkpoints import load_tensors
from grec_dagster.training.runs import compare_runs
from grec_dagster.training.train_fusion import POPULARITY, fusion_scores

GROUP = "evaluation"
EMBEDDING_MODELS = ("lightgcn", "graphsage", "temporal", "temporal_profiles", "llm")
"""Checkpoint folders holding `user_embedding` and `item_embedding`, scored by dot product."""
TRAINED = [
    lightgcn_checkpoint,
    graphsage_checkpoint,
    temporal_checkpoint,
    temporal_profiles_checkpoint,
    llm_checkpoint,
    fusion_checkpoint,
]
"""Every training asset: the report scores them, the MLflow comparison reads their runs."""


def _dot_scores(embeddings: dict[str, torch.Tensor]) -> ScoreFn:
    return lambda users: embeddings["user_embedding"][users] @ embeddings["item_embedding"].T


@dg.asset(
    group_name=GROUP,
    deps=[interaction_graph, popularity_baselines, *TRAINED],
    kinds={"duckdb"},
)
def evaluation_report(
    context: dg.AssetExecutionContext,
    source: DataSourceResource,
    warehouse: WarehouseResource,
    checkpoints: CheckpointStoreResource,
) -> dg.MaterializeResult:
    """Full-ranking test metrics of every model, overall and per segment, in `evaluation_results`."""
    started = time.perf_counter()
    graph = load_graph(checkpoints)
    task = ranking_task(graph, TEST)
    popularity, _ = load_tensors(checkpoints.folder("popularity_baselines") / "scores.safetensors")
    scorers = {name: broadcast_scores(scores) for name, scores in popularity.items()}
    present = [name for name in EMBEDDING_MODELS if (Path(checkpoints.root) / name / "model.safetensors").exists()]
    missing = [name for name in [*EMBEDDING_MODELS, FUSION_FOLDER] if name not in present]
    for name in present:
        scorers[name] = _dot_scores(load_tensors(Path(checkpoints.root) / name / "model.safetensors")[0])
    if (Path(checkpoints.root) / FUSION_FOLDER / "model.safetensors").exists():
        missing.remove(FUSION_FOLDER)
        fused, static, gated = fusion_at_test(checkpoints)
        if POPULARITY in fused.names:  # fusion's popularity tower: recent items over train + valid, known at the test cut
            scorers["popularity_tower"] = broadcast_scores(fused.towers[fused.names.index(POPULARITY)].item_vectors)
        scorers |= {"static_fusion": fusion_scores(static, fused), "gated_fusion": fusion_scores(gated, fused)}
    if missing:
        context.log.warning(f"no checkpoint of {missing}: materialize them to see them in the report")
    results = pd.concat([evaluate(fn, graph, name, TEST, task) for name, fn in scorers.items()], ignore_index=True)
    results.insert(0, "protocol", graph.protocol)
    results.insert(0, "dataset", source.kind)
    with warehouse.connect() as con:
        store_results(con, results, context.run_id)
    headline = headline_table(results)
    by_segment = pd.concat(
        [
            headline_table(results, segment=s, metrics=(("recall", 20), ("ndcg", 20))).assign(segment=s)
            for s in results["segment"].unique()
        ],
        ignore_index=True,
    )
    report = checkpoints.folder("reports") / f"evaluation_{source.kind}_{graph.protocol}.md"
    bars = segment_bars(results)
    report.with_suffix(".png").write_bytes(bars)
    report.write_text(
        f"# {source.kind}, {graph.protocol} split\n\n{markdown_preview(headline, 50)}\n\n"
        f"## Per segment\n\n{markdown_preview(by_segment, 200)}\n\n![NDCG@20 per segment]({report.stem}.png)\n"
    )
    context.log.info("\n" + markdown_preview(headline, 50))
    return dg.MaterializeResult(
        metadata={
            "results": dg.MetadataValue.md(markdown_preview(headline, 50)),
            "per_segment": dg.MetadataValue.md(markdown_preview(by_segment, 200)),
            "per_segment_plot": dg.MetadataValue.md(markdown_image(bars, "NDCG@20 per segment")),
            "report_file": dg.MetadataValue.path(str(report)),
            "not_materialized": missing,
            "seconds": round(time.perf_counter() - started, 3),
        }
    )


class MlflowComparisonConfig(dg.Config):
    last: int = Field(default=20, ge=1, description="How many of the experiment's newest runs.")
    prefix: str = Field(default="test_", description="Only metrics starting with this ('' for all).")


@dg.asset(
    group_name=GROUP,
    deps=TRAINED,
    kinds={"mlflow"},
)
def mlflow_comparison(
    config: MlflowComparisonConfig, mlflow: MlflowResource, checkpoints: CheckpointStoreResource
) -> dg.MaterializeResult:
    """The metrics of the experiment's newest runs side by side (`grec runs compare`), as markdown and CSV."""
    table = compare_runs(mlflow.tracking_uri, mlflow.experiment, config.last, config.prefix)
    path = checkpoints.folder("reports") / f"mlflow_comparison_{mlflow.experiment}.csv"
    table.to_csv(path, index_label="metric")
    shown = table.round(4).reset_index(names="metric")
    return dg.MaterializeResult(
        metadata={
            "runs": len(table.columns),
            "comparison": dg.MetadataValue.md(markdown_preview(shown, len(shown))),
            "csv": dg.MetadataValue.path(str(path)),
        }
    )
