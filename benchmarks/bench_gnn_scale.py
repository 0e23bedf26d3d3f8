"""Training cost at scale, this tree beside a previous one: LightGCN, GraphSAGE and the temporal
model on 100K, 1M and 10M synthetic interactions, every figure measured in the same run.

    python benchmarks/bench_gnn_scale.py [--sizes 1000000 10000000] [--models lightgcn graphsage temporal]
        [--previous 4dbf3ea] [--real-epoch-max 1000000] [--steps 20] [--threads 2]
        [--rss-limit-gib 20] [--timeout 1800] [--quick] [--graphsage-max-steps 500] [--processes 1 2]

Requirement (issue 16): an epoch at 10M within 10 minutes for each model, at 1M within 15 s
(LightGCN) and 1 min (temporal), peak RSS at 10M within 20 GB.

The previous tree is `git archive <rev> grec_dagster` unpacked into a scratch folder; its children run
with that folder first on PYTHONPATH, so "previous" is that commit's engine exactly (its models, its
samplers, its `fit` and optimizer) and "this" is the working tree. Both run on the same data, one
after the other, in fresh subprocesses, so each peak RSS (ru_maxrss) is its own.

Per size, one subprocess generates the seeded synthetic shop, splits it temporally, builds the
`InteractionGraph` as the `interaction_graph` asset does and saves it with the item and user tables.
Each (tree, model) child then builds what the training asset builds (features, the model and its
structures, the `Objective`) with *that tree's* engine defaults (`LightGCNTraining`, `LightGCNParams`,
...), and runs one epoch through that tree's `fit`: its optimizer, deterministic kernels and loop.
Validation is replaced by a constant, so the epoch is training only.

- Up to `--real-epoch-max` interactions the whole epoch runs and `fit`'s own epoch seconds are
  reported ("real").
- Above it (10M: hours for the previous tree) only `--steps` batches are trained and the epoch is
  **extrapolated**: time to the first batch (the epoch's setup: permutation, the previous tree's
  up-front negatives) + the time of the trained steps (each drawing its batch and training on it;
  drawing the dropped batches is not counted) x steps per epoch / steps trained. BPR batches
  are i.i.d., so the first ones stand for all; the temporal stream is not (early batches have few
  earlier neighbors), so its trained batches are spread evenly over the epoch, each with the memory
  of the previous trained one. Extrapolated figures are marked `*`.

With `--processes 1 2`, this tree's DDP-capable models (LightGCN, GraphSAGE) also train their epoch
in 2 processes, as `processes: 2` in a training asset's config trains them: `fit` under `torchrun`
(gloo on the CPU), every process drawing the same batches and training on its share of each, the
`--threads` split evenly between the processes. The child is `torchrun` itself, so `launch`'s
pickling and epoch relay are left out; they cost nothing per step. Peak RSS is then the sum of the
processes' peaks, each holding its own copy of the graph. The temporal model with memory follows
one event stream and refuses more than one process, so it runs in one only.

The parent watches each child's RSS (with its descendants) and kills it past `--rss-limit-gib` or
`--timeout`, and reports that instead of crashing the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from previous_tree import ROOT, unpack_previous
from pydantic import BaseModel

MODELS = ("lightgcn", "graphsage", "temporal")
DDP_MODELS = ("lightgcn", "graphsage")
SIZES = (1_000_000, 10_000_000)
TREES = ("previous", "this")
SEED = 0
GIB = 1024**3


# --- children: data preparation and one (tree, model, size) epoch ---------------------------


def _status_kib(field_name: str, pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise KeyError(field_name)


def _peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB


def prepare(size: int, folder: Path) -> dict:
    """Generate the shop, split and build the graph as the ingestion and graph assets do; save it."""
    import numpy as np

    from grec_dagster.data.synthetic import SyntheticConfig, generate_synthetic
    from grec_dagster.graph.interactions import TRAIN, build_graph
    from grec_dagster.graph.splits import split_labels

    frames = generate_synthetic(SyntheticConfig(n_interactions=size, seed=SEED)).conformed()
    # trusted_interactions: user_id, item_id, ts ORDER BY ts, source, source_row
    log = frames.interactions.sort_values(["ts", "source", "source_row"], kind="stable")
    log = log[["user_id", "item_id", "ts"]].reset_index(drop=True)
    labels = split_labels(log, "temporal")
    graph = build_graph(log, labels, "temporal")
    graph.save(folder / "graph")
    frames.items.to_parquet(folder / "items.parquet")
    frames.users.to_parquet(folder / "users.parquet")
    return {
        "users": graph.n_users,
        "items": graph.n_items,
        "train_events": int(np.count_nonzero(labels == TRAIN)),
        "train_pairs": len(graph.pairs(TRAIN)),
        **graphsage_sample(graph),
    }


def graphsage_sample(graph) -> dict:
    """Distinct nodes and edges of GraphSAGE's neighbour sample around one training batch (this tree's
    defaults): a step's cost follows them, and on a small graph they saturate at its node count."""
    import torch

    from grec_dagster.graph.interactions import TRAIN
    from grec_dagster.graph.samplers import sample_neighbors
    from grec_dagster.models.graphsage import GraphSAGEParams, bpr_seeds
    from grec_dagster.training.embeddings import BPRObjective
    from grec_dagster.training.train_graphsage import GraphSAGETraining, interaction_csr

    params = GraphSAGEParams()
    objective = BPRObjective(graph, GraphSAGETraining().batch_size, None, params.negatives)
    generator = torch.Generator().manual_seed(SEED)
    seeds, _ = bpr_seeds(graph.n_users, *next(objective.batches(0, generator)))
    sample = sample_neighbors(interaction_csr(graph, TRAIN), seeds, params.fanouts, generator=generator)
    return {"sample_nodes": len(sample.n_id), "sample_edges": sample.edge_index.shape[1]}


