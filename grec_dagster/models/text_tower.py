"""The text tower: frozen sentence embeddings of items (and LLM user profiles) aligned with interactions.

Inputs are frozen, unit-norm text embeddings (all-MiniLM-L6-v2, d_text = 384): x_i for each
item (its title, genres, ...), and optionally y_u for each user (their LLM-written profile; a
zero row means no profile). With H_u the user's history (distinct pairs of the given splits):

    q_i = MLP_item(x_i)
    m_u = (1 / |H_u|) sum_{j in H_u} x_j                 (0 when H_u is empty)
    p_u = MLP_user([m_u || y_u || 1[u has a profile]])    (just MLP_user(m_u) without profiles)
    score(u, i) = <p_u, q_i>

with MLP(z) = W_2 Dropout(GELU(W_1 z + b_1)) + b_2. There is no id embedding: an item is scored
from its text alone, so items never seen in training (cold items) rank as well as their text
allows, and a user is embedded from the texts of their history and their profile.

Trained with BPR, -log sigmoid(score(u, i+) - score(u, i-)) averaged over the sampled negatives,
plus reg * (||p_u||^2 + ||q_{i+}||^2 + mean ||q_{i-}||^2) per triple. In training the positive
is left out of its user's history mean (m_u over H_u minus {i+}), as it will be missing when
that user is ranked later: otherwise the tower learns to match an item with itself.
History sums are precomputed with one `index_add_` over the pairs (`set_history`), so a batch
needs no loop over users.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field
from torch import Tensor, nn


class TextTowerParams(BaseModel):
    dim: int = Field(default=64, description="Size of the user and item vectors.")
    hidden: int = Field(default=256, description="Hidden width of the user and the item MLP.")
    negatives: int = Field(default=4, description="Uniform negatives per positive in the BPR loss.")
    reg: float = Field(default=1e-4, description="L2 weight on the batch's user and item vectors.")
    dropout: float = Field(default=0.1, description="Dropout on the hidden layer of both MLPs in training.")


def _mlp(d_in: int, params: TextTowerParams) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(d_in, params.hidden), nn.GELU(), nn.Dropout(params.dropout), nn.Linear(params.hidden, params.dim)
    )


class TextTower(nn.Module):
    def __init__(
        self, item_text: Tensor, profile_text: Tensor | None, n_users: int, history: Tensor, params: TextTowerParams
    ):
        """`item_text` [n_items, d_text], `profile_text` [n_users, d_profile] (zero rows: no profile)
        or None, both in the graph's dense id order; `history`: sorted `user * n_items + item` keys."""
        super().__init__()
        if profile_text is not None and len(profile_text) != n_users:
            raise ValueError(f"profile_text has {len(profile_text)} rows for {n_users} users")
        self.n_users, self.n_items, self.params = n_users, len(item_text), params
        self.register_buffer("item_text", item_text.float(), persistent=False)
        profiled = profile_text is not None
        self.register_buffer("profile_text", profile_text.float() if profiled else None, persistent=False)
        self.register_buffer("has_profile", profile_text.abs().sum(1) > 0 if profiled else None, persistent=False)
        user_in = item_text.shape[1] + (profile_text.shape[1] + 1 if profiled else 0)
        self.item_mlp = _mlp(item_text.shape[1], params)
        self.user_mlp = _mlp(user_in, params)
        self.register_buffer("history_keys", torch.empty(0, dtype=torch.long), persistent=False)
        self.register_buffer("history_sum", torch.empty(0), persistent=False)
        self.register_buffer("history_count", torch.empty(0, dtype=torch.long), persistent=False)
        self.set_history(history)

    def set_history(self, keys: Tensor) -> None:
        """Make `keys` (sorted distinct `user * n_items + item`) the histories users are embedded from."""
        device = self.item_text.device
        keys = keys.to(device)
        users, items = keys // self.n_items, keys % self.n_items
        sums = torch.zeros(self.n_users, self.item_text.shape[1], device=device)
        self.history_keys = keys
        self.history_sum = sums.index_add_(0, users, self.item_text[items])
        self.history_count = torch.bincount(users, minlength=self.n_users)

    def user_inputs(self, users: Tensor, leave_out: Tensor | None = None) -> Tensor:
        """[m_u || y_u || has_profile] of `users`; with `leave_out`, item leave_out[k] is dropped
        from user users[k]'s history mean where the history holds it."""
        sums, counts = self.history_sum[users], self.history_count[users]
        if leave_out is not None and len(self.history_keys):
            probe = users * self.n_items + leave_out
            where = torch.searchsorted(self.history_keys, probe).clamp(max=len(self.history_keys) - 1)
            present = self.history_keys[where] == probe
            sums = sums - self.item_text[leave_out] * present.unsqueeze(1)
            counts = counts - present.long()
        parts = [sums / counts.clamp(min=1).unsqueeze(1)]
        if self.profile_text is not None:
            parts += [self.profile_text[users], self.has_profile[users].float().unsqueeze(1)]
        return torch.cat(parts, 1)

    def encode_items(self, text: Tensor) -> Tensor:
        """q for any item texts [n, d_text], including items the graph has never seen."""
        return self.item_mlp(text)

    def forward(self, users: Tensor, positives: Tensor, negatives: Tensor) -> Tensor:
        """The BPR loss of a batch (`negatives`: [batch] or [batch, k]), each positive left out of its user's mean."""
        negatives = negatives.view(len(users), -1)
        p = self.user_mlp(self.user_inputs(users, leave_out=positives))
        items, rows = torch.unique(torch.cat([positives, negatives.flatten()]), return_inverse=True)
        q = self.encode_items(self.item_text[items])[rows]  # each distinct item through the MLP once
        q_pos, q_neg = q[: len(users)], q[len(users) :].view(*negatives.shape, -1)
        margin = (p * q_pos).sum(-1, keepdim=True) - (p.unsqueeze(1) * q_neg).sum(-1)
        l2 = (p.pow(2).sum() + q_pos.pow(2).sum() + q_neg.pow(2).sum() / negatives.shape[1]) / len(users)
        return -F.logsigmoid(margin).mean() + self.params.reg * l2

    @torch.no_grad()
    def embed_all(self, batch_size: int = 8192) -> tuple[Tensor, Tensor]:
        """User vectors from the current histories and item vectors, on the CPU (call in eval mode)."""
        device = self.item_text.device
        users = torch.arange(self.n_users, device=device)
        p = torch.cat([self.user_mlp(self.user_inputs(batch)) for batch in users.split(batch_size)])
        q = torch.cat([self.encode_items(batch) for batch in self.item_text.split(batch_size)])
        return p.cpu(), q.cpu()
