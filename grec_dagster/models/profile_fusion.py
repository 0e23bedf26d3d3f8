r"""DynLLM-style fusion of LLM profile facets into a user's temporal embedding (Zhao et al., 2024).

An LLM writes several facets of a user (crowd segment, interests, categories, brands, a summary)
and a text encoder embeds each one; some facets say little about a given user (a movie log has
no brands), so each user keeps only the facets that score best before attending over them.

For user u with facet embeddings x_{u,1..F} (d_text each) and temporal embedding h_u in R^d:

1. Per-facet projection, one linear map per facet:
       t_{u,f} = W_f x_{u,f} + b_f
2. Distillation, a learned top-k over facet tokens (the gPool form of Gao & Ji, 2019), with a
   learnable scoring vector p in R^d:
       s_{u,f} = <t_{u,f}, p> / ||p||,     K_u = the k facets of largest s_{u,f}
       z_{u,j} = sigmoid(s_{u,j}) t_{u,j}   for j in K_u
   The hard top-k keeps exactly k tokens; the sigmoid gate puts p on the gradient path, so
   the scores learn which facets to keep (a kept facet scored down is swapped out once another
   outscores it).
3. Multi-head attention over the kept tokens, the temporal embedding as the query:
       a_u = W_o MultiHead(q = W_q h_u, K = W_k z_u, V = W_v z_u)
4. Gated residual merge:
       g_u = sigmoid(W_g [h_u || a_u]),     h'_u = h_u + g_u * a_u
   W_o starts at zero, so training starts from the plain temporal embedding.

A user without a profile (mask false) skips all of it: h'_u = h_u exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from grec_dagster.storage import load_tensors, tensor_fingerprint


@dataclass(frozen=True)
class ProfileFacets:
    """`facets` [n_users, n_facets, d_text] float, rows in the graph's dense user order;
    `mask` [n_users] bool marks users that have a profile."""

    facets: Tensor
    mask: Tensor

    def __post_init__(self) -> None:
        if self.facets.dim() != 3 or self.mask.shape != self.facets.shape[:1]:
            raise ValueError(f"facets {tuple(self.facets.shape)} and mask {tuple(self.mask.shape)} do not match")

    @classmethod
    def load(cls, path: Path) -> ProfileFacets:
        tensors, _ = load_tensors(path)
        return cls(tensors["facets"].float(), tensors["mask"].bool())

    def fingerprint(self) -> str:
        return tensor_fingerprint(self.facets, self.mask)


class ProfileFusion(nn.Module):
    """The four steps of the module docstring; the facets are buffers, indexed by user id."""

    def __init__(self, profiles: ProfileFacets, dim: int, heads: int, top_k: int, dropout: float):
        super().__init__()
        n_facets, text_dim = profiles.facets.shape[1:]
        if not 1 <= top_k <= n_facets:
            raise ValueError(f"top_k must be in 1..{n_facets} (the facets), got {top_k}")
        self.top_k = top_k
        self.register_buffer("facets", profiles.facets.float(), persistent=False)
        self.register_buffer("mask", profiles.mask.bool(), persistent=False)
        self.project = nn.ModuleList(nn.Linear(text_dim, dim) for _ in range(n_facets))
        self.score = nn.Parameter(torch.randn(dim) / dim**0.5)
        self.attend = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        nn.init.zeros_(self.attend.out_proj.weight)
        nn.init.zeros_(self.attend.out_proj.bias)
        self.gate = nn.Linear(2 * dim, dim)

    def tokens(self, users: Tensor) -> Tensor:
        """t_{u,f}: [len(users), n_facets, dim]."""
        facets = self.facets[users]
        return torch.stack([project(facets[:, f]) for f, project in enumerate(self.project)], 1)

    def distill(self, tokens: Tensor) -> Tensor:
        """z: the k tokens of largest score, gated, [B, k, dim] (in descending score)."""
        scores = tokens @ self.score / self.score.norm()
        top = scores.topk(self.top_k, dim=1)
        kept = tokens.gather(1, top.indices.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
        return kept * torch.sigmoid(top.values).unsqueeze(-1)

    def forward(self, users: Tensor, h: Tensor) -> Tensor:
        """h' for `users` [B] given their temporal embeddings h [B, dim]."""
        rows = torch.nonzero(self.mask[users]).squeeze(1)
        if not rows.numel():
            return h
        own = h[rows]
        kept = self.distill(self.tokens(users[rows]))
        attended = self.attend(own.unsqueeze(1), kept, kept, need_weights=False)[0].squeeze(1)
        gate = torch.sigmoid(self.gate(torch.cat([own, attended], -1)))
        return h.index_put((rows,), own + gate * attended)
