"""Throughput of the vectorized samplers against plain Python ones on the same graph.

Run from the repository root: ``python -m benchmarks.bench_samplers [--help]``.
The graph has power-law degrees on both ends (a few nodes own most edges, like popular
items), so the "more neighbors than k" path is exercised. Each side is timed on the same
seeds / queries, best of ``--repeats``, and the ratio is printed side by side.
"""

from __future__ import annotations

import argparse
import random
import time
from bisect import bisect_left
from collections.abc import Callable

import torch
from torch import Tensor

from grec_dagster.graph.csr import CSR, TemporalCSR
from grec_dagster.graph.samplers import most_recent_neighbors, sample_neighbors


def power_law_edges(num_nodes: int, num_edges: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """Both endpoints drawn with probability ~ 1 / rank^0.8; times are integer seconds."""
    weight = torch.arange(1, num_nodes + 1, dtype=torch.float64) ** -0.8
    row = torch.multinomial(weight, num_edges, replacement=True, generator=generator)
    col = torch.multinomial(weight, num_edges, replacement=True, generator=generator)
    edge_time = torch.randint(1_000_000, (num_edges,), generator=generator)
    return row, col, edge_time


def best_seconds(run: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def python_sample_neighbors(
    rowptr: list[int], col: list[int], seeds: list[int], fanouts: list[int], replace: bool, rng: random.Random
) -> tuple[list[int], list[int], list[int]]:
    """The obvious per-node loop: ``random.sample`` per row, a dict for global -> local ids."""
    n_id = list(seeds)
    local = {node: i for i, node in reversed(list(enumerate(seeds)))}
    frontier = range(len(seeds))
    sources: list[int] = []
    targets: list[int] = []
    for k in fanouts:
        first_new = len(n_id)
        for target in frontier:
            start, end = rowptr[n_id[target]], rowptr[n_id[target] + 1]
            if end == start:
                continue
            if replace:
                positions = [start + rng.randrange(end - start) for _ in range(k)]
            elif end - start <= k:
                positions = list(range(start, end))
            else:
                positions = rng.sample(range(start, end), k)
            for position in positions:
                neighbor = col[position]
                if neighbor not in local:
                    local[neighbor] = len(n_id)
                    n_id.append(neighbor)
                sources.append(local[neighbor])
                targets.append(target)
        frontier = range(first_new, len(n_id))
    return n_id, sources, targets


def python_most_recent(
    rowptr: list[int], edge_time: list[int], col: list[int], nodes: list[int], times: list[int], k: int
) -> list[list[int]]:
    """TGN's NeighborFinder: one ``bisect`` per query on the node's time-sorted events."""
    found = []
    for node, query_time in zip(nodes, times, strict=True):
        start = rowptr[node]
        end = bisect_left(edge_time, query_time, start, rowptr[node + 1])
        found.append(col[max(start, end - k) : end])
    return found


def report(label: str, unit: str, work: int, ours: float, reference: float) -> None:
    print(
        f"{label:<38} ours {work / ours:>11,.0f} {unit}/s   python {work / reference:>9,.0f} {unit}/s"
        f"   speed-up x{reference / ours:,.1f}"
    )


def compare_uniform(csr: CSR, seeds: Tensor, fanouts: list[int], replace: bool, repeats: int) -> None:
    generator, rng = torch.Generator().manual_seed(1), random.Random(1)
    rowptr, col, seed_lists = csr.rowptr.tolist(), csr.col.tolist(), seeds.tolist()
    ours = best_seconds(lambda: [sample_neighbors(csr, batch, fanouts, replace, generator) for batch in seeds], repeats)
    reference = best_seconds(
        lambda: [python_sample_neighbors(rowptr, col, batch, fanouts, replace, rng) for batch in seed_lists], repeats
    )
    label = f"uniform {fanouts} {'with' if replace else 'without'} replacement"
    report(label, "seeds", seeds.numel(), ours, reference)


def compare_most_recent(graph: TemporalCSR, nodes: Tensor, times: Tensor, k: int, repeats: int) -> None:
    lists = graph.rowptr.tolist(), graph.time.tolist(), graph.col.tolist(), nodes.tolist(), times.tolist()
    ours = best_seconds(lambda: most_recent_neighbors(graph, nodes, times, k), repeats)
    reference = best_seconds(lambda: python_most_recent(*lists, k), repeats)
    report(f"most recent {k} strictly before t", "events", nodes.numel(), ours, reference)


def time_build(kind: type[CSR], row: Tensor, col: Tensor, edge_time: Tensor, num_nodes: int, repeats: int) -> None:
    seconds = best_seconds(lambda: kind.from_edges(row, col, num_nodes, time=edge_time), repeats)
    print(
        f"{kind.__name__}.from_edges, {row.numel():,} edges: {seconds:.2f} s ({row.numel() / seconds / 1e6:.1f}M edges/s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=100_000)
    parser.add_argument("--edges", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=1024, help="seeds per mini-batch")
    parser.add_argument("--batches", type=int, default=4, help="mini-batches per timing")
    parser.add_argument("--fanouts", type=int, nargs="+", default=[10, 5])
    parser.add_argument("--queries", type=int, default=200_000, help="(node, time) queries for the temporal sampler")
    parser.add_argument("--k", type=int, default=10, help="most recent neighbors per query")
    parser.add_argument("--build-edges", type=int, default=10_000_000, help="edges for the CSR build timing")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the Python side uses one core)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)

    row, col, edge_time = power_law_edges(args.nodes, args.edges, generator)
    csr = CSR.from_edges(row, col, args.nodes)
    degree = csr.degree(torch.arange(args.nodes))
    print(
        f"graph: {args.nodes:,} nodes, {args.edges:,} power-law edges, max degree {int(degree.max()):,}, "
        f"{float((degree > args.fanouts[0]).float().mean()):.1%} of rows above {args.fanouts[0]}; "
        f"torch threads: {args.threads}"
    )
    seeds = torch.randint(args.nodes, (args.batches, args.batch_size), generator=generator)
    for replace in (False, True):
        compare_uniform(csr, seeds, args.fanouts, replace, args.repeats)

    graph = TemporalCSR.from_edges(row, col, args.nodes, time=edge_time)
    nodes = torch.randint(args.nodes, (args.queries,), generator=generator)
    times = torch.randint(1_000_000, (args.queries,), generator=generator)
    compare_most_recent(graph, nodes, times, args.k, args.repeats)

    row, col, edge_time = power_law_edges(args.nodes, args.build_edges, generator)
    for kind in (CSR, TemporalCSR):
        time_build(kind, row, col, edge_time, args.nodes, args.repeats)


if __name__ == "__main__":
    main()
