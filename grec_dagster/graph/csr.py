"""Compressed sparse row (CSR) adjacency built from an edge list, for neighbor sampling.

Node ``v``'s neighbors are ``col[rowptr[v]:rowptr[v + 1]]``; ``edge_id`` says which input
edge each entry came from, so samplers can hand back edge features. Building is a stable
sort plus ``bincount``/``cumsum``: no Python loop, about a second for 10M edges.

``TemporalCSR`` additionally sorts each row by time (ascending, ties in input order, so a
later event in the log counts as the more recent one) and keeps a search key that lets
``torch.searchsorted`` find, for a whole batch of (node, time) queries at once, the
neighbors strictly before each query time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def _check_edges(row: Tensor, col: Tensor, num_nodes: int, **per_edge: Tensor | None) -> None:
    if row.dtype != torch.long or col.dtype != torch.long:
        raise TypeError("row and col must be torch.long")
    if row.dim() != 1 or row.shape != col.shape:
        raise ValueError(f"row and col must be 1-D of equal length, got {tuple(row.shape)} and {tuple(col.shape)}")
    for name, values in per_edge.items():
        if values is not None and values.shape != row.shape:
            raise ValueError(f"{name} must have one entry per edge, got {tuple(values.shape)}")
    if row.numel() and (int(row.min()) < 0 or int(row.max()) >= num_nodes):
        raise ValueError(f"row holds ids outside [0, {num_nodes})")


def _rowptr(sorted_row: Tensor, num_nodes: int) -> Tensor:
    """``rowptr[v]`` is where row ``v`` starts; ``rowptr[num_nodes]`` is the edge count."""
    rowptr = sorted_row.new_zeros(num_nodes + 1)
    torch.cumsum(torch.bincount(sorted_row, minlength=num_nodes), dim=0, out=rowptr[1:])
    return rowptr


@dataclass(frozen=True, kw_only=True)
class CSR:
    """Adjacency of ``num_nodes`` nodes; within a row, entries keep their input order."""

    rowptr: Tensor
    col: Tensor
    edge_id: Tensor
    time: Tensor | None = None

    @classmethod
    def from_edges(
        cls,
        row: Tensor,
        col: Tensor,
        num_nodes: int,
        edge_id: Tensor | None = None,
        time: Tensor | None = None,
    ) -> CSR:
        """Group edges ``row[i] -> col[i]`` by ``row``; ``edge_id`` defaults to the input position."""
        _check_edges(row, col, num_nodes, edge_id=edge_id, time=time)
        sorted_row, perm = torch.sort(row, stable=True)
        edge_id = perm if edge_id is None else edge_id[perm]
        return cls(
            rowptr=_rowptr(sorted_row, num_nodes),
            col=col[perm],
            edge_id=edge_id,
            time=None if time is None else time[perm],
        )

    @property
    def num_nodes(self) -> int:
        return self.rowptr.numel() - 1

    @property
    def num_edges(self) -> int:
        return self.col.numel()

    def degree(self, nodes: Tensor) -> Tensor:
        return self.rowptr[nodes + 1] - self.rowptr[nodes]


@dataclass(frozen=True, kw_only=True)
class TemporalCSR(CSR):
    """A CSR whose rows are sorted by time, searchable by (node, time) in one vectorized call.

    With ``r`` the dense rank of an entry's time among the ``D`` distinct times,
    ``search_key = row * D + r`` increases along ``col`` (rows ascend, and within a row
    the times do). The neighbors of ``v`` strictly before ``t`` therefore end at
    ``searchsorted(search_key, v * D + #{distinct times < t})``: a single global search
    instead of one ``bisect`` per query, which also works for float and int64 times
    of any range without risking overflow of a ``row * BIG + time`` key.
    """

    time: Tensor
    search_key: Tensor
    distinct_time: Tensor

    @classmethod
    def from_edges(
        cls,
        row: Tensor,
        col: Tensor,
        num_nodes: int,
        edge_id: Tensor | None = None,
        time: Tensor | None = None,
    ) -> TemporalCSR:
        """Group edges ``row[i] -> col[i]`` at ``time[i]`` by row, each row in time order."""
        if time is None:
            raise ValueError("a TemporalCSR needs one time per edge")
        _check_edges(row, col, num_nodes, edge_id=edge_id, time=time)
        sorted_time, by_time = torch.sort(time, stable=True)
        sorted_row, in_row = torch.sort(row[by_time], stable=True)
        perm = by_time[in_row]

        is_new_time = torch.ones_like(sorted_time, dtype=torch.bool)
        is_new_time[1:] = sorted_time[1:] != sorted_time[:-1]
        distinct_time = sorted_time[is_new_time]
        time_rank = torch.cumsum(is_new_time, dim=0) - 1  # in time order, like sorted_time

        return cls(
            rowptr=_rowptr(sorted_row, num_nodes),
            col=col[perm],
            edge_id=perm if edge_id is None else edge_id[perm],
            time=sorted_time[in_row],
            search_key=sorted_row * distinct_time.numel() + time_rank[in_row],
            distinct_time=distinct_time,
        )

    def slice_before(self, nodes: Tensor, times: Tensor) -> tuple[Tensor, Tensor]:
        """Per query, ``[start, end)`` in ``col`` holds the node's neighbors strictly before its time."""
        if times.dtype != self.time.dtype:
            raise TypeError(f"query times are {times.dtype} but edge times are {self.time.dtype}")
        earlier_times = torch.searchsorted(self.distinct_time, times, side="left")
        end = torch.searchsorted(self.search_key, nodes * self.distinct_time.numel() + earlier_times, side="left")
        return self.rowptr[nodes], end
