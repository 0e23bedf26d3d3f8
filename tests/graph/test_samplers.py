"""The CSR and the samplers, checked against brute force on random graphs.

Random graphs here have parallel edges, self loops, isolated nodes and many events
sharing a timestamp, because those are where vectorized index tricks go wrong.
"""

from math import comb, sqrt

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.loader import LinkLoader, NodeLoader
from torch_geometric.nn import SAGEConv
from torch_geometric.sampler import NegativeSampling

from grec_dagster.graph.csr import CSR, TemporalCSR
from grec_dagster.graph.samplers import (
    UniformNeighborSampler,
    most_recent_neighbors,
    sample_neighbors,
    uniform_neighbors_before,
)

FEW_EXAMPLES = settings(max_examples=60, deadline=None)


def random_edges(num_nodes: int, num_edges: int, seed: int, num_times: int = 6) -> tuple[Tensor, Tensor, Tensor]:
    """Edges ``row -> col`` with integer times from a small range, so ties are common."""
    generator = torch.Generator().manual_seed(seed)
    row = torch.randint(num_nodes, (num_edges,), generator=generator)
    col = torch.randint(num_nodes, (num_edges,), generator=generator)
    time = torch.randint(num_times, (num_edges,), generator=generator)
    return row, col, time


def chi_square_is_plausible(counts: Tensor) -> bool:
    """Counts are consistent with a uniform distribution, at about six standard deviations.

    The statistic has mean ``df`` and standard deviation ``sqrt(2 df)``; the generators are
    seeded, so a pass never flakes, while any real bias on these sample sizes lands far out.
    """
    expected = counts.sum() / counts.numel()
    statistic = float(((counts - expected) ** 2 / expected).sum())
    df = counts.numel() - 1
    return statistic < df + 6 * sqrt(2 * df)


# CSR ##################################################################################


@FEW_EXAMPLES
@given(num_nodes=st.integers(1, 30), num_edges=st.integers(0, 120), seed=st.integers(0, 2**31))
def test_csr_rows_hold_exactly_the_input_edges_in_input_order(num_nodes: int, num_edges: int, seed: int) -> None:
    row, col, time = random_edges(num_nodes, num_edges, seed)
    csr = CSR.from_edges(row, col, num_nodes, time=time)

    owner = torch.repeat_interleave(torch.arange(num_nodes), csr.degree(torch.arange(num_nodes)))
    assert torch.equal(torch.sort(csr.edge_id).values, torch.arange(num_edges))
    assert torch.equal(row[csr.edge_id], owner)
    assert torch.equal(col[csr.edge_id], csr.col)
    assert torch.equal(time[csr.edge_id], csr.time)
    assert bool((csr.edge_id.diff()[owner.diff() == 0] > 0).all()), "a row must keep input order"


def test_csr_keeps_given_edge_ids() -> None:
    csr = CSR.from_edges(torch.tensor([1, 0, 1]), torch.tensor([2, 2, 0]), 3, edge_id=torch.tensor([70, 80, 90]))
    assert csr.rowptr.tolist() == [0, 1, 3, 3]
    assert csr.col.tolist() == [2, 2, 0]
    assert csr.edge_id.tolist() == [80, 70, 90]


def test_csr_rejects_row_ids_outside_the_node_range() -> None:
    with pytest.raises(ValueError):
        CSR.from_edges(torch.tensor([0, 3]), torch.tensor([1, 1]), num_nodes=3)


@FEW_EXAMPLES
@given(num_nodes=st.integers(1, 30), num_edges=st.integers(0, 120), seed=st.integers(0, 2**31))
def test_temporal_csr_sorts_rows_by_time_then_input_order(num_nodes: int, num_edges: int, seed: int) -> None:
    row, col, time = random_edges(num_nodes, num_edges, seed)
    graph = TemporalCSR.from_edges(row, col, num_nodes, time=time)

    expected = sorted(range(num_edges), key=lambda i: (int(row[i]), int(time[i]), i))
    assert graph.edge_id.tolist() == expected
    assert torch.equal(graph.col, col[graph.edge_id])
    assert torch.equal(graph.time, time[graph.edge_id])
    assert bool((graph.search_key.diff() >= 0).all())


