"""What a faster training setting costs in quality: MovieLens-100K quality per batch size for the two
models whose epochs `max_steps` caps on long logs (the temporal model and GraphSAGE), how stale each
batch size leaves the temporal memory on MovieLens and on long synthetic logs, and any of those
towers or the text tower trained under bf16 autocast (`--precisions`).

    python benchmarks/batch_quality.py [--home .grec/results/movielens-100k-temporal]
        [--models temporal graphsage text_tower] [--multiples 1 5 10] [--sqrt-lr] [--seeds 0 1 2]
        [--precisions float32 bfloat16] [--synthetic 1000000 10000000] [--parallel 2]

Why: `TemporalTraining.max_steps` and `GraphSAGETraining.max_steps` grow a long log's batches so
that an epoch has a bounded number of steps (the temporal stream's batches run one after another;
GraphSAGE's step costs what its neighbour sample costs, which grows slower than its batch). A
larger batch means fewer optimizer steps per epoch for both, and a staler memory for the temporal
model (a node's second event in a batch reads the memory from before its first). This prints, side
by side:

- per model and batch size (`--multiples` of the model's default batch: the temporal model's 200,
  GraphSAGE's 2,048; with `--sqrt-lr`, each larger batch also at the default learning rate times
  the square root of its multiple, the usual Adam scaling), the test NDCG@20 (mean ± std over `--seeds`), the temporal model's
  next-interaction MRR, the epochs run and the best one, seconds per epoch and in all, each tower
  trained as its asset trains it, on the interaction and temporal graphs a materialized home holds
  (`make results` writes them), with every other setting at its default;
- the in-batch repeat share of the temporal stream at each batch size: of a batch's user and item
  slots, the share whose node already appeared earlier in the same batch (what the memory misses);
- with `--precisions float32 bfloat16`, each of those settings in both precisions (`precision`, a
  training setting of every tower: bf16 matmuls in the training forward passes).

Each training runs in its own process at one torch thread, `--parallel` at a time, so every figure
comes from the same thread count (a thread count changes a run's floats, and with them its
trajectory). The temporal model's 3 x 3 MovieLens trainings take about 15 minutes on 2 cores.
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
from typing import get_args

import duckdb
import torch

from grec_dagster.graph.interactions import TEST, VALID, InteractionGraph
from grec_dagster.graph.temporal import TemporalGraph, chronological_batches
from grec_dagster.layout import GRAPHSAGE, TEMPORAL, TEXT_TOWER, CheckpointLayout
from grec_dagster.training.embeddings import TrainedEmbeddings
from grec_dagster.training.loop import Precision, StepCappedTraining, TrainParams
from grec_dagster.training.train_graphsage import GraphSAGETraining
from grec_dagster.training.train_temporal import TemporalTraining, events_per_batch

MODELS = (TEMPORAL, GRAPHSAGE, TEXT_TOWER)


def repeat_share(stream: TemporalGraph, batch_size: int) -> float:
    """Of the user and item slots of every batch, the share whose node appeared earlier in that batch."""
    repeats = 0
    for start, end in chronological_batches(stream.ts, batch_size):
        for nodes in (stream.users[start:end], stream.items[start:end]):
            repeats += (end - start) - int(torch.unique(nodes).numel())
    return repeats / (2 * len(stream.ts))


def default_training(model: str) -> TrainParams:
    return {TEMPORAL: TemporalTraining, GRAPHSAGE: GraphSAGETraining}.get(model, TrainParams)()


def default_batch(model: str) -> int:
    return default_training(model).batch_size


def learning_rates(model: str, multiple: int, sqrt_lr: bool) -> list[float | None]:
    """None (the default), and with `sqrt_lr` the default x sqrt(multiple) for a larger batch."""
    return [None, default_training(model).lr * multiple**0.5] if sqrt_lr and multiple > 1 else [None]


def settings(model: str, batch_size: int, lr: float | None, seed: int, precision: str) -> dict:
    """The training settings that differ from a model's defaults: the batch (and no step cap where the
    model has one), the seed, the precision, maybe the lr."""
    uncapped = {"max_steps": 10**9} if isinstance(default_training(model), StepCappedTraining) else {}
    return (
        {"batch_size": batch_size, "seed": seed, "precision": precision} | uncapped | ({} if lr is None else {"lr": lr})
    )


def train(model: str, home: Path, graph: InteractionGraph, spec: dict) -> TrainedEmbeddings:
    """`model` trained as its asset trains it, with `spec`'s settings."""
    layout = CheckpointLayout(home / "checkpoints")
    if model == TEMPORAL:
        from grec_dagster.models.temporal import TemporalParams
        from grec_dagster.training.train_temporal import train_temporal

        temporal = TemporalGraph.load(layout.temporal_graph)
        return train_temporal(graph, temporal, TemporalParams(), TemporalTraining(**spec))
    if model == TEXT_TOWER:
        from grec_dagster.models.text_tower import TextTowerParams
        from grec_dagster.storage import load_tensors
        from grec_dagster.training.train_text_tower import mean_profile_facets, train_text_tower

        item_text = load_tensors(layout.item_text_embeddings)[0]["item_text"]
        profile_text, profile_from = mean_profile_facets(layout.profile_embeddings)
        return train_text_tower(
            graph, item_text, profile_text, TextTowerParams(), TrainParams(**spec), profile_from=profile_from
        )
    from grec_dagster.graph.features import item_features, user_features
    from grec_dagster.models.graphsage import GraphSAGEParams
    from grec_dagster.training.train_graphsage import train_graphsage

    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as con:
        item_x = item_features(con.execute("SELECT * FROM items").df(), graph.item_ids)
        user_x = user_features(con.execute("SELECT * FROM users").df(), graph.user_ids)
    return train_graphsage(graph, user_x, item_x, GraphSAGEParams(), GraphSAGETraining(**spec))


