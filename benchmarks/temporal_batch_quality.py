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

from grec_dagster.graph.interactions import TEST, TRAIN, InteractionGraph
from grec_dagster.graph.temporal import chronological_batches
from grec_dagster.layout import CheckpointLayout


def repeat_share(users: torch.Tensor, items: torch.Tensor, ts: torch.Tensor, batch_size: int) -> float:
    """Of the user and item slots of every batch, the share whose node appeared earlier in that batch."""
    repeats = 0
    for start, end in chronological_batches(ts, batch_size):
        for nodes in (users[start:end], items[start:end]):
            repeats += (end - start) - int(torch.unique(nodes).numel())
    return repeats / (2 * len(ts))


def training_stream(graph: InteractionGraph) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The training events in time order, as the temporal model's epoch replays them."""
    users, items, ts = graph.edges(TRAIN)
    order = torch.argsort(ts, stable=True)
    return users[order], items[order], ts[order]


def train_one(home: Path, batch_size: int, seed: int) -> dict:
    """One temporal tower, trained and tested as `temporal_checkpoint` does (this process, one thread)."""
    torch.set_num_threads(1)
    from grec_dagster.evaluation.evaluator import evaluate
    from grec_dagster.evaluation.tables import headline_table
    from grec_dagster.graph.temporal import TemporalGraph
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


def synthetic_stream(size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """The training stream of the seeded synthetic shop at `size` interactions (as `bench_gnn_scale.py`)."""
    from grec_dagster.data.synthetic import SyntheticConfig, generate_synthetic
    from grec_dagster.graph.interactions import build_graph
    from grec_dagster.graph.splits import split_labels

    frames = generate_synthetic(SyntheticConfig(n_interactions=size, seed=0)).conformed()
    log = frames.interactions.sort_values(["ts", "source", "source_row"], kind="stable")
    log = log[["user_id", "item_id", "ts"]].reset_index(drop=True)
    graph = build_graph(log, split_labels(log, "temporal"), "temporal")
    return (*training_stream(graph), graph.n_users + graph.n_items)


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

    from grec_dagster.training.train_temporal import TemporalTraining

    layout = CheckpointLayout(args.home / "checkpoints")
    if not layout.temporal_graph.exists():
        raise SystemExit(f"no temporal graph under {args.home}: run `make results` first")
    graph = InteractionGraph.load(layout.interaction_graph)
    stream = training_stream(graph)
    print(f"{args.home.name}: {len(stream[2]):,} training events, {graph.n_users + graph.n_items:,} nodes")
    print("in-batch repeat share:", {size: round(repeat_share(*stream, size), 3) for size in args.batches})
    for size in args.synthetic:
        *synthetic, nodes = synthetic_stream(size)
        capped = TemporalTraining().events_per_batch(len(synthetic[2]))
        sizes = sorted({200, capped})
        shares = {batch: round(repeat_share(*synthetic, batch), 3) for batch in sizes}
        print(
            f"synthetic {size:,}: {len(synthetic[2]):,} training events, {nodes:,} nodes; max_steps "
            f"{TemporalTraining().max_steps} gives batches of {capped:,}; in-batch repeat share: {shares}",
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
