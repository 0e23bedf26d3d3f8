"""Do the LLM profiles pay their way in the text tower? With and without profile features, over seeds.

    python benchmarks/profile_ablation.py [--home .grec/results/movielens-100k-temporal] [--seeds 0 1 2]

Reads the interaction graph, the item-text embeddings and the profile-facet embeddings the pipeline
wrote (run `make results` first), then trains the text tower as the `text_tower_checkpoint` asset
does (same defaults, one initialization seed at a time) with each user's mean profile facet
(`use_profiles: true`, the default) and without it, and evaluates both on the test split exactly as
the evaluation report does (the shared cold-start rule included). Prints NDCG@20 per segment as
mean ± std over seeds and the with / without ratio per seed, with the verdict `results_table` uses:
a gain only beyond its spread. (Temporal + profiles vs temporal is in `make results` itself.)
About 3-5 minutes per training on 2 cores.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
from results_table import spread, verdict
from torch import Tensor

from grec_dagster.evaluation.evaluator import evaluate, ranking_task
from grec_dagster.evaluation.tables import headline_table
from grec_dagster.graph.interactions import TEST, InteractionGraph
from grec_dagster.layout import CheckpointLayout
from grec_dagster.models.text_tower import TextTowerParams
from grec_dagster.models.towers import with_cold_start
from grec_dagster.storage import load_tensors
from grec_dagster.training.loop import TrainParams
from grec_dagster.training.train_text_tower import mean_profile_facets, train_text_tower

SEGMENTS = ("all", "warm_users", "head_items", "tail_items", "cold_items")
VARIANTS = ("with profiles", "without profiles")


def text_tower_test_ndcg(
    graph: InteractionGraph, item_text: Tensor, profiles: tuple[Tensor, int] | None, seed: int
) -> dict[str, float]:
    """Test NDCG@20 per segment of a text tower trained with `profiles` (`mean_profile_facets`) or
    without (None)."""
    profile_text, profile_from = profiles or (None, None)
    trained = train_text_tower(
        graph, item_text, profile_text, TextTowerParams(), TrainParams(seed=seed), profile_from=profile_from
    )
    results = evaluate(
        with_cold_start(trained.score, graph, TEST), graph, "text_tower", TEST, ranking_task(graph, TEST)
    )
    return {segment: float(headline_table(results, segment=segment)["ndcg@20"].iloc[0]) for segment in SEGMENTS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, default=Path(".grec/results/movielens-100k-temporal"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    layout = CheckpointLayout(args.home / "checkpoints")
    if not layout.profile_embeddings.exists():
        raise SystemExit(f"no profile embeddings under {layout.root}: run `make results` first")
    graph = InteractionGraph.load(layout.interaction_graph)
    item_text = load_tensors(layout.item_text_embeddings)[0]["item_text"]
    profiles = mean_profile_facets(layout.profile_embeddings)
    runs: dict[str, list[dict[str, float]]] = {variant: [] for variant in VARIANTS}
    for seed in args.seeds:
        for variant in VARIANTS:
            runs[variant].append(
                text_tower_test_ndcg(graph, item_text, profiles if variant == VARIANTS[0] else None, seed)
            )
            print(f"seed {seed}, {variant}: {runs[variant][-1]}", flush=True)

    with_profiles, without = (pd.DataFrame(runs[variant]) for variant in VARIANTS)
    ratios = with_profiles / without
    table = {variant: {s: spread(pd.DataFrame(runs[variant])[s]) for s in SEGMENTS} for variant in VARIANTS}
    table["with / without"] = {s: f"{spread(ratios[s].dropna())} ({verdict(ratios[s].dropna())})" for s in SEGMENTS}
    print(f"\ntext tower, {graph.protocol} split, test NDCG@20: mean ± std over seeds {args.seeds}\n")
    print(pd.DataFrame(table).T.to_markdown())


if __name__ == "__main__":
    main()