def capped_batch(train: BaseModel, n_examples: int) -> int:
    """The batch a tree's settings give an epoch of `n_examples`: its step cap where it has one (6a452e2 and
    earlier named the temporal one `events_per_batch`), else its batch_size."""
    for name in ("examples_per_batch", "events_per_batch"):
        if hasattr(train, name):
            return getattr(train, name)(n_examples)
    return train.batch_size


@dataclass
class Measurement:
    tree: str
    model: str
    batch_size: int
    lr: float
    steps_per_epoch: int
    steps_trained: int
    epoch_s: float
    extrapolated: bool
    setup_s: float
    peak_rss_gib: float
    processes: int


class OneEpoch:
    """An objective's batches for one `fit` epoch, `steps` of them (None: all), timed as they go.

    `positions` picks which batches train; the others are drawn and dropped, so the generator
    (and, for the temporal model, the stream order) is what a whole epoch would have. The time spent
    drawing dropped batches is kept apart (`dropped_s`): counted in the trained steps' time, it would
    be multiplied up by the extrapolation, penalizing a tree that draws its negatives per batch.
    """

    def __init__(self, objective, positions: set[int] | None):
        self.objective, self.positions = objective, positions
        self.first_batch_s = 0.0
        self.dropped_s = 0.0
        self.trained = 0

    def batches(self, epoch: int, generator) -> Iterator[tuple]:
        started = time.perf_counter()
        for index, batch in enumerate(self.objective.batches(epoch, generator)):
            drawn = time.perf_counter() - started
            if index == 0:
                self.first_batch_s = drawn
            if self.positions is None or index in self.positions:
                self.trained += 1
                yield batch
            else:
                self.dropped_s += drawn
            started = time.perf_counter()

    def validate(self, model) -> dict[str, float]:
        return {"ndcg@20": 0.0}


