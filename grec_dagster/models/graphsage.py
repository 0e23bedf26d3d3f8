"""GraphSAGE (Hamilton et al., NeurIPS 2017) as an inductive user-item recommender.

Users and items are the nodes of one bipartite graph (users 0..U-1, items U..U+I-1):

    h_v^{(0)} = P_{t(v)} x_v + s_v e_v            x_v: node features, P_user / P_item: projections
    h_v^{(l+1)} = W_1^{(l)} h_v^{(l)} + W_2^{(l)} mean_{u in N(v)} h_u^{(l)}       (SAGEConv, mean)
    score(u, i) = <h_u^{(L)}, h_i^{(L)}>

with a ReLU between layers (none after the last) and, in training, dropout on every layer's
input; users and items share the layer weights W. e_v is a learnable id embedding and
s_v in {0, 1} says whether to use it: 0 for nodes without an edge in the training graph,
whose e_v never receives a gradient, so such a node is embedded from its features and its
neighbors only. In training s_v ~ Bernoulli(1 - id_dropout) per node and batch, so the
layers learn to embed a node from features and neighbors alone, as they must for a node
first seen after training.

Trained with BPR, -log sigmoid(score(u, i+) - score(u, i-)) averaged over the sampled
negatives, on the seeds of a subgraph that `forward` samples around its share of a batch
(so DDP processes each sample their own), with the global torch RNG that `fit` seeds and
checkpoints. A batch's own positive edges stay in its subgraph, as they do in LightGCN's
propagation (dropping them, DGL's `exclude`, did not help on MovieLens). Evaluation runs
layer by layer over a whole graph with every neighbor (`embed_all`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field
from torch import Tensor, nn
from torch_geometric.nn import SAGEConv

from grec_dagster.graph.csr import CSR
from grec_dagster.graph.samplers import SampledSubgraph, sample_neighbors


class GraphSAGEParams(BaseModel):
    dim: int = Field(default=64, description="Embedding size of every layer.")
    fanouts: list[int] = Field(default=[10, 5], description="Neighbors sampled per node and hop; one layer per hop.")
    id_dropout: float = Field(default=0.1, description="Share of nodes whose id embedding a training batch drops.")
    dropout: float = Field(default=0.2, description="Dropout on every layer's input in training.")
    negatives: int = Field(default=1, description="Uniform negatives per positive in the BPR loss.")


def bpr_seeds(n_users: int, users: Tensor, positives: Tensor, negatives: Tensor) -> tuple[Tensor, Tensor]:
    """The distinct nodes a BPR batch embeds (items offset by `n_users`), on the CPU where the sampler
    runs, and each batch node's row among them (users, then positives, then negatives flattened)."""
    nodes = torch.cat([users, positives + n_users, negatives.flatten() + n_users])
    return torch.unique(nodes.cpu(), return_inverse=True)


