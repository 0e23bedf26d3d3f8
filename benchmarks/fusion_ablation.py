"""Fusion ablations on a materialized GREC_HOME: which towers, and which gate parts, earn their place.

    python benchmarks/fusion_ablation.py [--home .grec/results/movielens-100k-temporal-seed0]

Reads the interaction graph and the tower checkpoints the pipeline wrote (run `make results`
first), then fits static and gated fusion exactly as the `fusion_checkpoint` asset does (same
defaults, validation events only) for each variant, and prints test NDCG@20 and cold-item
Recall@20 of both side by side, with the gated / static ratio. Fusion is small: the whole table
takes a few minutes on 2 cores.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from grec_dagster.evaluation.evaluator import evaluate, ranking_task
from grec_dagster.evaluation.tables import headline_table
from grec_dagster.graph.interactions import TEST, VALID, InteractionGraph
from grec_dagster.layout import (
    GRAPHSAGE,
    LIGHTGCN,
    POPULARITY,
    TEMPORAL,
    TEMPORAL_PROFILES,
    TEXT_TOWER,
    CheckpointLayout,
)
from grec_dagster.models.towers import towers_at, trained_towers
from grec_dagster.training.train_fusion import FusionParams, FusionTraining, fusion_scores, train_fusion

ALL = [POPULARITY, LIGHTGCN, GRAPHSAGE, TEMPORAL, TEXT_TOWER]
VARIANTS: dict[str, tuple[list[str], dict]] = {
    "all towers (the asset's default)": (ALL, {}),
    "all, temporal with profiles": ([POPULARITY, LIGHTGCN, GRAPHSAGE, TEMPORAL_PROFILES, TEXT_TOWER], {}),
    "all but popularity": (ALL[1:], {}),
    "popularity + lightgcn": ([POPULARITY, LIGHTGCN], {}),
    "popularity + graphsage": ([POPULARITY, GRAPHSAGE], {}),
    "popularity + temporal": ([POPULARITY, TEMPORAL], {}),
    "popularity + text tower": ([POPULARITY, TEXT_TOWER], {}),
    "all, no per-item offsets (item_l2 = 10)": (ALL, {"item_l2": 10.0}),
    "all, context biases only (hidden = 1, item_l2 = 10)": (ALL, {"item_l2": 10.0, "hidden": 1}),
}


def run_variant(
    graph: InteractionGraph, layout: CheckpointLayout, towers: list[str], overrides: dict
) -> dict[str, float | str]:
    params = FusionParams.model_validate({"towers": towers} | overrides)
    missing = sorted(set(towers) - set(trained_towers(layout, towers)))
    if missing:
        raise SystemExit(f"no checkpoint for {missing} under {layout.root}: run `make results` first")
    trained = train_fusion(graph, towers_at(graph, layout, towers, VALID), params, FusionTraining(), events=[])
    test = towers_at(graph, layout, towers, TEST)
    task = ranking_task(graph, TEST)
    results = pd.concat(
        [
            evaluate(fusion_scores(trained.static, test), graph, "static", TEST, task),
            evaluate(fusion_scores(trained.gated, test), graph, "gated", TEST, task),
        ]
    )
    overall = headline_table(results).set_index("model")["ndcg@20"]
    cold = headline_table(results, segment="cold_items").set_index("model")["recall@20"]
    weights = ", ".join(f"{n} {w:.1f}" for n, w in zip(trained.towers, trained.static.weights.tolist(), strict=True))
    return {
        "static weights": weights,
        "static NDCG@20": overall["static"],
        "gated NDCG@20": overall["gated"],
        "gated / static": overall["gated"] / overall["static"],
        "cold R@20 static": cold["static"],
        "cold R@20 gated": cold["gated"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, default=Path(".grec/results/movielens-100k-temporal-seed0"))
    args = parser.parse_args()
    layout = CheckpointLayout(args.home / "checkpoints")
    graph = InteractionGraph.load(layout.interaction_graph)
    rows = {}
    for name, (towers, overrides) in VARIANTS.items():
        rows[name] = run_variant(graph, layout, towers, overrides)
        print(f"{name}: {rows[name]}", flush=True)
    print(f"\nfusion ablations, {graph.protocol} split, test set\n")
    print(pd.DataFrame(rows).T.round(4).to_markdown())


if __name__ == "__main__":
    main()
