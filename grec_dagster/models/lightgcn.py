"""LightGCN (He et al., SIGIR 2020): collaborative filtering by parameter-free propagation.

    E^{(0)} = [E_users; E_items]                        (the only parameters)
    E^{(l+1)} = A_hat E^{(l)}                           (A_hat: normalized adjacency)
    E = sum_{l=0..L} alpha_l E^{(l)},  alpha_l = 1/(L+1)
    score(u, i) = <e_u, e_i>

trained with BPR, -log sigmoid(score(u, i+) - score(u, i-)) averaged over the sampled
negatives i-, plus an L2 penalty on the layer-0 embeddings of the batch, as in the paper.

Every training step propagates over the whole training graph. A batch's exact L-hop neighbourhood
is no cheaper: positives are drawn in proportion to degree, so a batch reaches the popular items,
and on the 1M-interaction synthetic shop the items of one training user have 30K edges between
them on average (the whole graph has 1M), so two hops from a batch of 2048 cover the graph. So the epoch is kept linear in the data by taking few,
large steps (`LightGCNTraining`), not by sampling subgraphs, which would change the model; the
gradient reaches every node within L hops of the batch, so the table stays dense (AdamW).

Embedding at a later cut (fold-in): the same propagation over the graph of every pair known then
(train + valid at the test cut), with layer 0 as trained for nodes that have a training edge and
zero for the others, whose layer 0 never received a gradient. A node first met after training is
then the mean of its propagated neighbours, and a node with no edge at all is the zero vector (its
scores are all equal: the cold-start rule of `models/towers.py` takes over).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field
from torch import nn

from grec_dagster.graph.adjacency import propagate


class LightGCNParams(BaseModel):
    dim: int = Field(default=64, description="Embedding size.")
    layers: int = Field(default=2, description="Propagation layers.")
    reg_weight: float = Field(default=1e-3, description="L2 weight on the batch's layer-0 embeddings.")
    negatives: int = Field(default=4, description="Uniform negatives per positive in the BPR loss.")


class LightGCN(nn.Module):
    def __init__(self, n_users: int, n_items: int, params: LightGCNParams, adjacency: torch.Tensor):
        super().__init__()
        self.n_users, self.n_items, self.params = n_users, n_items, params
        self.embedding = nn.Embedding(n_users + n_items, params.dim)
        nn.init.normal_(self.embedding.weight, std=0.1)
        self.adjacency = adjacency

    def propagate(self, adjacency: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Final user and item embeddings over `adjacency` (default: the training graph): the mean of
        every layer's output, layer 0 zero for nodes without a training edge."""
        adjacency = self.adjacency if adjacency is None else adjacency
        trained = (self.adjacency.crow_indices().diff() > 0).unsqueeze(1)
        layer = self.embedding.weight * trained
        total = layer
        for _ in range(self.params.layers):
            layer = propagate(adjacency, layer)
            total = total + layer
        final = total / (self.params.layers + 1)
        return final[: self.n_users], final[self.n_users :]

    def forward(self, users: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        """The BPR loss of a batch, as the module docstring states it (`negatives`: [batch] or [batch, k])."""
        user_emb, item_emb = self.propagate()
        negatives = negatives.view(len(users), -1)
        u, p, n = user_emb[users], item_emb[positives], item_emb[negatives]
        margin = (u * p).sum(-1, keepdim=True) - (u.unsqueeze(1) * n).sum(-1)
        ranking = -F.logsigmoid(margin).mean()
        ego = self.embedding.weight
        l2 = (
            ego[users].pow(2).sum()
            + ego[positives + self.n_users].pow(2).sum()
            + ego[negatives + self.n_users].pow(2).sum() / negatives.shape[1]
        ) / len(users)
        return ranking + self.params.reg_weight * l2

    @torch.no_grad()
    def final_embeddings(self, adjacency: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.propagate(adjacency)