# Uniform k-per-hop sampling ###########################################################


@FEW_EXAMPLES
@given(
    num_nodes=st.integers(1, 30),
    num_edges=st.integers(0, 150),
    seed=st.integers(0, 2**31),
    fanouts=st.lists(st.integers(-1, 6), min_size=1, max_size=3),
    replace=st.booleans(),
    num_seeds=st.integers(0, 8),
)
def test_sample_is_a_real_hop_by_hop_neighborhood(
    num_nodes: int, num_edges: int, seed: int, fanouts: list[int], replace: bool, num_seeds: int
) -> None:
    row, col, _ = random_edges(num_nodes, num_edges, seed)
    csr = CSR.from_edges(row, col, num_nodes)
    generator = torch.Generator().manual_seed(seed)
    seeds = torch.randint(num_nodes, (num_seeds,), generator=generator)  # duplicates allowed
    sample = sample_neighbors(csr, seeds, fanouts, replace=replace, generator=generator)

    n_id, (source, target), e_id = sample.n_id, sample.edge_index, sample.e_id
    assert torch.equal(n_id[: sample.batch_size], seeds)
    assert sum(sample.num_sampled_nodes) == n_id.numel()
    assert sum(sample.num_sampled_edges) == e_id.numel() == source.numel()
    later = n_id[sample.batch_size :].tolist()
    assert len(set(later)) == len(later) and not set(later) & set(seeds.tolist())
    # Every edge is an input edge, from the sampled neighbor to the node it was sampled for.
    assert torch.equal(row[e_id], n_id[target]) and torch.equal(col[e_id], n_id[source])

    node_end = sample.num_sampled_nodes[0]
    node_start, edge_start = 0, 0
    for hop, (k, edge_count) in enumerate(zip(fanouts, sample.num_sampled_edges, strict=True)):
        hop_edges = slice(edge_start, edge_start + edge_count)
        expanded = torch.arange(node_start, node_end)
        degree = csr.degree(n_id[expanded])
        if k < 0:
            expected = degree
        elif replace:
            expected = torch.where(degree > 0, k, 0)
        else:
            expected = degree.clamp_max(k)
        counts = torch.bincount(target[hop_edges] - node_start, minlength=expanded.numel())
        assert torch.equal(counts, expected), f"hop {hop} sampled the wrong number of neighbors"

        if not replace:
            for local in expanded.tolist():
                picked = e_id[hop_edges][target[hop_edges] == local].tolist()
                assert len(set(picked)) == len(picked), "without replacement an edge is drawn at most once"
                if k < 0 or int(csr.degree(n_id[local])) <= k:
                    all_edges = torch.nonzero(row == n_id[local]).flatten().tolist()
                    assert sorted(picked) == all_edges

        new_nodes = torch.arange(node_end, node_end + sample.num_sampled_nodes[hop + 1])
        assert bool(torch.isin(new_nodes, source[hop_edges]).all()), "a new node must come from this hop"
        node_start, node_end, edge_start = node_end, node_end + new_nodes.numel(), edge_start + edge_count


def test_sampling_without_replacement_is_uniform_over_subsets() -> None:
    """A node of degree 6 asked for 3 neighbors: all 20 subsets equally likely."""
    degree, k, draws = 6, 3, 40_000
    csr = CSR.from_edges(torch.zeros(degree, dtype=torch.long), torch.arange(1, degree + 1), num_nodes=degree + 1)
    generator = torch.Generator().manual_seed(0)
    sample = sample_neighbors(csr, torch.zeros(draws, dtype=torch.long), [k], generator=generator)

    subset_code = (2 ** sample.e_id.view(draws, k)).sum(dim=1)  # a bitmask of the picked edges
    _, counts = torch.unique(subset_code, return_counts=True)
    assert counts.numel() == comb(degree, k)
    assert chi_square_is_plausible(counts)


def test_sampling_with_replacement_is_uniform_over_neighbors() -> None:
    degree, k, draws = 7, 5, 20_000
    csr = CSR.from_edges(torch.zeros(degree, dtype=torch.long), torch.arange(1, degree + 1), num_nodes=degree + 1)
    generator = torch.Generator().manual_seed(1)
    sample = sample_neighbors(csr, torch.zeros(draws, dtype=torch.long), [k], replace=True, generator=generator)

    assert sample.e_id.numel() == draws * k
    assert chi_square_is_plausible(torch.bincount(sample.e_id, minlength=degree))


