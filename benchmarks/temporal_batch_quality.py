"""What a larger event batch costs the temporal model: MovieLens-100K quality per batch size, and how
stale each batch size leaves the memory on MovieLens and on long synthetic logs.

    python benchmarks/temporal_batch_quality.py [--home .grec/results/movielens-100k-temporal]
        [--batches 200 1000 2000] [--seeds 0 1 2] [--synthetic 1000000 10000000] [--parallel 2]

Why: the temporal model's stream runs its batches one after another, so an epoch of a long log at
TGN's 200 events per step is tens of thousands of sequential steps; `TemporalTraining.max_steps`
grows the batch instead. A larger batch makes the memory staler (a node's second event in a batch
reads the memory from before its first), so this prints, side by side:

- per batch size, the test NDCG@20 and next-interaction MRR (mean ± std over `--seeds`), epochs and
  seconds per epoch of the temporal tower trained as the `temporal_checkpoint` asset trains it, on
  the interaction and temporal graphs a materialized home holds (`make results` writes them), with
  every other setting at its default;
- the in-batch repeat share of each stream at each batch size: of a batch's user and item slots,
  the share whose node already appeared earlier in the same batch (what the memory misses).

Each training runs in its own process at one torch thread, `--parallel` at a time, so every figure
comes from the same thread count (a thread count changes a run's floats, and with them its
trajectory). The 3 x 3 MovieLens trainings take about 15 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from grec_dagster.graph.interactions import TEST, VALID, InteractionGraph
from grec_dagster.graph.temporal import TemporalGraph, chronological_batches
from grec_dagster.layout import CheckpointLayout


def repeat_share(stream: TemporalGraph, batch_size: int) -> float:
    """Of the user and item slots of every batch, the share whose node appeared earlier in that batch."""
    repeats = 0
    for start, end in chronological_batches(stream.ts, batch_size):
        for nodes in (stream.users[start:end], stream.items[start:end]):
            repeats += (end - start) - int(torch.unique(nodes).numel())
    return repeats / (2 * len(stream.ts))


def train_one(home: Path, batch_size: int, seed: int) -> dict:
    """One temporal tower, trained and tested as `temporal_checkpoint` does (this process, one thread)."""
    torch.set_num_threads(1)
    from grec_dagster.evaluation.evaluator import evaluate
    from grec_dagster.evaluation.tables import headline_table
    from grec_dagster.models.temporal import TemporalParams
    from grec_dagster.models.towers import with_cold_start
    from grec_dagster.training.train_temporal import TemporalTraining, train_temporal

    layout = CheckpointLayout(home / "checkpoints")
    graph = InteractionGraph.load(layout.interaction_graph)
    temporal = TemporalGraph.load(layout.temporal_graph)
    trained = train_temporal(
        graph, temporal, TemporalParams(), TemporalTraining(batch_size=batch_size, max_steps=10**9, seed=seed)
    )
    test = headline_table(evaluate(with_cold_start(trained.score, graph, TEST), graph, "temporal", TEST))
    history = trained.result.history
    return {
        "batch_size": batch_size,
        "seed": seed,
        "ndcg@20": float(test["ndcg@20"].iloc[0]),
        "next_interaction_mrr": trained.result.extra["next_interaction_mrr"],
        "epochs": len(history),
        "seconds_per_epoch": sum(epoch["seconds"] for epoch in history) / len(history),
    }


def spawn(home: Path, batch_size: int, seed: int) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", str(home), str(batch_size), str(seed)]
    env = os.environ | {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"batch {batch_size}, seed {seed} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def spread(values: list[float]) -> str:
    deviation = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {deviation:.4f}"


def synthetic_temporal_graph(size: int) -> TemporalGraph:
    """The temporal graph of the seeded synthetic shop at `size` interactions (as `bench_gnn_scale.py`)."""
    from grec_dagster.data.synthetic import SyntheticConfig, generate_synthetic
    from grec_dagster.graph.features import item_features, user_features
    from grec_dagster.graph.interactions import build_graph
    from grec_dagster.graph.splits import split_labels
    from grec_dagster.graph.temporal import build_temporal_graph

    frames = generate_synthetic(SyntheticConfig(n_interactions=size, seed=0)).conformed()
    log = frames.interactions.sort_values(["ts", "source", "source_row"], kind="stable")
    log = log[["user_id", "item_id", "ts"]].reset_index(drop=True)
    graph = build_graph(log, split_labels(log, "temporal"), "temporal")
    features = user_features(frames.users, graph.user_ids), item_features(frames.items, graph.item_ids)
    return build_temporal_graph(graph, *features)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, default=Path(".grec/results/movielens-100k-temporal"))
    parser.add_argument("--batches", type=int, nargs="+", default=[200, 1000, 2000])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--synthetic", type=int, nargs="*", default=[1_000_000, 10_000_000])
    parser.add_argument("--parallel", type=int, default=2, help="trainings at a time, one thread each")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(train_one(Path(args.worker[0]), int(args.worker[1]), int(args.worker[2]))))
        return

    from grec_dagster.training.train_temporal import TemporalTraining, training_batch_size

    layout = CheckpointLayout(args.home / "checkpoints")
    if not layout.temporal_graph.exists():
        raise SystemExit(f"no temporal graph under {args.home}: run `make results` first")
    home = TemporalGraph.load(layout.temporal_graph)
    stream = home.history_before(VALID)  # the training events, in the order an epoch replays them
    print(f"{args.home.name}: {len(stream.ts):,} training events, {home.n_users + home.n_items:,} nodes")
    print("in-batch repeat share:", {size: round(repeat_share(stream, size), 3) for size in args.batches})
    for size in args.synthetic:
        synthetic = synthetic_temporal_graph(size)
        synthetic_stream = synthetic.history_before(VALID)
        capped = training_batch_size(synthetic, TemporalTraining())
        shares = {batch: round(repeat_share(synthetic_stream, batch), 3) for batch in sorted({200, capped})}
        print(
            f"synthetic {size:,}: {len(synthetic_stream.ts):,} training events, "
            f"{synthetic.n_users + synthetic.n_items:,} nodes; max_steps {TemporalTraining().max_steps} gives "
            f"batches of {capped:,}; in-batch repeat share: {shares}",
            flush=True,
        )

    jobs = [(batch, seed) for batch in args.batches for seed in args.seeds]
    with ThreadPoolExecutor(args.parallel) as pool:
        runs = list(pool.map(lambda job: spawn(args.home, *job), jobs))
    for run in runs:
        print(json.dumps(run))
    print(f"\n## The temporal tower per batch size, {args.home.name}, seeds {args.seeds}, one thread per run\n")
    print("| events per batch | test NDCG@20 | next-interaction MRR | epochs | s / epoch |")
    print("|---:|---:|---:|---:|---:|")
    for batch in args.batches:
        mine = [run for run in runs if run["batch_size"] == batch]
        print(
            f"| {batch} | {spread([r['ndcg@20'] for r in mine])} | {spread([r['next_interaction_mrr'] for r in mine])}"
            f" | {statistics.mean(r['epochs'] for r in mine):.1f}"
            f" | {statistics.mean(r['seconds_per_epoch'] for r in mine):.1f} |"
        )


if __name__ == "__main__":
    main()
