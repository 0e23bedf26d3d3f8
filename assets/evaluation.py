"""Stage 4, evaluation: every model through the one evaluator, stored and rendered as a report."""

import time

import dagster as dg
import pandas as pd
import torch

from assets.graph import interaction_graph, load_graph
from assets.temporal import temporal_checkpoint
from assets.training import graphsage_checkpoint, lightgcn_checkpoint, popularity_baselines
from grec_dagster.evaluation.evaluator import evaluate, ranking_task
from grec_dagster.evaluation.metrics import ScoreFn
from grec_dagster.evaluation.results import store_results
from grec_dagster.evaluation.tables import headline_table, markdown_preview
from grec_dagster.graph.interactions import TEST
from grec_dagster.models.popularity import broadcast_scores
from grec_dagster.resources import CheckpointStoreResource, DataSourceResource, WarehouseResource
from grec_dagster.training.checkpoints import load_tensors

GROUP = "evaluation"
EMBEDDING_MODELS = ("lightgcn", "graphsage", "temporal")
"""Checkpoint folders holding `user_embedding` and `item_embedding`, scored by dot product."""


def _dot_scores(embeddings: dict[str, torch.Tensor]) -> ScoreFn:
    return lambda users: embeddings["user_embedding"][users] @ embeddings["item_embedding"].T


@dg.asset(
    group_name=GROUP,
    deps=[interaction_graph, popularity_baselines, lightgcn_checkpoint, graphsage_checkpoint, temporal_checkpoint],
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
    for name in EMBEDDING_MODELS:
        scorers[name] = _dot_scores(load_tensors(checkpoints.folder(name) / "model.safetensors")[0])
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
    report.write_text(
        f"# {source.kind}, {graph.protocol} split\n\n{markdown_preview(headline, 50)}\n\n"
        f"## Per segment\n\n{markdown_preview(by_segment, 200)}\n"
    )
    context.log.info("\n" + markdown_preview(headline, 50))
    return dg.MaterializeResult(
        metadata={
            "results": dg.MetadataValue.md(markdown_preview(headline, 50)),
            "per_segment": dg.MetadataValue.md(markdown_preview(by_segment, 200)),
            "report_file": dg.MetadataValue.path(str(report)),
            "seconds": round(time.perf_counter() - started, 3),
        }
    )
