"""Temporal graph attention over user-item event streams, after TGAT (Xu et al., ICLR 2020)
with TGN's optional node memory (Rossi et al., 2020).

Time encoding (TGAT), learnable w, b in R^{d_t}, w initialised to 10^{-linspace(0, 9)} so that
gaps from seconds to decades each land on some frequency:

    phi(dt) = cos(dt * w + b)

Node input: projected features, a learnable id embedding (zero-initialised, so a node never
trained on is described by its features alone; sparse, so a step's gradient and update cover only
the nodes its batch reaches, whatever the node count) and, with memory on, the node's memory:

    h^0_v = P_side x_v + e_v + s_v

Layer l, node v queried at time t, with (u_j, t_j) its k most recent neighbors, t_j < t:

    q   = W_q [h^{l-1}_v(t) || phi(0)]
    k_j = W_k [h^{l-1}_{u_j}(t_j) || phi(t - t_j)],   v_j = W_v [h^{l-1}_{u_j}(t_j) || phi(t - t_j)]
    a   = multi-head softmax_j(q . k_j / sqrt(d_h)) v_j       (a = 0 without a neighbor before t)
    h^l_v(t) = FFN([W_o a || h^{l-1}_v(t)])

    score(u, i, t) = <h^L_u(t), h^L_i(t)>,   BPR: -log sigmoid(score(u, i, t) - score(u, j, t))

for a training event (u, i, t) and a sampled item j. Every lookup is strictly before the
query time, and a neighbor is embedded at its own event time, so nothing at or after t
reaches h_v(t).

Memory (TGN / JODIE), per node, for each event (v, w, t), keeping each node's latest event of
a batch (TGN's "last" aggregator):

    s_v <- GRU([s_v || s_w || phi(t - t_v^-)], s_v)          (t_v^-: v's previous update)

It is state, not a parameter: TGN's training scheme updates it from the previous batch's
events at the start of a batch (so the GRU gets gradients through this batch's loss) and
stores the result detached. Batches are cut where the time changes, so the memory used for
a query holds only events strictly before it.

With profile facets (DynLLM), a user's final embedding h^L_u(t) goes through `ProfileFusion`
(`profile_fusion.py`): attention over its distilled LLM profile facets, merged by a gated residual.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field
from torch import Tensor, nn

from grec_dagster.graph.samplers import most_recent_neighbors
from grec_dagster.graph.temporal import ITEM, USER, TemporalGraph, chronological_batches
from grec_dagster.models.profile_fusion import ProfileFacets, ProfileFusion

NEVER = torch.iinfo(torch.long).min
"""`last_update` of a node the memory has not met yet: its first message gets dt = 0."""


class TemporalParams(BaseModel):
    dim: int = Field(default=64, description="Node embedding, attention and memory size.")
    time_dim: int = Field(default=16, description="Size of the time encoding.")
    heads: int = Field(default=2, description="Attention heads (must divide dim).")
    neighbors: int = Field(
        default=10,
        description="Most recent neighbors attended to per node and layer (TGN's budget; the attention's cost is linear in it).",
    )
    layers: int = Field(default=1, description="Attention layers (hops).")
    memory: bool = Field(default=True, description="Keep a TGN-style GRU memory per node (best on MovieLens-100K).")
    node_embeddings: bool = Field(default=True, description="Learn an id embedding per node next to its features.")
    dropout: float = Field(default=0.1, description="Dropout on attention weights and the merge layer.")
    profile_top_k: int = Field(default=3, ge=1, description="With profile facets: how many each user keeps.")


class TimeEncoding(nn.Module):
    """phi(dt) = cos(dt * w + b), TGAT's functional time encoding.

    The phase is computed in float64: gaps reach 10^7 seconds, where a float32 product carries
    an error of about one radian at w = 1, so cos would turn rounding into noise.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.w = nn.Parameter(10.0 ** -torch.linspace(0, 9, dim))
        self.b = nn.Parameter(torch.zeros(dim))

    def forward(self, dt: Tensor) -> Tensor:
        phase = dt.double().unsqueeze(-1) * self.w.double() + self.b.double()
        return torch.cos(phase).to(self.w.dtype)


