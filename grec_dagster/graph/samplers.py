"""Vectorized neighbor samplers over a CSR, in pure torch (no pyg-lib / torch-sparse).

Two kinds of sampling:

* ``sample_neighbors``: GraphSAGE-style uniform sampling of up to ``k`` neighbors per node
  and hop, expanding each hop from the nodes the previous hop discovered (PyG semantics).
  ``UniformNeighborSampler`` wraps it as a PyG ``BaseSampler`` so PyG's ``NodeLoader``
  and ``LinkLoader`` can use it where ``NeighborLoader`` refuses to sample.
* ``most_recent_neighbors`` / ``uniform_neighbors_before``: TGN's temporal neighbor
  finder, i.e. for a batch of (node, time) queries the ``k`` latest neighbors, or ``k``
  uniform ones, among the events strictly before the query time.

Loops run only over hops and over the ``k`` slots of a fanout, never over nodes or events.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.sampler import (
    BaseSampler,
    EdgeSamplerInput,
    NegativeSampling,
    NodeSamplerInput,
    SamplerOutput,
)
from torch_geometric.sampler.neighbor_sampler import edge_sample, node_sample

from grec_dagster.graph.csr import CSR, TemporalCSR

_RANDOM_RANGE = 2**62
"""Random int64s are drawn in [0, 2^62) and reduced modulo the bound: exact integer
arithmetic, with a modulo bias below bound / 2^62 (nil for any real degree)."""


def _uniform_below(bound: Tensor, generator: torch.Generator | None) -> Tensor:
    """One uniform integer in ``[0, bound)`` per element; every bound must be positive."""
    return torch.randint(_RANDOM_RANGE, bound.shape, generator=generator) % bound


def _floyd_offsets(degree: Tensor, k: int, generator: torch.Generator | None) -> Tensor:
    """``k`` distinct offsets in ``[0, degree)`` per row, uniform over all k-subsets.

    Robert Floyd's algorithm: for ``j = degree - k, ..., degree - 1`` draw ``t`` in
    ``[0, j]``; keep ``t`` unless already chosen, in which case keep ``j``. It needs
    ``degree >= k`` and costs ``O(k^2)`` per row whatever the degree, which matters for
    popular items with 10^5 neighbors (random keys + per-row top-k would cost ``O(degree)``).
    """
    chosen = torch.empty(degree.numel(), k, dtype=torch.long)
    for slot in range(k):
        last = degree - k + slot
        draw = _uniform_below(last + 1, generator)
        taken = (chosen[:, :slot] == draw.unsqueeze(1)).any(dim=1)
        chosen[:, slot] = torch.where(taken, last, draw)
    return chosen


def _all_positions(start: Tensor, degree: Tensor) -> tuple[Tensor, Tensor]:
    """Every position ``start[i] .. start[i] + degree[i] - 1`` and the row ``i`` it belongs to."""
    owner = torch.repeat_interleave(torch.arange(start.numel()), degree)
    first_of_owner = torch.cumsum(degree, dim=0) - degree
    return start[owner] + torch.arange(owner.numel()) - first_of_owner[owner], owner


def _sample_hop(
    csr: CSR, nodes: Tensor, k: int, replace: bool, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """Positions in ``csr.col`` sampled for ``nodes`` and, for each, the index of its node.

    ``k < 0`` takes every neighbor. Without replacement a node of degree <= k gives all of
    its neighbors, otherwise ``k`` distinct ones; with replacement any node with a
    neighbor gives exactly ``k`` independent uniform draws.
    """
    start, degree = csr.rowptr[nodes], csr.degree(nodes)
    if k < 0:
        return _all_positions(start, degree)
    slots = torch.arange(k).expand(nodes.numel(), k)
    if replace:
        offset = _uniform_below(degree.clamp_min(1).unsqueeze(1).expand(-1, k), generator)
        keep = (degree > 0).unsqueeze(1).expand(-1, k)
    else:
        offset = slots.clone()
        keep = slots < degree.unsqueeze(1)
        large = degree > k
        offset[large] = _floyd_offsets(degree[large], k, generator)
    kept = keep.flatten().nonzero().squeeze(1)
    return (start.unsqueeze(1) + offset).flatten()[kept], kept // k


@dataclass(frozen=True)
class SampledSubgraph:
    """A multi-hop sample in PyG's message-passing layout.

    ``edge_index[0]`` is the sampled neighbor (message source) and ``edge_index[1]`` the
    node it was sampled for (message target), both local indices into ``n_id``.
    ``n_id[:batch_size]`` are the seeds exactly as given; every later node appears once.
    Nodes and edges are laid out hop after hop, ``num_sampled_nodes`` / ``num_sampled_edges``
    giving the sizes (the layout of PyG's ``trim_to_layer``).
    """

    n_id: Tensor
    edge_index: Tensor
    e_id: Tensor
    num_sampled_nodes: list[int]
    num_sampled_edges: list[int]

    @property
    def batch_size(self) -> int:
        return self.num_sampled_nodes[0]


def _local_ids(neighbors: Tensor, seen_sorted: Tensor, seen_local: Tensor, first_free: int) -> tuple[Tensor, Tensor]:
    """Local ids for sorted distinct ``neighbors``: the existing one if seen, else the next free one.

    Also returns which neighbors are new. A sort + ``searchsorted`` against the seen nodes
    costs O(sample log sample), where a global id -> local id table would cost O(num_nodes).
    """
    at = torch.searchsorted(seen_sorted, neighbors).clamp_max_(seen_sorted.numel() - 1)
    is_new = seen_sorted[at] != neighbors
    local = torch.empty_like(neighbors)
    local[~is_new] = seen_local[at[~is_new]]
    local[is_new] = torch.arange(first_free, first_free + int(is_new.sum()))
    return local, is_new


def sample_neighbors(
    csr: CSR,
    seeds: Tensor,
    fanouts: list[int],
    replace: bool = False,
    generator: torch.Generator | None = None,
) -> SampledSubgraph:
    """Sample ``fanouts[h]`` neighbors (``-1``: all) per node at hop ``h``, starting from ``seeds``.

    Hop ``h`` expands only the nodes first reached at hop ``h - 1``, as PyG's samplers do.
    """
    n_id = seeds
    seen_sorted, seen_local = torch.sort(seeds, stable=True)
    frontier = torch.arange(seeds.numel())
    sources: list[Tensor] = []
    targets: list[Tensor] = []
    e_ids: list[Tensor] = []
    num_sampled_nodes: list[int] = [seeds.numel()]
    num_sampled_edges: list[int] = []
    for k in fanouts:
        position, owner = _sample_hop(csr, n_id[frontier], k, replace, generator)
        neighbors, inverse = torch.unique(csr.col[position], return_inverse=True)
        local, is_new = _local_ids(neighbors, seen_sorted, seen_local, n_id.numel())
        sources.append(local[inverse])
        targets.append(frontier[owner])
        e_ids.append(csr.edge_id[position])

        frontier = local[is_new]
        n_id = torch.cat([n_id, neighbors[is_new]])
        seen_sorted, order = torch.sort(torch.cat([seen_sorted, neighbors[is_new]]), stable=True)
        seen_local = torch.cat([seen_local, frontier])[order]
        num_sampled_nodes.append(frontier.numel())
        num_sampled_edges.append(position.numel())
    empty = torch.empty(0, dtype=torch.long)
    return SampledSubgraph(
        n_id=n_id,
        edge_index=torch.stack([torch.cat([empty, *sources]), torch.cat([empty, *targets])]),
        e_id=torch.cat([empty, *e_ids]),
        num_sampled_nodes=num_sampled_nodes,
        num_sampled_edges=num_sampled_edges,
    )


class UniformNeighborSampler(BaseSampler):
    """``sample_neighbors`` behind PyG's sampler contract, for ``NodeLoader`` and ``LinkLoader``.

    Works on a homogeneous ``Data``. Like PyG's ``NeighborSampler`` it samples, for each
    node, the sources of its incoming edges (``edge_index[0]`` of edges whose
    ``edge_index[1]`` is that node), so a sampled batch carries the messages a GNN layer
    would pass along ``data.edge_index``. Edge ids are original ids (no permutation).
    Pass no ``generator`` when the loader has ``num_workers > 0``: each worker would copy
    the same generator state and sample the same subgraphs.
    """

    def __init__(
        self,
        data: Data,
        num_neighbors: list[int],
        replace: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        source, target = data.edge_index
        self.num_nodes = data.num_nodes
        self.csr = CSR.from_edges(row=target, col=source, num_nodes=self.num_nodes)
        self.num_neighbors = num_neighbors
        self.replace = replace
        self.generator = generator

    def _sample(self, seed: Tensor, seed_time: Tensor | None) -> SamplerOutput:
        if seed_time is not None:
            raise ValueError("UniformNeighborSampler does not sample by time; use most_recent_neighbors")
        sample = sample_neighbors(self.csr, seed, self.num_neighbors, self.replace, self.generator)
        return SamplerOutput(
            node=sample.n_id,
            row=sample.edge_index[0],
            col=sample.edge_index[1],
            edge=sample.e_id,
            num_sampled_nodes=sample.num_sampled_nodes,
            num_sampled_edges=sample.num_sampled_edges,
        )

    def sample_from_nodes(self, index: NodeSamplerInput, **kwargs: object) -> SamplerOutput:
        return node_sample(index, self._sample)

    def sample_from_edges(self, index: EdgeSamplerInput, neg_sampling: NegativeSampling | None = None) -> SamplerOutput:
        return edge_sample(index, self._sample, self.num_nodes, disjoint=False, neg_sampling=neg_sampling)


@dataclass(frozen=True)
class TemporalNeighbors:
    """``k`` neighbors per query as ``[num_queries, k]`` tensors, oldest to newest, right-aligned.

    As in TGN the newest neighbor sits in the last column; ``mask`` marks real entries.
    Padding is ``-1`` for ``node`` and ``e_id`` (so an unmasked lookup fails loudly)
    and ``0`` for ``time``.
    """

    node: Tensor
    time: Tensor
    e_id: Tensor
    mask: Tensor


def _read_padded(values: Tensor, at: Tensor, into: Tensor, mask: Tensor, fill: int) -> Tensor:
    out = torch.full((mask.numel(),), fill, dtype=values.dtype)
    out[into] = values[at]
    return out.view(mask.shape)


def _gather(graph: TemporalCSR, position: Tensor, mask: Tensor) -> TemporalNeighbors:
    """Read only the masked positions, so padding never indexes ``col`` (which may be empty)."""
    into = mask.flatten().nonzero().squeeze(1)
    at = position.flatten()[into]
    return TemporalNeighbors(
        node=_read_padded(graph.col, at, into, mask, fill=-1),
        time=_read_padded(graph.time, at, into, mask, fill=0),
        e_id=_read_padded(graph.edge_id, at, into, mask, fill=-1),
        mask=mask,
    )


def most_recent_neighbors(graph: TemporalCSR, nodes: Tensor, times: Tensor, k: int) -> TemporalNeighbors:
    """For each query ``(nodes[i], times[i])``, the ``k`` latest neighbors with time < ``times[i]``.

    Of events sharing a timestamp the one later in the input edge list counts as more
    recent, exactly like TGN's stable sort; no event at or after the query time is used.
    """
    start, end = graph.slice_before(nodes, times)
    position = end.unsqueeze(1) - k + torch.arange(k)
    return _gather(graph, position, position >= start.unsqueeze(1))


def uniform_neighbors_before(
    graph: TemporalCSR,
    nodes: Tensor,
    times: Tensor,
    k: int,
    generator: torch.Generator | None = None,
) -> TemporalNeighbors:
    """For each query, ``k`` draws with replacement among its neighbors with time < the query's.

    TGN's ``uniform=True`` mode: a query with at least one earlier neighbor gets ``k``
    entries sorted by time; one without gets an all-masked row.
    """
    start, end = graph.slice_before(nodes, times)
    count = (end - start).unsqueeze(1)
    offset = _uniform_below(count.clamp_min(1).expand(-1, k), generator)
    position = start.unsqueeze(1) + offset.sort(dim=1).values
    return _gather(graph, position, (count > 0).expand(-1, k))
