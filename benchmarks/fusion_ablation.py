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

from assets.fusion import FusionConfig
from grec_dagster.evaluation.evaluator import evaluate, ranking_task
from grec_dagster.evaluation.tables import headline_table
from grec_dagster.graph.interactions import TEST, VALID, InteractionGraph
from grec_dagster.training.loop import TrainParams
from grec_dagster.training.train_fusion import POPULARITY, FusionParams, fusion_scores, tower_inputs, train_fusion

VARIANTS: dict[str, tuple[list[str], dict]] = {
    "all towers (the asset's default)": ([POPULARITY, "lightgcn", "graphsage", "temporal", "llm"], {}),
    "all, temporal with profiles": ([POPULARITY, "lightgcn", "graphsage", "temporal_profiles", "llm"], {}),
    "all but popularity": (["lightgcn", "graphsage", "temporal", "llm"], {}),
    "popularity + lightgcn": ([POPULARITY, "lightgcn"], {}),
    "popularity + graphsage": ([POPULARITY, "graphsage"], {}),
    "popularity + temporal": ([POPULARITY, "temporal"], {}),
    "popularity + llm (text tower)": ([POPULARITY, "llm"], {}),
    "all, no per-item offsets (item_l2 = 10)": ([POPULARITY, "lightgcn", "graphsage", "temporal", "llm"], {"item_l2": 10.0}),
    "all, context biases only (hidden = 1, item_l2 = 10)": (
        [POPULARITY, "lightgcn", "graphsage", "temporal", "llm"],
        {"item_l2": 10.0, "hidden": 1},
    ),
}


def run_variant(graph: InteractionGraph, root: Path, towers: list[str], overrides: dict) -> dict[str, float | str]:
    defaults = FusionConfig().model_dump()
    params = FusionParams.model_validate(defaults | overrides)
    train = TrainParams.model_validate(defaults)
    paths = {name: root / name / "model.safetensors" for name in towers if name != POPULARITY}
    missing = [name for name, path in paths.items() if not path.exists()]
    if missing:
        raise SystemExit(f"no checkpoint for {missing} under {root}: run `make results` first")
    popularity = POPULARITY in towers
    trained = train_fusion(graph, tower_inputs(graph, paths, VALID, popularity), params, train, events=[])
    test = tower_inputs(graph, paths, TEST, popularity)
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
    root = args.home / "checkpoints"
    graph = InteractionGraph.load(root / "interaction_graph")
    rows = {}
    for name, (towers, overrides) in VARIANTS.items():
        rows[name] = run_variant(graph, root, towers, overrides)
        print(f"{name}: {rows[name]}", flush=True)
    print(f"\nfusion ablations, {graph.protocol} split, test set\n")
    print(pd.DataFrame(rows).T.round(4).to_markdown())


if __name__ == "__main__":
    main()