def test_uniformity_check_rejects_a_biased_sampler() -> None:
    """The chi-square check above has teeth: a 25% excess on one of 20 subsets fails it."""
    counts = torch.full((20,), 2_000.0)
    counts[0] += 500
    assert not chi_square_is_plausible(counts)


def test_same_generator_seed_gives_the_same_sample() -> None:
    row, col, _ = random_edges(50, 400, seed=3)
    csr = CSR.from_edges(row, col, 50)
    first, second = (
        sample_neighbors(csr, torch.arange(10), [4, 3], generator=torch.Generator().manual_seed(9)) for _ in range(2)
    )
    assert torch.equal(first.n_id, second.n_id) and torch.equal(first.e_id, second.e_id)


# Temporal sampling ####################################################################


def most_recent_reference(
    row: Tensor, col: Tensor, time: Tensor, node: int, query_time: float, k: int
) -> list[tuple[int, float, int]]:
    """TGN's NeighborFinder for one query: stable sort by time, keep times < t, take the last k."""
    events = sorted((float(time[i]), i) for i in range(row.numel()) if int(row[i]) == node)
    before = [(int(col[i]), t, i) for t, i in events if t < query_time]
    return before[-k:] if k else []


@FEW_EXAMPLES
@given(
    num_nodes=st.integers(1, 12),
    num_edges=st.integers(0, 80),
    seed=st.integers(0, 2**31),
    k=st.integers(0, 7),
    as_float=st.booleans(),
)
def test_most_recent_neighbors_match_the_reference(
    num_nodes: int, num_edges: int, seed: int, k: int, as_float: bool
) -> None:
    row, col, time = random_edges(num_nodes, num_edges, seed)
    # Query at every event time (ties), between event times, before all and after all.
    grid = torch.arange(-1, 8)
    if as_float:
        time, grid = time * 0.5, torch.arange(-2, 14) * 0.25
    graph = TemporalCSR.from_edges(row, col, num_nodes, time=time)
    nodes = torch.arange(num_nodes).repeat_interleave(grid.numel())
    query_times = grid.repeat(num_nodes)
    found = most_recent_neighbors(graph, nodes, query_times, k)

    for i, (node, query_time) in enumerate(zip(nodes.tolist(), query_times.tolist(), strict=True)):
        expected = most_recent_reference(row, col, time, node, query_time, k)
        valid = found.mask[i]
        assert valid.tolist() == [False] * (k - len(expected)) + [True] * len(expected)
        assert found.node[i][valid].tolist() == [n for n, _, _ in expected]
        assert found.time[i][valid].tolist() == [t for _, t, _ in expected]
        assert found.e_id[i][valid].tolist() == [e for _, _, e in expected]
        assert bool((found.node[i][~valid] == -1).all()) and bool((found.e_id[i][~valid] == -1).all())


def test_ties_resolve_by_input_order_and_the_query_time_itself_is_excluded() -> None:
    #                events:  a  b  c  d   (node 0 -> neighbors 1..4)
    graph = TemporalCSR.from_edges(
        torch.zeros(4, dtype=torch.long), torch.tensor([1, 2, 3, 4]), num_nodes=5, time=torch.tensor([5, 5, 5, 7])
    )
    found = most_recent_neighbors(graph, torch.tensor([0, 0, 0]), torch.tensor([6, 5, 8]), k=2)
    assert found.node.tolist() == [[2, 3], [-1, -1], [3, 4]]
    assert found.e_id.tolist() == [[1, 2], [-1, -1], [2, 3]]
    assert found.mask.tolist() == [[True, True], [False, False], [True, True]]