def measure(tree: str, model_name: str, folder: Path, steps: int | None, graphsage_max_steps: int | None) -> Measurement:
    """One epoch of `model_name` through this process's `grec_dagster` (the tree on PYTHONPATH)."""
    import pandas as pd
    import torch

    from grec_dagster.graph.features import item_features, user_features
    from grec_dagster.graph.interactions import TRAIN, VALID, InteractionGraph
    from grec_dagster.graph.temporal import build_temporal_graph, chronological_batches
    from grec_dagster.training.loop import fit

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    torch.manual_seed(SEED)
    started = time.perf_counter()
    graph = InteractionGraph.load(folder / "graph")
    if model_name != "lightgcn":
        item_x = item_features(pd.read_parquet(folder / "items.parquet"), graph.item_ids)
        user_x = user_features(pd.read_parquet(folder / "users.parquet"), graph.user_ids)

    if model_name == "lightgcn":
        from grec_dagster.models.lightgcn import LightGCN, LightGCNParams
        from grec_dagster.training.embeddings import BPRObjective
        from grec_dagster.training.train_lightgcn import LightGCNTraining, build_lightgcn

        params, train = LightGCNParams(), LightGCNTraining()
        model = build_lightgcn(graph, params)
        objective = BPRObjective(graph, train.batch_size, LightGCN.final_embeddings, params.negatives)
        n_steps = len(objective.sampler)
    elif model_name == "graphsage":
        from grec_dagster.models.graphsage import GraphSAGE, GraphSAGEParams
        from grec_dagster.training.embeddings import BPRObjective
        from grec_dagster.training.train_graphsage import GraphSAGETraining, interaction_csr

        params, train = GraphSAGEParams(), GraphSAGETraining()
        if graphsage_max_steps is not None:  # this tree only: the previous one has no step cap
            train = train.model_copy(update={"max_steps": graphsage_max_steps})
        batch_size = capped_batch(train, len(graph.pairs(TRAIN)))
        model = GraphSAGE(user_x, item_x, interaction_csr(graph, TRAIN), params)
        objective = BPRObjective(graph, batch_size, GraphSAGE.embed_all, params.negatives)
        n_steps = len(objective.sampler)
    else:
        from grec_dagster.models.temporal import TemporalGraphAttention, TemporalParams
        from grec_dagster.training.train_temporal import TemporalObjective, TemporalTraining

        params, train = TemporalParams(), TemporalTraining()
        temporal = build_temporal_graph(graph, user_x, item_x)
        model = TemporalGraphAttention(temporal.user_features, temporal.item_features, params)
        events = temporal.history_before(VALID).ts
        batch_size = capped_batch(train, len(events))
        objective = TemporalObjective(model, graph, temporal, batch_size)
        n_steps = len(chronological_batches(events, batch_size))
    setup_s = time.perf_counter() - started

    if steps is None or steps >= n_steps:
        positions = None
    elif model_name == "temporal":
        positions = {round(i * (n_steps - 1) / max(steps - 1, 1)) for i in range(steps)}
    else:
        positions = set(range(steps))
    timed = OneEpoch(objective, positions)
    result = fit(model, timed, train.model_copy(update={"epochs": 1}), description=f"{tree} {model_name}")
    processes, peak_rss_gib = _peaks_over_processes()
    seconds = result.history[0]["seconds"]
    if positions is not None:  # the dropped batches' drawing is not a trained step's cost
        per_step = (seconds - timed.first_batch_s - timed.dropped_s) / timed.trained
        seconds = timed.first_batch_s + per_step * n_steps
    return Measurement(
        tree=tree,
        model=model_name,
        batch_size=train.batch_size if model_name == "lightgcn" else batch_size,
        lr=train.lr,
        steps_per_epoch=n_steps,
        steps_trained=timed.trained,
        epoch_s=seconds,
        extrapolated=positions is not None,
        setup_s=setup_s,
        peak_rss_gib=peak_rss_gib,
        processes=processes,
    )