class TemporalAttentionLayer(nn.Module):
    """One TGAT layer: a node's query attends over its neighbors tagged with phi(t - t_j).

    W_k [h || phi] is computed as W_kh h + W_kt phi, so the h part is paid once per
    distinct neighbor row rather than once per (query, neighbor) slot.
    """

    def __init__(self, dim: int, time_dim: int, heads: int, dropout: float):
        super().__init__()
        if dim % heads:
            raise ValueError(f"heads ({heads}) must divide dim ({dim})")
        self.heads = heads
        self.query = nn.Linear(dim + time_dim, dim)
        self.key_value = nn.Linear(dim, 2 * dim)
        self.key_value_time = nn.Linear(time_dim, 2 * dim, bias=False)
        self.out = nn.Linear(dim, dim)
        self.merge = nn.Sequential(nn.Linear(2 * dim, dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(dim, dim))
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, own: Tensor, own_code: Tensor, rows: Tensor, index: Tensor, codes: Tensor, mask: Tensor
    ) -> Tensor:
        """own [Q, d], own_code [Q, d_t]; neighbor (q, j) is rows[index[q, j]] ([M, d]; padding
        may point at row M) tagged with codes [Q, k, d_t]; mask [Q, k] marks real ones -> [Q, d]."""
        n_queries, k = index.shape
        dim = own.shape[1]
        head_dim = dim // self.heads
        query = self.query(torch.cat([own, own_code], -1)).view(n_queries, self.heads, head_dim)
        per_row = torch.cat([self.key_value(rows), rows.new_zeros(1, 2 * dim)])
        key, value = (per_row[index] + self.key_value_time(codes)).view(n_queries, k, 2, self.heads, head_dim).unbind(2)
        logits = torch.einsum("qhd,qkhd->qhk", query, key) / math.sqrt(head_dim)
        has_any = mask.any(1)[:, None, None]
        # Rows without a neighbor get finite logits, then zero weights: softmax over nothing would be NaN.
        logits = torch.where(has_any, logits.masked_fill(~mask[:, None, :], float("-inf")), 0.0)
        weights = self.dropout(torch.softmax(logits, -1) * mask[:, None, :])
        attended = torch.einsum("qhk,qkhd->qhd", weights, value).reshape(n_queries, dim)
        return self.merge(torch.cat([self.out(attended), own], -1))


@dataclass
class MemoryView:
    """The memory with the pending batch applied: `nodes` (sorted) got `values` at `times`."""

    state: Tensor
    nodes: Tensor
    values: Tensor
    times: Tensor

    def lookup(self, nodes: Tensor) -> Tensor:
        rows = self.state[nodes]
        if not self.nodes.numel():
            return rows
        at = torch.searchsorted(self.nodes, nodes).clamp_max(self.nodes.numel() - 1)
        updated = self.nodes[at] == nodes
        return torch.where(updated.unsqueeze(1), self.values[at], rows)


class NodeMemory(nn.Module):
    """TGN memory over users (rows 0..n_users-1) then items; buffers, never saved or trained."""

    def __init__(self, n_users: int, n_items: int, dim: int, time_dim: int):
        super().__init__()
        self.n_users = n_users
        self.gru = nn.GRUCell(2 * dim + time_dim, dim)
        self.register_buffer("state", torch.zeros(n_users + n_items, dim), persistent=False)
        self.register_buffer("last_update", torch.full((n_users + n_items,), NEVER), persistent=False)
        self.register_buffer("pending", torch.empty(3, 0, dtype=torch.long), persistent=False)

    def reset(self) -> None:
        self.state.zero_()
        self.last_update.fill_(NEVER)
        self.pending = self.pending[:, :0]

    def view(self, time: TimeEncoding) -> MemoryView:
        """Apply the pending events' messages, differentiably (the GRU learns through them)."""
        users, items, ts = self.pending
        node = torch.cat([users, items + self.n_users])
        other = torch.cat([items + self.n_users, users])
        nodes, inverse = torch.unique(node, return_inverse=True)
        row = torch.arange(node.numel())
        latest = torch.full((nodes.numel(),), -1, dtype=torch.long).scatter_reduce(0, inverse, row, "amax")
        node, other, when = node[latest], other[latest], torch.cat([ts, ts])[latest]
        last = self.last_update[node]
        gap = torch.where(last == NEVER, 0, when - last)
        message = torch.cat([self.state[node], self.state[other], time(gap)], -1)
        values = self.gru(message, self.state[node]) if nodes.numel() else self.state[:0]
        return MemoryView(self.state, nodes, values, when)

    def commit(self, view: MemoryView, users: Tensor, items: Tensor, ts: Tensor) -> None:
        """Store `view` detached and queue the batch just used, to be applied by the next `view`."""
        self.state[view.nodes] = view.values.detach()
        self.last_update[view.nodes] = view.times
        self.pending = torch.stack([users, items, ts])


