"""Stage 6, evaluation: every model through the one evaluator, stored and rendered as a report, and
the MLflow runs side by side."""

import time

import dagster as dg
import pandas as pd
from pydantic import Field

from assets.features import interaction_graph
from assets.fusion import fusion_checkpoint
from assets.training import TOWER_ASSETS, popularity_baselines
from grec_dagster.evaluation.evaluator import evaluate, ranking_task
from grec_dagster.evaluation.plots import markdown_image, segment_bars
from grec_dagster.evaluation.results import store_results
from grec_dagster.evaluation.tables import headline_table, markdown_preview
from grec_dagster.graph.interactions import TEST, InteractionGraph
from grec_dagster.layout import (
    FUSION,
    GATED_FUSION,
    MODEL_READS,
    MOST_POPULAR,
    MOST_POPULAR_RECENT,
    STATIC_FUSION,
    TOWERS,
    Scorer,
)
from grec_dagster.models.popularity import broadcast_scores
from grec_dagster.models.towers import towers_at, trained_towers, with_cold_start
from grec_dagster.resources import CheckpointStoreResource, DataSourceResource, MlflowResource, WarehouseResource
from grec_dagster.storage import atomic_write, load_tensors
from grec_dagster.training.runs import compare_runs
from grec_dagster.training.train_fusion import fusion_at, fusion_scores

GROUP = "evaluation"
COLD_USERS = {
    MOST_POPULAR: "the same list as everyone",
    MOST_POPULAR_RECENT: "the same list as everyone",
    **dict.fromkeys(TOWERS, "recent popularity (the cold-start rule)"),
    STATIC_FUSION: "the fused towers (zero vectors from ID-based towers leave popularity to decide)",
    GATED_FUSION: "the cold-user gates",
}
"""How each model ranks a user with no event before the test cut."""
TRAINED = [*TOWER_ASSETS, fusion_checkpoint]
"""Every training asset: the report scores them, the MLflow comparison reads their runs."""


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
    layout = checkpoints.layout
    graph = InteractionGraph.load(layout.interaction_graph)
    task = ranking_task(graph, TEST)
    popularity, _ = load_tensors(layout.popularity_scores)
    scorers = {name: broadcast_scores(scores) for name, scores in popularity.items()}
    embedding_towers = [name for name, spec in TOWERS.items() if spec.scorer == Scorer.EMBEDDINGS]
    present = trained_towers(layout, embedding_towers)
    missing = [name for name in [*embedding_towers, FUSION] if name not in present]
    scorers |= {
        tower.name: with_cold_start(tower.scores, graph, TEST)
        for tower in towers_at(graph, layout, present, TEST).towers
    }
    if layout.model(FUSION).checkpoint.exists():
        missing.remove(FUSION)
        fused, static, gated = fusion_at(layout, graph, TEST)
        scorers |= {STATIC_FUSION: fusion_scores(static, fused), GATED_FUSION: fusion_scores(gated, fused)}
    if missing:
        context.log.warning(f"no checkpoint of {missing}: materialize them to see them in the report")
    results = pd.concat([evaluate(fn, graph, name, TEST, task) for name, fn in scorers.items()], ignore_index=True)
    results.insert(0, "protocol", graph.protocol)
    results.insert(0, "dataset", source.kind)
    with warehouse.connect() as con:
        store_results(con, results, context.run_id)
    headline = headline_table(results)
    seen = pd.DataFrame({"model": list(scorers), "what it saw": [MODEL_READS[name] for name in scorers]}).assign(
        cold_users=lambda table: [COLD_USERS[name] for name in table.model]
    )
    by_segment = pd.concat(
        [
            headline_table(results, segment=s, metrics=(("recall", 20), ("ndcg", 20))).assign(segment=s)
            for s in results["segment"].unique()
        ],
        ignore_index=True,
    )
    report = layout.report(f"evaluation_{source.kind}_{graph.protocol}.md")
    bars = segment_bars(results)
    plot = atomic_write(report.with_suffix(".png"), lambda path: path.write_bytes(bars))
    text = (
        f"# {source.kind}, {graph.protocol} split\n\n{markdown_preview(headline, 50)}\n\n"
        f"## What each model saw\n\n{markdown_preview(seen, 50)}\n\n"
        f"## Per segment\n\n{markdown_preview(by_segment, 200)}\n\n![NDCG@20 per segment]({plot.name})\n"
    )
    atomic_write(report, lambda path: path.write_text(text))
    context.log.info("\n" + markdown_preview(headline, 50))
    return dg.MaterializeResult(
        metadata={
            "results": dg.MetadataValue.md(markdown_preview(headline, 50)),
            "what_each_model_saw": dg.MetadataValue.md(markdown_preview(seen, 50)),
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
    over_seeds: bool = Field(default=False, description="One column per model and commit, mean ± std over seeds.")


@dg.asset(
    group_name=GROUP,
    deps=TRAINED,
    kinds={"mlflow"},
)
def mlflow_comparison(
    config: MlflowComparisonConfig, mlflow: MlflowResource, checkpoints: CheckpointStoreResource
) -> dg.MaterializeResult:
    """The metrics of the experiment's newest runs side by side (`grec runs compare`), as markdown and CSV."""
    table = compare_runs(mlflow.tracking_uri, mlflow.experiment, config.last, config.prefix, config.over_seeds)
    path = atomic_write(
        checkpoints.layout.report(f"mlflow_comparison_{mlflow.experiment}.csv"),
        lambda partial: table.to_csv(partial, index_label="metric"),
    )
    shown = table.round(4).reset_index(names="metric")
    return dg.MaterializeResult(
        metadata={
            "runs": len(table.columns),
            "comparison": dg.MetadataValue.md(markdown_preview(shown, len(shown))),
            "csv": dg.MetadataValue.path(str(path)),
        }
    )