class GraphSAGE(nn.Module):
    def __init__(self, user_features: Tensor, item_features: Tensor, train_graph: CSR, params: GraphSAGEParams):
        """`train_graph`: the undirected user-item CSR that training batches sample from."""
        super().__init__()
        self.n_users, self.n_items, self.params = len(user_features), len(item_features), params
        self.train_graph = train_graph
        self.register_buffer("user_features", user_features.float(), persistent=False)
        self.register_buffer("item_features", item_features.float(), persistent=False)
        nodes = torch.arange(self.n_users + self.n_items)
        self.register_buffer("has_id", train_graph.degree(nodes) > 0, persistent=False)
        self.user_projection = nn.Linear(user_features.shape[1], params.dim)
        self.item_projection = nn.Linear(item_features.shape[1], params.dim)
        # Sparse: a step's gradient, and `LazyAdamW`'s update, cover only the batch's sampled nodes.
        self.id_embedding = nn.Embedding(self.n_users + self.n_items, params.dim, sparse=True)
        nn.init.normal_(self.id_embedding.weight, std=0.1)
        self.convs = nn.ModuleList(SAGEConv(params.dim, params.dim) for _ in params.fanouts)

    def inputs(self, nodes: Tensor) -> Tensor:
        """h^{(0)} of `nodes`: projected features plus, where allowed, the id embedding."""
        is_user = nodes < self.n_users
        # h stays float32 where bf16 autocast runs the projections (index_put wants one dtype)
        h = torch.empty(len(nodes), self.params.dim, device=nodes.device)
        h[is_user] = self.user_projection(self.user_features[nodes[is_user]]).to(h.dtype)
        h[~is_user] = self.item_projection(self.item_features[nodes[~is_user] - self.n_users]).to(h.dtype)
        use_id = self.has_id[nodes]
        if self.training and self.params.id_dropout > 0:
            use_id = use_id & (torch.rand(len(nodes), device=nodes.device) >= self.params.id_dropout)
        return h + self.id_embedding(nodes) * use_id.unsqueeze(1)

    def _layer(self, index: int, h: Tensor, n_targets: int, edge_index: Tensor) -> Tensor:
        """Layer `index` for the first `n_targets` rows of `h` (a sample's seeds come first)."""
        h = F.dropout(h, self.params.dropout, self.training)
        out = self.convs[index]((h, h[:n_targets]), edge_index)
        return out if index == len(self.convs) - 1 else F.relu(out)

    def encode(self, sample: SampledSubgraph) -> Tensor:
        """Final embeddings of the seeds of a `sample_neighbors` subgraph with one hop per layer.

        Layer l computes only what the layers above it read (PyG's `trim_to_layer`): the
        nodes of hops 0..L-l-1, over the edges of hops 1..L-l.
        """
        device = self.id_embedding.weight.device
        h = self.inputs(sample.n_id.to(device))
        edge_index = sample.edge_index.to(device)
        depth = len(self.convs)
        for index in range(depth):
            n_targets = sum(sample.num_sampled_nodes[: depth - index])
            n_edges = sum(sample.num_sampled_edges[: depth - index])
            h = self._layer(index, h, n_targets, edge_index[:, :n_edges])
        return h

    def forward(self, users: Tensor, positives: Tensor, negatives: Tensor) -> Tensor:
        """The BPR loss of a batch (`negatives`: [batch] or [batch, k]), on a subgraph sampled around it."""
        negatives = negatives.view(len(users), -1)
        seeds, rows = bpr_seeds(self.n_users, users, positives, negatives)
        z = self.encode(sample_neighbors(self.train_graph, seeds, self.params.fanouts))[rows.to(users.device)]
        u, p, n = z[: len(users)], z[len(users) : 2 * len(users)], z[2 * len(users) :].view(*negatives.shape, -1)
        margin = (u * p).sum(-1, keepdim=True) - (u.unsqueeze(1) * n).sum(-1)
        return -F.logsigmoid(margin).mean()

    @torch.no_grad()
    def embed_all(self, graph: CSR, batch_size: int = 4096) -> tuple[Tensor, Tensor]:
        """User and item embeddings over `graph`, one layer at a time over every neighbor.

        Each layer is computed for all nodes before the next starts, so no neighborhood is
        expanded twice (encoding batches of seeds would redo shared neighborhoods per batch).
        """
        device = self.id_embedding.weight.device
        nodes = torch.arange(self.n_users + self.n_items)
        h = torch.cat([self.inputs(batch.to(device)) for batch in nodes.split(batch_size)])
        for index in range(len(self.convs)):
            parts = []
            for batch in nodes.split(batch_size):
                hop = sample_neighbors(graph, batch, [-1])
                parts.append(self._layer(index, h[hop.n_id.to(device)], len(batch), hop.edge_index.to(device)))
            h = torch.cat(parts)
        return h[: self.n_users].cpu(), h[self.n_users :].cpu()
