"""Fusion ablations on a materialized GREC_HOME: which towers, and which gate parts, earn their place.

    python benchmarks/fusion_ablation.py [--home .grec/results/movielens-100k-temporal] [--only VARIANT ...]
    python benchmarks/fusion_ablation.py --home .grec/results/movielens-100k-random-split{0,1,2}

Reads the interaction graph and the tower checkpoints the pipeline wrote (run `make results`
first; the checkpoints are those of the last seed it trained), then fits static and gated fusion
exactly as the `fusion_checkpoint` asset did there (its training settings and seed, read from the
home's fusion checkpoint; validation events only) for each variant, so the default variant's
test numbers are the evaluation report's. It prints validation and test NDCG@20 side by side
(validation is what the fusion is fit on, so it flatters every variant alike) of the static
blend, of the static weights the gates start from (the same blend unless a variant tunes one per
item segment) and of the gates, cold-item Recall@20 and the gated / static ratio. Fusion is
small: the whole table takes about 10 minutes on the temporal home, 2 cores (`--only` picks
variants); with several homes a mean ± std table follows.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from torch import Tensor

from grec_dagster.evaluation.evaluator import evaluate, ranking_task
from grec_dagster.evaluation.tables import headline_table
from grec_dagster.graph.interactions import TEST, VALID, InteractionGraph
from grec_dagster.layout import (
    EASE,
    FUSION,
    GRAPHSAGE,
    LIGHTGCN,
    POPULARITY,
    SASREC,
    TEMPORAL,
    TEMPORAL_PROFILES,
    TEXT_TOWER,
    CheckpointLayout,
)
from grec_dagster.models.fusion import StaticFusion
from grec_dagster.models.towers import CONTEXTS, towers_at, trained_towers
from grec_dagster.storage import load_tensors
from grec_dagster.training.train_fusion import FusionParams, FusionTraining, fusion_scores, train_fusion

ALL = [POPULARITY, LIGHTGCN, GRAPHSAGE, TEMPORAL, EASE, SASREC, TEXT_TOWER]
VARIANTS: dict[str, tuple[list[str], dict]] = {
    "all towers (the asset's default)": (ALL, {}),
    "all, temporal with profiles": ([TEMPORAL_PROFILES if name == TEMPORAL else name for name in ALL], {}),
    "all but popularity": (ALL[1:], {}),
    "popularity + lightgcn": ([POPULARITY, LIGHTGCN], {}),
    "popularity + graphsage": ([POPULARITY, GRAPHSAGE], {}),
    "popularity + temporal": ([POPULARITY, TEMPORAL], {}),
    "popularity + ease": ([POPULARITY, EASE], {}),
    "popularity + sasrec": ([POPULARITY, SASREC], {}),
    "popularity + text tower": ([POPULARITY, TEXT_TOWER], {}),
    "all, no per-item offsets (item_l2 = 10)": (ALL, {"item_l2": 10.0}),
    "all, context biases only (hidden = 1, item_l2 = 10)": (ALL, {"item_l2": 10.0, "hidden": 1}),
    "all, gates read user recency and item age": (ALL, {"recency_features": True}),
    "all, gates start per item segment (cold-item slot)": (ALL, {"start_per_item_segment": True}),
    "all, both": (ALL, {"recency_features": True, "start_per_item_segment": True}),
}


def pipeline_training(layout: CheckpointLayout) -> FusionTraining:
    """The training settings (seed included) of the home's own fusion checkpoint, so that the default
    variant refits exactly the fusion the evaluation report scored; the defaults when there is none."""
    checkpoint = layout.model(FUSION).checkpoint
    if not checkpoint.exists():
        return FusionTraining()
    _, meta = load_tensors(checkpoint)
    return FusionTraining.model_validate({key: meta[key] for key in FusionTraining.model_fields if key in meta})


def run_variant(
    graph: InteractionGraph, layout: CheckpointLayout, towers: list[str], overrides: dict, training: FusionTraining
) -> dict[str, float | str]:
    params = FusionParams.model_validate({"towers": towers} | overrides)
    missing = sorted(set(towers) - set(trained_towers(layout, towers)))
    if missing:
        raise SystemExit(f"no checkpoint for {missing} under {layout.root}: run `make results` first")
    trained = train_fusion(graph, towers_at(graph, layout, towers, VALID), params, training, events=[])
    scored = {}
    for cut in (VALID, TEST):
        inputs, task = towers_at(graph, layout, towers, cut), ranking_task(graph, cut)
        scored[cut] = pd.concat(
            [
                evaluate(fusion_scores(trained.static, inputs), graph, "static", cut, task),
                evaluate(fusion_scores(StaticFusion(trained.start), inputs), graph, "start", cut, task),
                evaluate(fusion_scores(trained.gated, inputs), graph, "gated", cut, task),
            ]
        )
    valid = headline_table(scored[VALID]).set_index("model")["ndcg@20"]
    test = headline_table(scored[TEST]).set_index("model")["ndcg@20"]
    cold = headline_table(scored[TEST], segment="cold_items").set_index("model")["recall@20"]
    cold_start = trained.start[CONTEXTS.index("warm_users/cold_items")]
    return {
        "static weights": weights_text(trained.towers, trained.static.weights),
        "gates' start on cold items": weights_text(trained.towers, cold_start),
        "valid static": valid["static"],
        "valid start": valid["start"],
        "valid gated": valid["gated"],
        "test static": test["static"],
        "test start": test["start"],
        "test gated": test["gated"],
        "test gated / static": test["gated"] / test["static"],
        "test cold R@20 static": cold["static"],
        "test cold R@20 gated": cold["gated"],
    }


def weights_text(towers: list[str], weights: Tensor) -> str:
    """The towers with a non-zero weight, e.g. 'popularity 0.4, temporal 0.6'."""
    return ", ".join(f"{name} {w:.1f}" for name, w in zip(towers, weights.tolist(), strict=True) if w > 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--home",
        type=Path,
        nargs="+",
        default=[Path(".grec/results/movielens-100k-temporal")],
        help="one or more materialized homes (e.g. the random split seeds'); with several, a mean ± std table follows",
    )
    parser.add_argument("--only", nargs="+", choices=VARIANTS, metavar="VARIANT", help="run these variants only")
    args = parser.parse_args()
    tables = [ablation_table(home, args.only or list(VARIANTS)) for home in args.home]
    if len(tables) > 1:
        print(f"\nmean ± std over the {len(tables)} homes\n")
        print(spread_table(tables).to_markdown())


def ablation_table(home: Path, variants: list[str]) -> pd.DataFrame:
    """Every variant's row on one home, printed as it comes and as a table."""
    layout = CheckpointLayout(home / "checkpoints")
    graph = InteractionGraph.load(layout.interaction_graph)
    training = pipeline_training(layout)
    rows = {}
    for name in variants:
        towers, overrides = VARIANTS[name]
        rows[name] = run_variant(graph, layout, towers, overrides, training)
        print(f"{home.name}, {name}: {rows[name]}", flush=True)
    table = pd.DataFrame(rows).T
    print(
        f"\nfusion ablations, {home.name} ({graph.protocol} split, fusion seed {training.seed}), "
        "NDCG@20 on validation (fit on it) and test\n"
    )
    print(table.round(4).to_markdown())
    return table


def spread_table(tables: list[pd.DataFrame]) -> pd.DataFrame:
    """Mean ± std (ddof 1) over homes of every numeric column, per variant."""
    numeric = [column for column in tables[0].columns if not isinstance(tables[0][column].iloc[0], str)]
    stacked = np.stack([table[numeric].to_numpy(dtype=float) for table in tables])
    mean, std = stacked.mean(axis=0), stacked.std(axis=0, ddof=1)
    cells = np.vectorize(lambda m, s: f"{m:.4f} ± {s:.4f}")(mean, std)
    return pd.DataFrame(cells, index=tables[0].index, columns=numeric)


if __name__ == "__main__":
    main()