class TemporalGraphAttention(nn.Module):
    """The model of the module docstring; `history` graphs supply the neighbors.

    `forward` trains on chronological batches of `training_history`'s events (`train_on` sets it).
    """

    def __init__(
        self,
        user_features: Tensor,
        item_features: Tensor,
        params: TemporalParams,
        profiles: ProfileFacets | None = None,
    ):
        super().__init__()
        self.params = params
        dim = params.dim
        self.register_buffer("user_features", user_features.float(), persistent=False)
        self.register_buffer("item_features", item_features.float(), persistent=False)
        self.project = nn.ModuleList([nn.Linear(user_features.shape[1], dim), nn.Linear(item_features.shape[1], dim)])
        self.ids = (
            nn.ModuleList([nn.Embedding(len(side), dim, sparse=True) for side in (user_features, item_features)])
            if params.node_embeddings
            else None
        )
        if self.ids is not None:
            for table in self.ids:
                nn.init.zeros_(table.weight)
        self.time = TimeEncoding(params.time_dim)
        self.layers = nn.ModuleList(
            TemporalAttentionLayer(dim, params.time_dim, params.heads, params.dropout) for _ in range(params.layers)
        )
        self.memory = (
            NodeMemory(len(user_features), len(item_features), dim, params.time_dim) if params.memory else None
        )
        self.profiles = (
            ProfileFusion(profiles, dim, params.heads, params.profile_top_k, params.dropout)
            if profiles is not None
            else None
        )
        self.training_history: TemporalGraph | None = None

    def train_on(self, history: TemporalGraph) -> None:
        """The events `forward`'s batches come from, whose neighbors they may look up."""
        self.training_history = history

    @property
    def n_users(self) -> int:
        return self.user_features.shape[0]

    @property
    def n_items(self) -> int:
        return self.item_features.shape[0]

    def _inputs(self, nodes: Tensor, side: int, memory: MemoryView | None) -> tuple[Tensor, Tensor]:
        """h^0 as (rows, index), one row per distinct node: neighbor lists repeat popular nodes."""
        distinct, index = torch.unique(nodes, return_inverse=True)
        features = self.user_features if side == USER else self.item_features
        h = self.project[side](features[distinct])
        if self.ids is not None:
            h = h + self.ids[side](distinct)
        if memory is not None:
            h = h + memory.lookup(distinct + (0 if side == USER else self.n_users))
        return h, index

    def _rows(
        self, history: TemporalGraph, nodes: Tensor, side: int, times: Tensor, memory: MemoryView | None, layer: int
    ) -> tuple[Tensor, Tensor]:
        """h^layer of `nodes` as (rows, index), `nodes[j]` having `rows[index[j]]`."""
        if layer == 0:
            return self._inputs(nodes, side, memory)
        own = self.embed(history, nodes, side, times, memory, layer - 1)
        found = most_recent_neighbors(history.csr(side), nodes, times, self.params.neighbors)
        rows, at = self._rows(history, found.node[found.mask], 1 - side, found.time[found.mask], memory, layer - 1)
        index = torch.full(found.mask.shape, rows.shape[0])  # padding points one past the last row
        index[found.mask] = at
        codes = self.time(times.unsqueeze(1) - found.time)
        out = self.layers[layer - 1](own, self.time(torch.zeros_like(times)), rows, index, codes, found.mask)
        return out, torch.arange(nodes.numel())

    def embed(
        self,
        history: TemporalGraph,
        nodes: Tensor,
        side: int,
        times: Tensor,
        memory: MemoryView | None = None,
        layer: int | None = None,
    ) -> Tensor:
        """h^layer (default h^L) of `nodes`, all on `side`, at `times`, from `history`'s events strictly
        before each time; a user's h^L is fused with its profile when the model has profiles."""
        layer = len(self.layers) if layer is None else layer
        rows, index = self._rows(history, nodes, side, times, memory, layer)
        if side == USER and layer == len(self.layers) and self.profiles is not None:
            return self.profiles(nodes, rows[index])
        return rows[index]

    def bpr_loss(
        self,
        history: TemporalGraph,
        users: Tensor,
        items: Tensor,
        ts: Tensor,
        negatives: Tensor,
        memory: MemoryView | None,
    ) -> Tensor:
        user = self.embed(history, users, USER, ts, memory)
        positive, negative = self.embed(history, torch.cat([items, negatives]), ITEM, ts.repeat(2), memory).chunk(2)
        return -F.logsigmoid((user * positive).sum(-1) - (user * negative).sum(-1)).mean()

    def forward(self, users: Tensor, items: Tensor, ts: Tensor, negatives: Tensor) -> Tensor:
        """The BPR loss of the next chronological batch of training events; the memory moves on as
        TGN trains it (this batch's messages are applied at the start of the next)."""
        if self.training_history is None:
            raise RuntimeError("train_on(history) first: forward trains on a history's event stream")
        memory = self.memory_view()
        loss = self.bpr_loss(self.training_history, users, items, ts, negatives, memory)
        self.observe(memory, users, items, ts)
        return loss

    def reset_memory(self) -> None:
        if self.memory is not None:
            self.memory.reset()

    def memory_view(self) -> MemoryView | None:
        return None if self.memory is None else self.memory.view(self.time)

    def observe(self, view: MemoryView | None, users: Tensor, items: Tensor, ts: Tensor) -> None:
        """After a batch has been used: keep its memory and queue its events for the next one."""
        if self.memory is not None and view is not None:
            self.memory.commit(view, users, items, ts)

    def stream(self, graph: TemporalGraph, batch_size: int) -> Iterator[tuple[int, int, MemoryView | None]]:
        """Chronological batches `[start, end)` of `graph`'s events, each with the memory just before it.

        Starts from an empty memory; a batch is observed when the consumer asks for the next.
        """
        self.reset_memory()
        for start, end in chronological_batches(graph.ts, batch_size):
            view = self.memory_view()
            yield start, end, view
            self.observe(view, graph.users[start:end], graph.items[start:end], graph.ts[start:end])

    @torch.no_grad()
    def embed_all(
        self, history: TemporalGraph, side: int, time: int, memory: MemoryView | None, chunk: int = 4096
    ) -> Tensor:
        """Every node of `side` at one time, in chunks to bound the neighbor tensors."""
        n = self.n_users if side == USER else self.n_items
        parts = []
        for start in range(0, n, chunk):
            nodes = torch.arange(start, min(start + chunk, n))
            parts.append(self.embed(history, nodes, side, torch.full_like(nodes, time), memory))
        return torch.cat(parts)

    @torch.no_grad()
    def embeddings_at(self, history: TemporalGraph, time: int, batch_size: int) -> tuple[Tensor, Tensor]:
        """All user and item embeddings at `time`, the memory replayed over all of `history`."""
        if history.ts.numel() and int(history.ts.max()) >= time:
            raise ValueError(f"history has events at or after the query time {time}")
        for _ in self.stream(history, batch_size):
            pass
        memory = self.memory_view()
        return self.embed_all(history, USER, time, memory), self.embed_all(history, ITEM, time, memory)