def train_one(model: str, home: Path, spec: dict) -> dict:
    """One tower, trained and tested as its asset does (this process, one thread)."""
    torch.set_num_threads(1)
    from grec_dagster.evaluation.evaluator import evaluate
    from grec_dagster.evaluation.tables import headline_table
    from grec_dagster.models.towers import with_cold_start

    graph = InteractionGraph.load(CheckpointLayout(home / "checkpoints").interaction_graph)
    trained = train(model, home, graph, spec)
    test = headline_table(evaluate(with_cold_start(trained.score, graph, TEST), graph, model, TEST))
    history = trained.result.history
    return {
        "model": model,
        "batch_size": spec["batch_size"],
        "lr": spec.get("lr"),
        "precision": spec["precision"],
        "seed": spec["seed"],
        "ndcg@20": float(test["ndcg@20"].iloc[0]),
        "next_interaction_mrr": trained.result.extra.get("next_interaction_mrr", float("nan")),
        "epochs": len(history),
        "best_epoch": trained.result.best_epoch,
        "seconds_per_epoch": sum(epoch["seconds"] for epoch in history) / len(history),
        "seconds": sum(epoch["seconds"] for epoch in history),
    }


def spawn(model: str, home: Path, spec: dict) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", model, str(home), json.dumps(spec)]
    env = os.environ | {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{model} {spec} failed:\n{done.stderr[-3000:]}")
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


def print_repeat_shares(home: Path, batches: list[int], synthetic_sizes: list[int]) -> None:
    stream = TemporalGraph.load(CheckpointLayout(home / "checkpoints").temporal_graph).history_before(VALID)
    print(f"{home.name}: {len(stream.ts):,} training events")
    print("in-batch repeat share:", {size: round(repeat_share(stream, size), 3) for size in batches})
    for size in synthetic_sizes:
        synthetic = synthetic_temporal_graph(size)
        synthetic_stream = synthetic.history_before(VALID)
        capped = events_per_batch(synthetic, TemporalTraining())
        shares = {batch: round(repeat_share(synthetic_stream, batch), 3) for batch in sorted({200, capped})}
        print(
            f"synthetic {size:,}: {len(synthetic_stream.ts):,} training events, "
            f"{synthetic.n_users + synthetic.n_items:,} nodes; max_steps {TemporalTraining().max_steps} gives "
            f"batches of {capped:,}; in-batch repeat share: {shares}",
            flush=True,
        )


def setting(run: dict) -> tuple[int, float, str]:
    """What a run's row in the table is keyed by: its batch, learning rate (0: the default) and precision."""
    return run["batch_size"], run["lr"] or 0.0, run["precision"]


def print_table(model: str, runs: list[dict], home: Path, seeds: list[int]) -> None:
    print(f"\n## {model} per batch size, {home.name}, seeds {seeds}, one thread per run\n")
    print(
        "| per batch | lr | precision | test NDCG@20 | next-interaction MRR | epochs run | best epoch | s / epoch"
        " | s in all |"
    )
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    for batch, lr, precision in sorted({setting(run) for run in runs}):
        mine = [run for run in runs if setting(run) == (batch, lr, precision)]
        mrr = spread([r["next_interaction_mrr"] for r in mine]) if model == TEMPORAL else "-"
        print(
            f"| {batch:,} | {f'{lr:.3g}' if lr else 'default'} | {precision} | {spread([r['ndcg@20'] for r in mine])}"
            f" | {mrr}"
            f" | {statistics.mean(r['epochs'] for r in mine):.1f}"
            f" | {statistics.mean(r['best_epoch'] for r in mine):.1f}"
            f" | {statistics.mean(r['seconds_per_epoch'] for r in mine):.1f}"
            f" | {statistics.mean(r['seconds'] for r in mine):.0f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, default=Path(".grec/results/movielens-100k-temporal"))
    parser.add_argument("--models", nargs="+", choices=MODELS, default=[TEMPORAL, GRAPHSAGE])
    parser.add_argument("--multiples", type=int, nargs="+", default=[1, 5, 10], help="of each model's default batch")
    parser.add_argument("--sqrt-lr", action="store_true", help="also train larger batches at lr x sqrt(multiple)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--precisions", nargs="+", choices=get_args(Precision), default=["float32"])
    parser.add_argument("--synthetic", type=int, nargs="*", default=[1_000_000, 10_000_000])
    parser.add_argument("--parallel", type=int, default=2, help="trainings at a time, one thread each")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        model, home, spec = args.worker
        print(json.dumps(train_one(model, Path(home), json.loads(spec))))
        return

    layout = CheckpointLayout(args.home / "checkpoints")
    if not layout.temporal_graph.exists():
        raise SystemExit(f"no temporal graph under {args.home}: run `make results` first")
    if TEMPORAL in args.models:
        print_repeat_shares(args.home, [default_batch(TEMPORAL) * m for m in args.multiples], args.synthetic)
    jobs = [
        (model, settings(model, default_batch(model) * multiple, lr, seed, precision))
        for model in args.models
        for multiple in args.multiples
        for lr in learning_rates(model, multiple, args.sqrt_lr)
        for seed in args.seeds
        for precision in args.precisions  # innermost: a seed's precisions run side by side, under the same load
    ]
    with ThreadPoolExecutor(args.parallel) as pool:
        runs = list(pool.map(lambda job: spawn(job[0], args.home, job[1]), jobs))
    for run in runs:
        print(json.dumps(run))
    for model in args.models:
        print_table(model, [run for run in runs if run["model"] == model], args.home, args.seeds)


if __name__ == "__main__":
    main()
