"""LightGCN training and evaluation cost: ours against PyG's LightGCN, side by side in one run.

    python benchmarks/bench_lightgcn.py [--datasets ml-100k synthetic] [--synthetic-size 1000000]
        [--epochs N] [--threads 2 1] [--reference-threads 2] [--reference-batches 10]
        [--ours-batches 0] [--naive-users 1000] [--profile-batches 0]

Both models are LightGCN with dim 64, 2 layers, BPR with one uniform negative, batch 2048,
Adam lr 1e-3 (RecBole 1.2.1's configuration) and train on the very same seeded batches; every
step propagates over the whole graph, then forward, backward, optimizer step. Ours is
`build_lightgcn` (CSR products, symmetric backward); the reference is
`torch_geometric.nn.models.LightGCN` driven as PyG's examples/lightgcn.py drives it
(message passing over an edge_index, pure torch here). RecBole's 0.9 s per epoch on
MovieLens-100K is quoted from the project's issue, not measured.

Every (model, threads) configuration runs in a fresh subprocess, so peak RSS is its own; the
configurations take turns, one epoch each per round, for `--epochs` rounds, so background load
falls on all of them alike. Seconds per epoch are the median over rounds: sampling the epoch's
batches plus the training steps, after a few warm-up steps. The reference's steps are slow, so
by default it times the first `--reference-batches` steps and scales them to the epoch
(marked *; `--ours-batches` does the same to ours). Next to wall time stands the process's CPU
time, steadier when other jobs share the cores. Evaluation ranks all items for every test
user: ours with `rank_users` (and the whole `evaluate`, with its segments), the reference with
a per-user Python loop of `torch.topk` over `--naive-users` of them, scaled to all (marked †).

Datasets: MovieLens-100K (random per-user 8:1:1 split; files from the data cache under
GREC_HOME, fetched if missing) and a synthetic shop log (temporal split, `--synthetic-size`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from grec_dagster.data.movielens import fetch_movielens_100k, load_movielens_100k
from grec_dagster.data.synthetic import SyntheticConfig, generate_synthetic
from grec_dagster.evaluation.evaluator import KS, evaluate, ranking_task
from grec_dagster.evaluation.metrics import RankingTask, rank_users
from grec_dagster.graph.interactions import TEST, TRAIN, InteractionGraph, build_graph
from grec_dagster.graph.splits import split_labels
from grec_dagster.layout import LIGHTGCN, HomeLayout
from grec_dagster.models.lightgcn import LightGCNParams
from grec_dagster.training.bpr import BPRSampler
from grec_dagster.training.train_lightgcn import build_lightgcn

PARAMS = LightGCNParams(dim=64, layers=2, negatives=1)
BATCH_SIZE = 2048
LR = 1e-3
SEED = 0
RECBOLE_SECONDS = 0.9
"""RecBole 1.2.1 LightGCN on MovieLens-100K, 2 cores, per training epoch: quoted in the issue."""
RECBOLE_DATASET = "ml-100k"
OURS, REFERENCE = "ours", "pyg"
LABELS = {OURS: "ours (CSR)", REFERENCE: "PyG LightGCN"}
DEFAULT_EPOCHS = {"ml-100k": 5, "synthetic": 2}

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class BPRModel(Protocol):
    def parameters(self) -> Iterator[nn.Parameter]: ...

    def __call__(self, users: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor: ...

    def final_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]: ...


class PyGLightGCN(nn.Module):
    """PyG's LightGCN fed our BPR batches the way its examples/lightgcn.py feeds its own."""

    def __init__(self, graph: InteractionGraph, params: LightGCNParams):
        from torch_geometric.nn.models import LightGCN  # here: our workers' RSS should not carry PyG

        super().__init__()
        pairs = graph.pairs(TRAIN)
        users, items = pairs // graph.n_items, pairs % graph.n_items + graph.n_users
        self.n_users = graph.n_users
        self.reg_weight = params.reg_weight
        self.edge_index = torch.stack([torch.cat([users, items]), torch.cat([items, users])])
        self.model = LightGCN(graph.n_users + graph.n_items, params.dim, params.layers)

    def forward(self, users: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        label_index = torch.stack([users.repeat(2), torch.cat([positives, negatives]) + self.n_users])
        positive_rank, negative_rank = self.model(self.edge_index, label_index).chunk(2)
        return self.model.recommendation_loss(
            positive_rank, negative_rank, node_id=label_index.unique(), lambda_reg=self.reg_weight
        )

    @torch.no_grad()
    def final_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        final = self.model.get_embedding(self.edge_index)
        return final[: self.n_users], final[self.n_users :]


# --- one configuration, in its own process ------------------------------------------------


@dataclass
class WorkerSpec:
    graph_dir: str
    model: str
    threads: int
    warmup_batches: int
    step_limit: int
    """Training steps timed per epoch; 0 times them all."""
    naive_users: int
    profile_batches: int


@dataclass
class WorkerResult:
    load: float
    """1-minute load average when the timed epoch started."""
    batches: int
    timed_batches: int
    epoch_seconds: float
    epoch_cpu_seconds: float
    """CPU seconds of the process (all threads) over the epoch: steadier than wall time under load."""
    sampling_seconds: float
    rank_seconds: float
    """Ours: `rank_users` over all test users. Reference: the per-user loop, scaled to all."""
    test_users: int
    ranked_users: int
    evaluate_seconds: float | None
    rss_base_mb: float
    rss_train_mb: float
    rss_eval_mb: float
    checks: dict[str, float]
    profile: str | None


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def _reset_peak_rss() -> None:
    """Start VmHWM again from the current RSS (Linux >= 4.0), so each phase gets its own peak."""
    Path("/proc/self/clear_refs").write_text("5")


def _clocks() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def train_step(model: BPRModel, optimizer: torch.optim.Optimizer, batch: Batch) -> None:
    loss = model(*batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def naive_metrics(
    user_emb: torch.Tensor, item_emb: torch.Tensor, task: RankingTask, positions: list[int]
) -> dict[tuple[str, int], list[float]]:
    """The obvious evaluator, one user at a time: a score vector, the seen items masked,
    `torch.topk`, then recall, NDCG, MRR and hit at every K in Python."""
    values: dict[tuple[str, int], list[float]] = {}
    for position in positions:
        scores = item_emb @ user_emb[int(task.users[position])]
        scores[task.seen_items[task.seen_ptr[position] : task.seen_ptr[position + 1]]] = float("-inf")
        top = torch.topk(scores, max(KS)).indices.tolist()
        relevant = set(task.truth_items[task.truth_ptr[position] : task.truth_ptr[position + 1]].tolist())
        hits = [item in relevant for item in top]
        for k in KS:
            dcg = sum(1.0 / math.log2(rank + 2) for rank, hit in enumerate(hits[:k]) if hit)
            ideal = sum(1.0 / math.log2(rank + 2) for rank in range(min(len(relevant), k)))
            first = next((rank for rank, hit in enumerate(hits[:k]) if hit), None)
            values.setdefault(("recall", k), []).append(sum(hits[:k]) / len(relevant))
            values.setdefault(("ndcg", k), []).append(dcg / ideal)
            values.setdefault(("mrr", k), []).append(0.0 if first is None else 1.0 / (first + 1))
            values.setdefault(("hit", k), []).append(float(first is not None))
    return values


def profile_steps(model: BPRModel, optimizer: torch.optim.Optimizer, batches: list[Batch]) -> str:
    """torch.profiler over a few steps, each cut into forward / backward / optimizer step."""
    from torch.profiler import profile, record_function

    with profile() as profiler:
        for batch in batches:
            with record_function("## forward (propagate + BPR loss)"):
                loss = model(*batch)
            optimizer.zero_grad(set_to_none=True)
            with record_function("## backward"):
                loss.backward()
            with record_function("## Adam step"):
                optimizer.step()
    return profiler.key_averages().table(sort_by="cpu_time_total", row_limit=18)


def run_worker(spec: WorkerSpec) -> WorkerResult:
    torch.set_num_threads(spec.threads)
    torch.manual_seed(SEED)
    graph = InteractionGraph.load(Path(spec.graph_dir))
    sampler = BPRSampler(graph.pairs(TRAIN), graph.n_items, BATCH_SIZE, PARAMS.negatives)
    task = ranking_task(graph, TEST)
    model: BPRModel = build_lightgcn(graph, PARAMS) if spec.model == OURS else PyGLightGCN(graph, PARAMS)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    generator = torch.Generator().manual_seed(SEED)
    rss_base = _status_mb("VmRSS")

    _reset_peak_rss()
    for batch in islice(sampler.epoch(generator), spec.warmup_batches):
        train_step(model, optimizer, batch)
    load = os.getloadavg()[0]
    epoch_start = _clocks()
    batches = list(sampler.epoch(generator))
    steps_start = _clocks()
    timed = batches[: spec.step_limit or None]
    for batch in timed:
        train_step(model, optimizer, batch)
    steps_end = _clocks()
    epoch_seconds, epoch_cpu_seconds = (
        (sampled - started) + (stepped - sampled) * len(batches) / len(timed)
        for started, sampled, stepped in zip(epoch_start, steps_start, steps_end, strict=True)
    )
    rss_train = _status_mb("VmHWM")

    user_emb, item_emb = model.final_embeddings()
    score_fn = lambda users: user_emb[users] @ item_emb.T  # noqa: E731
    _reset_peak_rss()
    checks: dict[str, float] = {}
    evaluate_seconds: float | None = None
    if spec.model == OURS:
        started = time.perf_counter()
        rank_users(score_fn, task, KS)
        rank_seconds = time.perf_counter() - started
        ranked_users = len(task.users)
        started = time.perf_counter()
        evaluate(score_fn, graph, LIGHTGCN, task=task)
        evaluate_seconds = time.perf_counter() - started
        rss_eval = _status_mb("VmHWM")
    else:
        assert isinstance(model, PyGLightGCN)
        chosen = torch.randperm(len(task.users), generator=torch.Generator().manual_seed(SEED))[: spec.naive_users]
        positions = sorted(chosen.tolist())
        ranked_users = len(positions)
        started = time.perf_counter()
        naive = naive_metrics(user_emb, item_emb, task, positions)
        rank_seconds = (time.perf_counter() - started) * len(task.users) / ranked_users
        rss_eval = _status_mb("VmHWM")
        checks = _agreement(graph, model, task, positions, naive)

    profile = None
    if spec.profile_batches:
        profile = profile_steps(model, optimizer, list(islice(sampler.epoch(generator), spec.profile_batches)))
    return WorkerResult(
        load=load,
        batches=len(batches),
        timed_batches=len(timed),
        epoch_seconds=epoch_seconds,
        epoch_cpu_seconds=epoch_cpu_seconds,
        sampling_seconds=steps_start[0] - epoch_start[0],
        rank_seconds=rank_seconds,
        test_users=len(task.users),
        ranked_users=ranked_users,
        evaluate_seconds=evaluate_seconds,
        rss_base_mb=rss_base,
        rss_train_mb=rss_train,
        rss_eval_mb=rss_eval,
        checks=checks,
        profile=profile,
    )


def _agreement(
    graph: InteractionGraph,
    reference: PyGLightGCN,
    task: RankingTask,
    positions: list[int],
    naive: dict[tuple[str, int], list[float]],
) -> dict[str, float]:
    """Same math? Our propagation from the reference's weights, and `rank_users` against the loop."""
    ours = build_lightgcn(graph, PARAMS)
    with torch.no_grad():
        ours.embedding.weight.copy_(reference.model.embedding.weight)
    ours_final = torch.cat(ours.final_embeddings())
    reference_final = torch.cat(reference.final_embeddings())
    user_emb, item_emb = reference_final[: graph.n_users], reference_final[graph.n_users :]
    ranked = rank_users(lambda users: user_emb[users] @ item_emb.T, task, KS)
    return {
        "propagation": float((ours_final - reference_final).abs().max()),
        "metrics": max(
            float((ranked[("all", *key)][positions] - torch.tensor(v)).abs().max()) for key, v in naive.items()
        ),
    }


# --- the run: datasets, configurations taking turns, the table -----------------------------


@dataclass(frozen=True)
class Config:
    model: str
    threads: int


def movielens_graph() -> InteractionGraph:
    """MovieLens-100K from GREC_HOME's data cache (where `grec data fetch` puts it), random 8:1:1."""
    folder = fetch_movielens_100k(HomeLayout.current().data_cache)
    log = load_movielens_100k(folder).interactions
    log = log.sort_values(["ts", "source", "source_row"], kind="stable").reset_index(drop=True)
    return build_graph(log, split_labels(log, "random"), "random")


def synthetic_graph(size: int) -> InteractionGraph:
    log = generate_synthetic(SyntheticConfig(n_interactions=size)).interactions
    return build_graph(log, split_labels(log, "temporal"), "temporal")


def spawn(spec: WorkerSpec) -> WorkerResult:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(asdict(spec))]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{spec.model} on {spec.threads} threads failed:\n{done.stderr[-3000:]}")
    return WorkerResult(**json.loads(done.stdout.splitlines()[-1]))


def load_average() -> str:
    return " / ".join(f"{value:.1f}" for value in os.getloadavg())


def ratio(numerator: float, denominator: float) -> str:
    value = numerator / denominator
    return f"x{value:,.1f}" if value >= 1 else f"x{value:.2g}"


def median_of(results: list[WorkerResult], field: str) -> float:
    return statistics.median(getattr(result, field) for result in results)


def print_table(dataset: str, runs: dict[Config, list[WorkerResult]]) -> None:
    """Medians over the timed epochs; peak RSS is the largest of them. Ours is compared with the
    reference on as many threads, or with the first reference when that did not run."""
    references = [config for config in runs if config.model == REFERENCE]
    quoted = dataset == RECBOLE_DATASET
    print(
        f"{'model':<14}{'threads':>8}{'steps':>8}{'s/epoch':>10}{'cpu s':>9}{'sampling':>10}"
        f"{'PyG/ours':>10}{'RecBole/ours':>13}"
        f"{'rank s':>10}{'naive/ours':>11}{'evaluate s':>11}{'peak RSS MB base/train/eval':>29}{'load':>6}"
    )
    for config, results in runs.items():
        ours = config.model == OURS
        epoch, rank = median_of(results, "epoch_seconds"), median_of(results, "rank_seconds")
        reference = next((r for r in references if r.threads == config.threads), references[0])
        reference_epoch = median_of(runs[reference], "epoch_seconds")
        reference_rank = median_of(runs[reference], "rank_seconds")
        first = results[0]
        evaluate_cell = f"{median_of(results, 'evaluate_seconds'):.3f}" if ours else "-"
        rss = "/".join(
            f"{max(getattr(r, f) for r in results):.0f}" for f in ("rss_base_mb", "rss_train_mb", "rss_eval_mb")
        )
        cells = [
            f"{LABELS[config.model]:<14}{config.threads:>8}{f'{first.timed_batches}/{first.batches}':>8}",
            f"{epoch:>9.3f}{'*' if first.timed_batches < first.batches else ' '}",
            f"{median_of(results, 'epoch_cpu_seconds'):>9.3f}",
            f"{median_of(results, 'sampling_seconds'):>10.3f}{ratio(reference_epoch, epoch) if ours else '-':>10}",
            f"{ratio(RECBOLE_SECONDS, epoch) if quoted else '-':>13}",
            f"{rank:>9.3f}{' ' if ours else '†'}{ratio(reference_rank, rank) if ours else '-':>11}",
            f"{evaluate_cell:>11}",
            f"{rss:>29}{median_of(results, 'load'):>6.1f}",
        ]
        print("".join(cells))
    if quoted:
        print(f"{'RecBole 1.2.1':<14}{2:>8}{'all':>8}{RECBOLE_SECONDS:>9.3f}   quoted in the issue, not measured")

    load = statistics.median(result.load for results in runs.values() for result in results)
    if load > (os.cpu_count() or 1):
        print(
            f"  ! load average {load:.1f} on {os.cpu_count()} CPUs: multi-threaded steps wait on descheduled threads,"
            " so their times (and ratios) say more about the contention than about the code;"
            " on 1 thread, `cpu s` is the closest to an idle machine's wall time"
        )
    sample = runs[references[0]][0]
    print(
        "  x ratios: reference time / ours, against PyG on as many threads when it ran,"
        f" else on {references[0].threads}; RecBole's is its quoted 0.9 s / ours"
    )
    print("  * only the first `steps` training steps timed, scaled to the epoch's batches, plus the epoch's sampling")
    print(f"  † per-user Python loop over {sample.ranked_users} of {sample.test_users} test users, scaled to all")
    print(
        f"  checks: our propagation from PyG's weights, max |diff| {sample.checks['propagation']:.1e};"
        f" rank_users against the loop, max |metric diff| {sample.checks['metrics']:.1e}"
    )
    if quoted:
        verdicts = [
            f"{config.threads} threads {median_of(results, 'epoch_seconds'):.3f} s"
            f" (cpu {median_of(results, 'epoch_cpu_seconds'):.3f} s)"
            + (" (met)" if median_of(results, "epoch_seconds") <= RECBOLE_SECONDS / 2 else " (NOT met)")
            for config, results in runs.items()
            if config.model == OURS
        ]
        print(f"  issue target, half RecBole's quote, <= {RECBOLE_SECONDS / 2:.2f} s/epoch: ours {', '.join(verdicts)}")


def bench_dataset(name: str, graph: InteractionGraph, folder: Path, args: argparse.Namespace) -> None:
    graph.save(folder)
    configs = [Config(OURS, threads) for threads in args.threads]
    configs += [Config(REFERENCE, threads) for threads in args.reference_threads]
    rounds = args.epochs or DEFAULT_EPOCHS[name]
    n_pairs = len(graph.pairs(TRAIN))
    print(
        f"\n== {name}: {graph.n_users:,} users, {graph.n_items:,} items, {n_pairs:,} distinct train pairs"
        f" ({math.ceil(n_pairs / BATCH_SIZE)} batches of {BATCH_SIZE}), {graph.protocol} split;"
        f" {rounds} timed epochs each; load average 1/5/15 min: {load_average()}",
        flush=True,
    )
    runs: dict[Config, list[WorkerResult]] = {config: [] for config in configs}
    for round_ in range(rounds):
        for config in configs:
            spec = WorkerSpec(
                graph_dir=str(folder),
                model=config.model,
                threads=config.threads,
                warmup_batches=args.warmup_batches,
                step_limit=args.reference_batches if config.model == REFERENCE else args.ours_batches,
                naive_users=args.naive_users,
                profile_batches=args.profile_batches if round_ == 0 and config == configs[0] else 0,
            )
            result = spawn(spec)
            runs[config].append(result)
            print(
                f"   epoch {round_ + 1}/{rounds} {LABELS[config.model]} x{config.threads}:"
                f" {result.epoch_seconds:.3f} s (cpu {result.epoch_cpu_seconds:.3f} s),"
                f" rank {result.rank_seconds:.3f} s, load {result.load:.1f}",
                flush=True,
            )
    print(f"-- {name}, load average 1/5/15 min at the end: {load_average()}")
    print_table(name, runs)
    for config, results in runs.items():
        if results[0].profile:
            print(f"\n   profile of {LABELS[config.model]} on {config.threads} threads, {args.profile_batches} steps:")
            print(results[0].profile)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", choices=tuple(DEFAULT_EPOCHS), default=list(DEFAULT_EPOCHS))
    parser.add_argument("--synthetic-size", type=int, default=1_000_000, help="interactions of the synthetic log")
    parser.add_argument(
        "--epochs", type=int, default=0, help=f"timed epochs (rounds) per configuration; 0: {DEFAULT_EPOCHS}"
    )
    parser.add_argument("--warmup-batches", type=int, default=3, help="untimed steps before each timed epoch")
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 1], help="torch threads for ours")
    parser.add_argument("--reference-threads", type=int, nargs="+", default=[2], help="torch threads for PyG's")
    parser.add_argument(
        "--reference-batches", type=int, default=10, help="PyG steps timed per epoch, scaled to it; 0: all"
    )
    parser.add_argument("--ours-batches", type=int, default=0, help="our steps timed per epoch, scaled to it; 0: all")
    parser.add_argument("--naive-users", type=int, default=1000, help="test users the per-user loop ranks")
    parser.add_argument(
        "--profile-batches", type=int, default=0, help="profile this many steps of ours (first --threads)"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(asdict(run_worker(WorkerSpec(**json.loads(args.worker))))))
        return

    print(
        f"LightGCN dim {PARAMS.dim}, {PARAMS.layers} layers, BPR batch {BATCH_SIZE}, {PARAMS.negatives} negative,"
        f" Adam lr {LR}; torch {torch.__version__}, {os.cpu_count()} CPUs"
    )
    builders = {"ml-100k": movielens_graph, "synthetic": lambda: synthetic_graph(args.synthetic_size)}
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.datasets:
            bench_dataset(name, builders[name](), Path(scratch) / name, args)


if __name__ == "__main__":
    main()
