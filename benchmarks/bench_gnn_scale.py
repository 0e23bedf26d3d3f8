"""Training cost at scale: LightGCN, GraphSAGE and the temporal model on 100K, 1M and 10M
synthetic interactions, side by side in one run.

    python benchmarks/bench_gnn_scale.py [--sizes 100000 1000000 10000000]
        [--models lightgcn graphsage temporal] [--batches 20] [--warmup-batches 2]
        [--full-epoch-max 100000] [--threads 2] [--rss-limit-gib 20] [--timeout 900] [--quick]

Requirement: epoch time and peak memory for the three models at 100K, 1M and 10M synthetic
interactions; 10M must finish without exceeding 20 GB RSS.

Per size, one subprocess generates the seeded synthetic shop (`generate_synthetic`, conformed
as `SyntheticSource` does), splits it temporally and builds the `InteractionGraph` as the
`interaction_graph` asset does, and saves it with the item and user tables to a scratch
folder. Then every model trains in its own fresh subprocess, so its peak RSS (ru_maxrss) is its
own and covers everything its training needs: loading the graph, node features
(`item_features` / `user_features`), the model's structures (normalized adjacency; the training
CSR; the `TemporalGraph` with its time-sorted CSRs and the training history), the model, the
AdamW state and the training steps. The parent watches each child's RSS and kills it past
`--rss-limit-gib` or `--timeout` and reports that instead of crashing the machine.

A step is what `fit` does per batch: loss = model(*batch) (LightGCN: its BPR loss, propagating
the whole graph; GraphSAGE: `forward`, sampling a subgraph around the batch; temporal: the
memory view, BPR loss and `observe`, in its `forward`), zero_grad, backward, AdamW step,
float(loss). Hyperparameters are the training assets' defaults (LightGCNConfig, GraphSAGEConfig,
TemporalConfig). A full epoch at 10M takes hours, so after `--warmup-batches` steps the child
times `--batches` steps and extrapolates: epoch = the epoch's setup (the sampler's permutation
and all negatives; for the temporal model its negatives and chronological cuts) + seconds per
step x steps per epoch. BPR batches are i.i.d., so the first ones stand for all; the temporal
stream is not (early batches have few earlier neighbors), so its timed batches are spread
evenly over the epoch, each run with the memory of the previous timed one. Up to
`--full-epoch-max` interactions a full epoch is also run and timed, to check the extrapolation.
The validation pass of `fit` (full ranking of every validation user) is skipped: its cost is
evaluation's, not training's.
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
from dataclasses import asdict, dataclass
from itertools import chain, islice
from pathlib import Path

MODELS = ("lightgcn", "graphsage", "temporal")
SIZES = (100_000, 1_000_000, 10_000_000)
SEED = 0
GIB = 1024**3

# The training assets' defaults (assets/training.py, assets/temporal.py): batch size, AdamW lr.
BATCH_SIZE = {"lightgcn": 2048, "graphsage": 2048, "temporal": 200}
LR = {"lightgcn": 2e-3, "graphsage": 2e-3, "temporal": 1e-3}


# --- children: data preparation and one (model, size) measurement -------------------------


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

    started = time.perf_counter()
    frames = generate_synthetic(SyntheticConfig(n_interactions=size, seed=SEED)).conformed()
    generated = time.perf_counter()
    # trusted_interactions: user_id, item_id, ts ORDER BY ts, source, source_row
    log = frames.interactions.sort_values(["ts", "source", "source_row"], kind="stable")
    log = log[["user_id", "item_id", "ts"]].reset_index(drop=True)
    labels = split_labels(log, "temporal")
    graph = build_graph(log, labels, "temporal")
    built = time.perf_counter()
    graph.save(folder / "graph")
    frames.items.to_parquet(folder / "items.parquet")
    frames.users.to_parquet(folder / "users.parquet")
    return {
        "interactions": len(log),
        "users": graph.n_users,
        "items": graph.n_items,
        "train_events": int(np.count_nonzero(labels == TRAIN)),
        "train_pairs": len(graph.pairs(TRAIN)),
        "generate_s": generated - started,
        "graph_s": built - generated,
        "peak_rss_gib": _peak_gib(),
    }


@dataclass
class Measurement:
    model: str
    size: int
    batch_size: int
    batches_per_epoch: int
    timed_batches: int
    setup_s: dict[str, float]
    rss_imports_gib: float
    rss_after_setup_gib: float
    epoch_setup_s: float
    step_s: float
    step_cpu_s: float
    epoch_extrapolated_s: float
    epoch_measured_s: float | None
    peak_rss_gib: float


class _Clock:
    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def lap(self) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        out = (wall - self.wall, cpu - self.cpu)
        self.wall, self.cpu = wall, cpu
        return out


def measure(model_name: str, folder: Path, size: int, batches: int, warmup: int, full_epoch: bool) -> Measurement:
    import pandas as pd
    import torch

    from grec_dagster.graph.features import item_features, user_features
    from grec_dagster.graph.interactions import TRAIN, VALID, InteractionGraph
    from grec_dagster.graph.temporal import build_temporal_graph, chronological_batches
    from grec_dagster.models.graphsage import GraphSAGE, GraphSAGEParams
    from grec_dagster.models.lightgcn import LightGCNParams
    from grec_dagster.models.temporal import TemporalGraphAttention, TemporalParams
    from grec_dagster.training.bpr import BPRSampler
    from grec_dagster.training.train_graphsage import interaction_csr
    from grec_dagster.training.train_lightgcn import build_lightgcn

    rss_imports = _status_kib("VmRSS") * 1024 / GIB
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    torch.manual_seed(SEED)
    setup: dict[str, float] = {}
    clock = _Clock()
    graph = InteractionGraph.load(folder / "graph")
    setup["load graph"] = clock.lap()[0]
    batch_size = BATCH_SIZE[model_name]
    generator = torch.Generator().manual_seed(SEED)

    if model_name in ("graphsage", "temporal"):
        item_x = item_features(pd.read_parquet(folder / "items.parquet"), graph.item_ids)
        user_x = user_features(pd.read_parquet(folder / "users.parquet"), graph.user_ids)
        setup["features"] = clock.lap()[0]

    if model_name in ("lightgcn", "graphsage"):
        if model_name == "lightgcn":
            params = LightGCNParams()
            lightgcn = build_lightgcn(graph, params)
            module: torch.nn.Module = lightgcn
            loss_fn = lightgcn
            negatives = params.negatives
        else:
            sage_params = GraphSAGEParams()
            module = GraphSAGE(user_x, item_x, interaction_csr(graph, TRAIN), sage_params)
            loss_fn = module
            negatives = sage_params.negatives
        sampler = BPRSampler(graph.pairs(TRAIN), graph.n_items, batch_size, negatives)
        setup["build"] = clock.lap()[0]
        n_batches = len(sampler)

        def epoch_batches(positions: list[int] | None):
            """BPRObjective.batches: (the epoch's setup seconds, its first steps' batches; None: all)."""
            clock = _Clock()
            stream = sampler.epoch(generator)
            first = next(stream)  # the generator permutes the pairs and draws every negative here
            spent = clock.lap()[0]
            everything = chain([first], stream)
            return spent, everything if positions is None else islice(everything, len(positions))

        def step(batch) -> None:
            loss = loss_fn(*batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            float(loss.detach())

        timed_positions = list(range(min(batches, n_batches)))
    else:
        temporal = build_temporal_graph(graph, user_x, item_x)
        temporal_params = TemporalParams()
        model = TemporalGraphAttention(temporal.user_features, temporal.item_features, temporal_params)
        module = model
        history = temporal.history_before(VALID)  # TemporalObjective.history
        model.train_on(history)
        sampler = BPRSampler(graph.pairs(TRAIN), graph.n_items, batch_size)
        setup["build"] = clock.lap()[0]
        n_batches = len(chronological_batches(history.ts, batch_size))

        def epoch_batches(positions: list[int] | None):
            """TemporalObjective.batches: all negatives, an empty memory, the chronological cuts."""
            clock = _Clock()
            negatives = sampler.negatives(history.users, generator)
            model.reset_memory()
            cuts = chronological_batches(history.ts, batch_size)
            spent = clock.lap()[0]
            chosen = range(len(cuts)) if positions is None else positions
            tensors = (history.users, history.items, history.ts, negatives)
            return spent, (tuple(x[cuts[p][0] : cuts[p][1]] for x in tensors) for p in chosen)

        def step(batch) -> None:
            loss = model(*batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            float(loss.detach())

        count = min(batches, n_batches)
        timed_positions = sorted({round(i * (n_batches - 1) / max(count - 1, 1)) for i in range(count)})

    optimizer = torch.optim.AdamW(module.parameters(), lr=LR[model_name], weight_decay=0.0)
    module.train()
    rss_after_setup = _status_kib("VmRSS") * 1024 / GIB

    # Warm-up, then the timed steps of a fresh epoch.
    _, warm = epoch_batches(list(range(min(warmup, n_batches))))
    for batch in warm:
        step(batch)
    epoch_setup_s, timed = epoch_batches(timed_positions)
    clock = _Clock()
    seen = 0
    for batch in timed:
        step(batch)
        seen += 1
    wall, cpu = clock.lap()
    step_s, step_cpu_s = wall / seen, cpu / seen
    extrapolated = epoch_setup_s + step_s * n_batches

    measured = None
    if full_epoch:
        clock = _Clock()
        _, everything = epoch_batches(None)
        for batch in everything:
            step(batch)
        measured = clock.lap()[0]
    return Measurement(
        model=model_name,
        size=size,
        batch_size=batch_size,
        batches_per_epoch=n_batches,
        timed_batches=seen,
        setup_s=setup,
        rss_imports_gib=rss_imports,
        rss_after_setup_gib=rss_after_setup,
        epoch_setup_s=epoch_setup_s,
        step_s=step_s,
        step_cpu_s=step_cpu_s,
        epoch_extrapolated_s=extrapolated,
        epoch_measured_s=measured,
        peak_rss_gib=_peak_gib(),
    )


# --- the parent: spawn, watch, tabulate --------------------------------------------------------


@dataclass
class Outcome:
    result: dict | None
    error: str | None
    wall_s: float
    watched_peak_gib: float


def spawn(args: list[str], rss_limit_gib: float, timeout_s: float, threads: int, wait_policy: str) -> Outcome:
    """Run a child, polling its RSS; kill it past the RSS limit or the timeout."""
    command = [sys.executable, str(Path(__file__).resolve()), *args]
    env = os.environ | {"BENCH_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
    if wait_policy:
        env["OMP_WAIT_POLICY"] = wait_policy
    started = time.perf_counter()
    peak = 0.0
    error = None
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen(command, stdout=out, stderr=err, text=True, env=env)
        while child.poll() is None:
            try:
                rss = _status_kib("VmRSS", child.pid) * 1024 / GIB
            except (FileNotFoundError, KeyError, ProcessLookupError):
                rss = 0.0
            peak = max(peak, rss)
            if rss > rss_limit_gib:
                error = f"killed: RSS {rss:.1f} GiB > limit {rss_limit_gib} GiB"
            elif time.perf_counter() - started > timeout_s:
                error = f"killed: still running after {timeout_s:.0f} s (RSS {rss:.1f} GiB)"
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
    result = None
    if error is None:
        result = json.loads(stdout.strip().splitlines()[-1])
    return Outcome(result, error, wall, peak)


def _fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds >= 3600:
        return f"{seconds / 3600:.2f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.3g} s" if seconds < 10 else f"{seconds:.1f} s"


def _ratio(a: float, b: float) -> str:
    return f"x{a / b:.2f}" if b > 0 else "-"


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
    parser.add_argument("--batches", type=int, default=20, help="timed training steps per measurement")
    parser.add_argument("--warmup-batches", type=int, default=2, help="untimed steps before the timed ones")
    parser.add_argument(
        "--full-epoch-max", type=int, default=100_000, help="also time a full epoch up to this many interactions"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads per child")
    parser.add_argument(
        "--omp-wait-policy",
        default="PASSIVE",
        help="OMP_WAIT_POLICY of the children ('' keeps the environment's): with other jobs on the cores,"
        " libgomp's default spinning made 2-thread steps 30-70x slower here",
    )
    parser.add_argument("--rss-limit-gib", type=float, default=20.0, help="kill a child whose RSS passes this")
    parser.add_argument("--timeout", type=float, default=900.0, help="kill a child running longer (seconds)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 100K only, 3 timed steps, 1 warm-up")
    parser.add_argument("--prepare", nargs=2, metavar=("SIZE", "FOLDER"), help=argparse.SUPPRESS)
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.prepare:
        print(json.dumps(prepare(int(args.prepare[0]), Path(args.prepare[1]))))
        return
    if args.measure:
        spec = json.loads(args.measure)
        print(json.dumps(asdict(measure(**{**spec, "folder": Path(spec["folder"])}))))
        return
    if args.quick:
        args.sizes, args.batches, args.warmup_batches = [100_000], 3, 1

    import torch

    print(
        f"grec GNN scale benchmark: torch {torch.__version__}, {os.cpu_count()} CPUs, {args.threads} torch threads"
        f" per child (OMP_WAIT_POLICY={args.omp_wait_policy or os.environ.get('OMP_WAIT_POLICY', 'unset')}),"
        f" load average 1/5/15 min {load_average()}"
    )
    print(
        "  batch / AdamW lr: "
        + ", ".join(f"{m} {BATCH_SIZE[m]} / {LR[m]:g}" for m in args.models)
        + " (training assets' defaults; LightGCN 4 negatives, GraphSAGE fanouts [10, 5], temporal 1 layer,"
        " 20 neighbors, memory on)"
    )
    print(
        f"  timed: {args.batches} steps after {args.warmup_batches} warm-up steps; epoch time extrapolated"
        f" (setup + s/step x steps); full epoch also run up to {args.full_epoch_max:,} interactions;"
        " validation pass skipped"
    )
    rows: dict[tuple[str, int], Outcome] = {}
    datasets: dict[int, Outcome] = {}
    with tempfile.TemporaryDirectory(prefix="bench_gnn_scale_") as scratch:
        for size in args.sizes:
            folder = Path(scratch) / str(size)
            folder.mkdir()
            print(f"\n== {size:,} interactions (load {load_average()})", flush=True)
            data = spawn(
                ["--prepare", str(size), str(folder)],
                args.rss_limit_gib,
                args.timeout,
                args.threads,
                args.omp_wait_policy,
            )
            datasets[size] = data
            if data.error or data.result is None:
                print(f"   data preparation failed: {data.error}")
                continue
            info = data.result
            print(
                f"   data: {info['users']:,} users, {info['items']:,} items, {info['train_events']:,} train events,"
                f" {info['train_pairs']:,} distinct train pairs; generate {info['generate_s']:.1f} s,"
                f" graph {info['graph_s']:.1f} s, peak RSS {info['peak_rss_gib']:.2f} GiB",
                flush=True,
            )
            for model in args.models:
                spec = {
                    "model_name": model,
                    "folder": str(folder),
                    "size": size,
                    "batches": args.batches,
                    "warmup": args.warmup_batches,
                    "full_epoch": size <= args.full_epoch_max,
                }
                outcome = spawn(
                    ["--measure", json.dumps(spec)],
                    args.rss_limit_gib,
                    args.timeout,
                    args.threads,
                    args.omp_wait_policy,
                )
                rows[(model, size)] = outcome
                if outcome.error or outcome.result is None:
                    print(f"   {model}: FAILED after {outcome.wall_s:.0f} s ({outcome.error})", flush=True)
                    continue
                r = outcome.result
                setup = ", ".join(f"{k} {v:.1f} s" for k, v in r["setup_s"].items())
                measured = (
                    f"; full epoch measured {_fmt_s(r['epoch_measured_s'])}"
                    f" (extrapolated/measured {r['epoch_extrapolated_s'] / r['epoch_measured_s']:.2f})"
                    if r["epoch_measured_s"]
                    else ""
                )
                print(
                    f"   {model}: RSS after imports {r['rss_imports_gib']:.2f} GiB; setup ({setup}), RSS after setup {r['rss_after_setup_gib']:.2f} GiB;"
                    f" {r['timed_batches']} steps {r['step_s'] * 1e3:.1f} ms/step (cpu {r['step_cpu_s'] * 1e3:.1f} ms),"
                    f" {r['batches_per_epoch']:,} steps/epoch, epoch setup {r['epoch_setup_s']:.2f} s"
                    f" -> epoch {_fmt_s(r['epoch_extrapolated_s'])} extrapolated{measured};"
                    f" peak RSS {r['peak_rss_gib']:.2f} GiB; child wall {outcome.wall_s:.0f} s; load {load_average()}",
                    flush=True,
                )
            shutil.rmtree(folder)

    print_tables(args, rows, datasets)


def print_tables(args: argparse.Namespace, rows: dict[tuple[str, int], Outcome], datasets: dict[int, Outcome]) -> None:
    print(f"\n## Results (load average at the end {load_average()})\n")
    print(
        "| model | interactions | batch | steps/epoch | ms/step | epoch (extrapolated) | epoch (measured)"
        " | epoch s per 1M interactions | RSS after imports / setup GiB | peak RSS GiB |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for model in args.models:
        for size in args.sizes:
            outcome = rows.get((model, size))
            if outcome is None:
                continue
            if outcome.result is None:
                print(
                    f"| {model} | {_size_label(size)} | - | - | - | {outcome.error} | - | - | -"
                    f" | >= {outcome.watched_peak_gib:.2f} (watched) |"
                )
                continue
            r = outcome.result
            print(
                f"| {model} | {_size_label(size)} | {r['batch_size']} | {r['batches_per_epoch']:,}"
                f" | {r['step_s'] * 1e3:.1f} | {_fmt_s(r['epoch_extrapolated_s'])}*"
                f" | {_fmt_s(r['epoch_measured_s'])}"
                f" | {r['epoch_extrapolated_s'] / (size / 1e6):,.1f}"
                f" | {r['rss_imports_gib']:.2f} / {r['rss_after_setup_gib']:.2f} | {r['peak_rss_gib']:.2f} |"
            )
    print(
        "\n\\* extrapolated: epoch setup (sampler permutation + negatives; temporal: negatives + chronological cuts)"
        f" + s/step x steps/epoch, from {args.batches} timed steps; no validation pass."
        " Peak RSS: the child's ru_maxrss (graph load, features, model structures, AdamW, the steps)."
    )

    pairs = list(zip(args.sizes, args.sizes[1:], strict=False))
    if pairs:
        print("\n## Growth between sizes\n")
        print("| model | from -> to | interactions x | ms/step x | steps/epoch x | epoch x | peak RSS x |")
        print("|---|---|---:|---:|---:|---:|---:|")
        for model in args.models:
            for small, large in pairs:
                a, b = rows.get((model, small)), rows.get((model, large))
                if a is None or b is None or a.result is None or b.result is None:
                    continue
                ra, rb = a.result, b.result
                print(
                    f"| {model} | {_size_label(small)} -> {_size_label(large)} | x{large / small:g}"
                    f" | {_ratio(rb['step_s'], ra['step_s'])}"
                    f" | {_ratio(rb['batches_per_epoch'], ra['batches_per_epoch'])}"
                    f" | {_ratio(rb['epoch_extrapolated_s'], ra['epoch_extrapolated_s'])}"
                    f" | {_ratio(rb['peak_rss_gib'], ra['peak_rss_gib'])} |"
                )

    print("\n## Data preparation (generate + split + graph, its own process; not part of training's RSS)\n")
    print("| interactions | users | items | train pairs | generate s | graph s | peak RSS GiB |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for size, outcome in datasets.items():
        if outcome.result is None:
            print(f"| {_size_label(size)} | {outcome.error} | | | | | >= {outcome.watched_peak_gib:.2f} |")
            continue
        d = outcome.result
        print(
            f"| {_size_label(size)} | {d['users']:,} | {d['items']:,} | {d['train_pairs']:,}"
            f" | {d['generate_s']:.1f} | {d['graph_s']:.1f} | {d['peak_rss_gib']:.2f} |"
        )

    largest = max(args.sizes)
    verdicts = []
    for model in args.models:
        outcome = rows.get((model, largest))
        if outcome is None:
            continue
        if outcome.result is None:
            verdicts.append(f"{model}: did not finish ({outcome.error})")
        else:
            peak = outcome.result["peak_rss_gib"]
            limit_gb = 20e9 / GIB
            verdicts.append(f"{model} {peak:.2f} GiB ({'met' if peak <= limit_gb else 'NOT met'})")
    if verdicts:
        print(
            f"\nRequirement at {_size_label(largest)}: peak RSS <= 20 GB ({20e9 / GIB:.1f} GiB): " + "; ".join(verdicts)
        )
    if os.getloadavg()[0] > (os.cpu_count() or 1):
        print(f"  ! load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs: wall times include contention")


if __name__ == "__main__":
    main()