def _peaks_over_processes() -> tuple[int, float]:
    """How many processes trained (under torchrun, `fit` ran DDP) and the sum of their peak RSS."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return 1, _peak_gib()
    from accelerate.utils import gather_object

    return dist.get_world_size(), sum(gather_object([_peak_gib()]))


# --- the parent: unpack the previous tree, spawn, watch, tabulate -------------------------------


@dataclass
class Outcome:
    result: dict | None
    error: str | None
    wall_s: float
    watched_peak_gib: float


def spawn(args: list[str], pythonpath: Path | None, limits: argparse.Namespace, processes: int = 1) -> Outcome:
    """Run a child (under torchrun in `processes` DDP processes, sharing the threads), polling its
    RSS with its descendants'; kill it past the RSS limit or the timeout."""
    interpreter = [sys.executable]
    if processes > 1:  # imported here: a previous tree's children run this file without `launch`
        from grec_dagster.training.launch import torchrun_command

        interpreter = torchrun_command(processes)
    command = [*interpreter, str(Path(__file__).resolve()), *args]
    threads = str(max(1, limits.threads // processes))
    env = os.environ | {"BENCH_THREADS": threads, "OMP_NUM_THREADS": threads}
    env["OMP_WAIT_POLICY"] = "PASSIVE"  # spinning OpenMP threads made 2-thread steps 30-70x slower under load
    env["PYTHONPATH"] = os.pathsep.join(str(path) for path in (pythonpath, ROOT) if path is not None)
    started = time.perf_counter()
    peak, error = 0.0, None
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen(command, stdout=out, stderr=err, text=True, env=env)
        while child.poll() is None:
            rss = _tree_rss_kib(child.pid) * 1024 / GIB
            peak = max(peak, rss)
            if rss > limits.rss_limit_gib:
                error = f"killed: RSS {rss:.1f} GiB > limit {limits.rss_limit_gib} GiB"
            elif time.perf_counter() - started > limits.timeout:
                error = f"killed: still running after {limits.timeout:.0f} s (RSS {rss:.1f} GiB)"
            if error:
                child.kill()
                child.wait()
                break
            time.sleep(0.2)
        wall = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if error is None and child.returncode != 0:
        error = f"exit {child.returncode}: {stderr.strip()[-2000:]}"
    result = json.loads(stdout.strip().splitlines()[-1]) if error is None else None
    return Outcome(result, error, wall, peak)


def _tree_rss_kib(pid: int) -> int:
    """RSS of `pid` and its descendants (torchrun's workers), 0 for any that already exited."""
    try:
        rss = _status_kib("VmRSS", pid)
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except (FileNotFoundError, KeyError, ProcessLookupError):
        return 0
    return rss + sum(_tree_rss_kib(int(child)) for child in children)


def _fmt_s(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.2f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.3g} s"


def _size_label(size: int) -> str:
    for unit, scale in (("M", 1_000_000), ("K", 1_000)):
        if size >= scale and size % scale == 0:
            return f"{size // scale}{unit}"
    return str(size)


def load_average() -> str:
    return " / ".join(f"{value:.1f}" for value in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="synthetic interactions")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--previous", default="4dbf3ea", help="git revision of the tree to compare with")
    parser.add_argument("--real-epoch-max", type=int, default=1_000_000, help="run whole epochs up to this size")
    parser.add_argument("--steps", type=int, default=20, help="steps trained above --real-epoch-max")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per child")
    parser.add_argument("--rss-limit-gib", type=float, default=20.0, help="kill a child whose RSS passes this")
    parser.add_argument("--timeout", type=float, default=1800.0, help="kill a child running longer (seconds)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 100K, real epochs")
    parser.add_argument(
        "--graphsage-max-steps", type=int, help="this tree's GraphSAGE at this step cap (default: none, as shipped)"
    )
    parser.add_argument(
        "--processes",
        type=int,
        nargs="+",
        default=[1],
        help=f"this tree's {' and '.join(DDP_MODELS)} also in these many DDP processes (1: in-process, as shipped)",
    )
    parser.add_argument("--prepare", nargs=2, metavar=("SIZE", "FOLDER"), help=argparse.SUPPRESS)
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.prepare:
        print(json.dumps(prepare(int(args.prepare[0]), Path(args.prepare[1]))))
        return
    if args.measure:
        spec = json.loads(args.measure)
        measured = measure(spec["tree"], spec["model"], Path(spec["folder"]), spec["steps"], spec["graphsage_max_steps"])
        if os.environ.get("RANK", "0") == "0":  # under torchrun, one line for the parent
            print(json.dumps(asdict(measured)))
        return
    if args.quick:
        args.sizes = [100_000]

    print(
        f"grec GNN scale benchmark: previous tree {args.previous} vs this working tree, {os.cpu_count()} CPUs,"
        f" {args.threads} torch threads per child, load average 1/5/15 min {load_average()}"
    )
    print(
        f"  one epoch through each tree's `fit` with its own defaults, validation skipped; real up to"
        f" {args.real_epoch_max:,} interactions, above that {args.steps} steps extrapolated (*)"
    )
    rows: dict[tuple[str, str, int, int], Outcome] = {}
    with tempfile.TemporaryDirectory(prefix="bench_gnn_scale_") as scratch:
        previous = unpack_previous(args.previous, Path(scratch))
        for size in args.sizes:
            folder = Path(scratch) / f"data-{size}"
            folder.mkdir()
            data = spawn(["--prepare", str(size), str(folder)], None, args)
            if data.result is None:
                print(f"\n== {size:,}: data preparation failed: {data.error}")
                continue
            info = data.result
            print(
                f"\n== {size:,} interactions: {info['users']:,} users, {info['items']:,} items,"
                f" {info['train_events']:,} train events, {info['train_pairs']:,} distinct train pairs;"
                f" one GraphSAGE batch samples {info['sample_nodes']:,} of the"
                f" {info['users'] + info['items']:,} nodes and {info['sample_edges']:,} edges (load {load_average()})",
                flush=True,
            )
            steps = None if size <= args.real_epoch_max else args.steps
            for model in args.models:
                for tree, processes in runs(model, args.processes):
                    spec = {"tree": tree, "model": model, "folder": str(folder), "steps": steps}
                    spec["graphsage_max_steps"] = args.graphsage_max_steps if tree == "this" else None
                    pythonpath = previous if tree == "previous" else None
                    outcome = spawn(["--measure", json.dumps(spec)], pythonpath, args, processes)
                    rows[(tree, model, size, processes)] = outcome
                    r = outcome.result
                    if r is not None and r["processes"] != processes:  # fit ran without (or with other) DDP
                        outcome.result, outcome.error = None, f"trained in {r['processes']} process(es)"
                        r = None
                    label = f"{tree:8} {model}" + (f" x{processes} processes" if processes > 1 else "")
                    if r is None:
                        print(f"   {label}: FAILED after {outcome.wall_s:.0f} s ({outcome.error})", flush=True)
                        continue
                    print(
                        f"   {label}: batch {r['batch_size']}, lr {r['lr']:g}, {r['steps_per_epoch']:,}"
                        f" steps/epoch, {r['steps_trained']} trained -> epoch {_fmt_s(r['epoch_s'])}"
                        f"{'*' if r['extrapolated'] else ' (real)'}; setup {r['setup_s']:.1f} s;"
                        f" peak RSS {r['peak_rss_gib']:.2f} GiB; load {load_average()}",
                        flush=True,
                    )
            shutil.rmtree(folder)
    print_table(args, rows)
    print_process_table(args, rows)


def runs(model: str, process_counts: list[int]) -> list[tuple[str, int]]:
    """(tree, processes) to measure `model` with: both trees in one process, then this tree in each
    other process count if the model trains under DDP."""
    more = multi_process_counts(process_counts) if model in DDP_MODELS else []
    return [(tree, 1) for tree in TREES] + [("this", count) for count in more]


def multi_process_counts(process_counts: list[int]) -> list[int]:
    """The distinct counts above one process among `--processes`, ascending."""
    return sorted({count for count in process_counts if count > 1})


def _cell(outcome: Outcome | None) -> tuple[str, float | None]:
    """A table cell (epoch, peak RSS) and the epoch seconds, or why there are none."""
    if outcome is None or outcome.result is None:
        return ("failed" if outcome is None else outcome.error[:60]), None
    r = outcome.result
    return f"{_fmt_s(r['epoch_s'])}{'*' if r['extrapolated'] else ''}, {r['peak_rss_gib']:.2f} GiB", r["epoch_s"]


def print_table(args: argparse.Namespace, rows: dict[tuple[str, str, int, int], Outcome]) -> None:
    print(f"\n## Epoch time and peak RSS, previous ({args.previous}) vs this tree (load average {load_average()})\n")
    print("| model | interactions | previous: epoch, peak RSS | this: epoch, peak RSS | previous / this |")
    print("|---|---:|---:|---:|---:|")
    for model in args.models:
        for size in args.sizes:
            (previous, previous_s), (this, this_s) = (_cell(rows.get((tree, model, size, 1))) for tree in TREES)
            ratio = f"x{previous_s / this_s:.1f}" if previous_s and this_s else "-"
            print(f"| {model} | {_size_label(size)} | {previous} | {this} | {ratio} |")
    print(
        "\n\\* extrapolated: time to the first batch + trained steps' time (drawing and training) x steps/epoch"
        " / steps trained."
        " Peak RSS: the child's ru_maxrss (graph, features, model structures, optimizer state, the epoch)."
    )
    if os.getloadavg()[0] > (os.cpu_count() or 1):
        print(f"  ! load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs: wall times include contention")


def print_process_table(args: argparse.Namespace, rows: dict[tuple[str, str, int, int], Outcome]) -> None:
    """This tree's DDP-capable models in one process beside each other process count (`--processes`)."""
    counts = multi_process_counts(args.processes)
    models = [model for model in args.models if model in DDP_MODELS]
    if not counts or not models:
        return
    print(f"\n## This tree in 1 vs {', '.join(map(str, counts))} DDP processes, {args.threads} threads shared\n")
    print("| model | interactions | processes | epoch, peak RSS (sum over processes) | speed-up (1-process epoch / this) |")
    print("|---|---:|---:|---:|---:|")
    for model in models:
        for size in args.sizes:
            _, one_s = _cell(rows.get(("this", model, size, 1)))
            for count in [1, *counts]:
                cell, seconds = _cell(rows.get(("this", model, size, count)))
                ratio = f"x{one_s / seconds:.2f}" if one_s and seconds else "-"
                print(f"| {model} | {_size_label(size)} | {count} | {cell} | {ratio} |")


if __name__ == "__main__":
    main()