@FEW_EXAMPLES
@given(num_nodes=st.integers(1, 12), num_edges=st.integers(0, 80), seed=st.integers(0, 2**31), k=st.integers(0, 7))
def test_uniform_neighbors_before_stay_before_the_query(num_nodes: int, num_edges: int, seed: int, k: int) -> None:
    row, col, time = random_edges(num_nodes, num_edges, seed)
    graph = TemporalCSR.from_edges(row, col, num_nodes, time=time)
    nodes = torch.arange(num_nodes).repeat_interleave(8)
    query_times = torch.arange(8).repeat(num_nodes)
    found = uniform_neighbors_before(graph, nodes, query_times, k, generator=torch.Generator().manual_seed(seed))

    has_earlier = torch.tensor([bool(((row == n) & (time < t)).any()) for n, t in zip(nodes, query_times, strict=True)])
    assert torch.equal(found.mask, has_earlier.unsqueeze(1).expand(-1, k))
    e_id = found.e_id[found.mask]
    assert torch.equal(row[e_id], nodes.unsqueeze(1).expand(-1, k)[found.mask])
    assert torch.equal(col[e_id], found.node[found.mask])
    assert bool((time[e_id] < query_times.unsqueeze(1).expand(-1, k)[found.mask]).all())
    assert bool((found.time.diff(dim=1)[found.mask[:, 1:]] >= 0).all()), "entries come oldest first"


def test_uniform_neighbors_before_draw_each_earlier_event_equally_often() -> None:
    # Node 0 has events at times 0..9; a query at time 6 may draw only the first six.
    graph = TemporalCSR.from_edges(
        torch.zeros(10, dtype=torch.long), torch.arange(10), num_nodes=10, time=torch.arange(10)
    )
    found = uniform_neighbors_before(
        graph,
        torch.zeros(6_000, dtype=torch.long),
        torch.full((6_000,), 6),
        k=4,
        generator=torch.Generator().manual_seed(2),
    )
    counts = torch.bincount(found.e_id.flatten(), minlength=10)
    assert counts[6:].sum() == 0
    assert chi_square_is_plausible(counts[:6])


# PyG loaders ##########################################################################


@pytest.fixture(scope="module")
def graph_data() -> Data:
    generator = torch.Generator().manual_seed(4)
    num_nodes, num_edges = 300, 2_000
    return Data(
        x=torch.randn(num_nodes, 8, generator=generator),
        edge_index=torch.randint(num_nodes, (2, num_edges), generator=generator),
        edge_attr=torch.randn(num_edges, 3, generator=generator),
    )


def test_node_loader_yields_a_batch_a_gnn_can_run_on(graph_data: Data) -> None:
    sampler = UniformNeighborSampler(graph_data, [5, 3], generator=torch.Generator().manual_seed(0))
    loader = NodeLoader(graph_data, node_sampler=sampler, input_nodes=torch.arange(100), batch_size=32, shuffle=True)
    batches = list(loader)

    assert sorted(torch.cat([b.n_id[: b.batch_size] for b in batches]).tolist()) == list(range(100))
    for batch in batches:
        assert torch.equal(batch.x, graph_data.x[batch.n_id])
        assert torch.equal(batch.edge_attr, graph_data.edge_attr[batch.e_id])
        assert torch.equal(graph_data.edge_index[:, batch.e_id], batch.n_id[batch.edge_index])
        assert torch.equal(batch.n_id[: batch.batch_size], batch.input_id)
    out = SAGEConv(8, 4)(batches[0].x, batches[0].edge_index)[: batches[0].batch_size]
    assert out.shape == (32, 4) and bool(torch.isfinite(out).all())


def test_link_loader_samples_around_positive_and_negative_pairs(graph_data: Data) -> None:
    sampler = UniformNeighborSampler(graph_data, [4], generator=torch.Generator().manual_seed(0))
    label_edges = graph_data.edge_index[:, :50]
    loader = LinkLoader(
        graph_data,
        link_sampler=sampler,
        edge_label_index=label_edges,
        neg_sampling=NegativeSampling("binary"),
        batch_size=25,
    )
    batch = next(iter(loader))

    positives = batch.edge_label == 1
    assert int(positives.sum()) == int((~positives).sum()) == 25
    assert torch.equal(batch.n_id[batch.edge_label_index[:, positives]], label_edges[:, batch.input_id])
    assert torch.equal(graph_data.edge_index[:, batch.e_id], batch.n_id[batch.edge_index])
