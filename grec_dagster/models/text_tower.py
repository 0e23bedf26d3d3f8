"""The text tower: sentence embeddings of items (and LLM user profiles) aligned with interactions.

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

With `encoder="lora"` the x_i are not fixed: they come from MiniLM with peft LoRA adapters on its
attention (`LoraTextEncoder`), trained with the heads while the base weights stay frozen. A step
encodes the batch's distinct items with gradient. The history means average the vectors of the
last refresh instead (`refresh_item_text`: every item re-encoded without gradient, at the start of
each epoch and before embedding): a mean spans a user's whole history, and encoding those items
with gradient would run the encoder over most of the catalog at every step. Item vectors are
always encoded from text, so cold items get theirs from the adapted encoder too. On a CPU this
costs: one epoch on MovieLens-100K took 255 s against 1.6 s frozen (batch 2048, 2 shared cores),
as a step runs MiniLM forward and backward over its distinct items (most of that catalog).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field
from torch import Tensor, nn

if TYPE_CHECKING:
    from grec_dagster.llm.lora_encoder import LoraTextEncoder


class TextTowerParams(BaseModel):
    dim: int = Field(default=64, description="Size of the user and item vectors.")
    hidden: int = Field(default=256, description="Hidden width of the user and the item MLP.")
    negatives: int = Field(default=4, description="Uniform negatives per positive in the BPR loss.")
    reg: float = Field(default=1e-4, description="L2 weight on the batch's user and item vectors.")
    dropout: float = Field(default=0.1, description="Dropout on the hidden layer of both MLPs in training.")
    encoder: Literal["frozen", "lora"] = Field(
        default="frozen",
        description="Item texts as fixed MiniLM vectors (`frozen`), or through MiniLM with LoRA adapters trained "
        "with the heads (`lora`: needs the texts; each step runs MiniLM forward and backward on the batch's items).",
    )
    lora_rank: int = Field(default=8, ge=1, description="Rank r of the LoRA adapters (`lora` only).")
    lora_alpha: float = Field(default=16.0, gt=0, description="LoRA updates are scaled by lora_alpha / lora_rank.")
    lora_dropout: float = Field(default=0.1, ge=0, lt=1, description="Dropout on the adapters' input in training.")
    lora_targets: list[str] = Field(
        default_factory=lambda: ["query", "value"], description="MiniLM modules that get adapters."
    )


def _mlp(d_in: int, params: TextTowerParams) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(d_in, params.hidden), nn.GELU(), nn.Dropout(params.dropout), nn.Linear(params.hidden, params.dim)
    )


class TextTower(nn.Module):
    def __init__(
        self,
        item_text: Tensor,
        profile_text: Tensor | None,
        n_users: int,
        history: Tensor,
        params: TextTowerParams,
        texts: list[str] | None = None,
    ):
        """`item_text` [n_items, d_text], `profile_text` [n_users, d_profile] (zero rows: no profile)
        or None, both in the graph's dense id order; `history`: sorted `user * n_items + item` keys.
        With the `lora` encoder, `texts` are the items' texts (same order) and `item_text` their
        MiniLM vectors, which the adapted encoder reproduces until it trains."""
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
        self.text_encoder = _lora_encoder(texts, item_text, params) if params.encoder == "lora" else None
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

    def user_inputs(self, users: Tensor, leave_out: Tensor | None = None, with_profile: Tensor | None = None) -> Tensor:
        """[m_u || y_u || has_profile] of `users`; with `leave_out`, item leave_out[k] is dropped
        from user users[k]'s history mean where the history holds it; where `with_profile` is false,
        the profile is left out (zeros, has_profile 0), as for a user without one."""
        sums, counts = self.history_sum[users], self.history_count[users]
        if leave_out is not None and len(self.history_keys):
            probe = users * self.n_items + leave_out
            where = torch.searchsorted(self.history_keys, probe).clamp(max=len(self.history_keys) - 1)
            present = self.history_keys[where] == probe
            sums = sums - self.item_text[leave_out] * present.unsqueeze(1)
            counts = counts - present.long()
        parts = [sums / counts.clamp(min=1).unsqueeze(1)]
        if self.profile_text is not None:
            usable = self.has_profile[users] if with_profile is None else self.has_profile[users] & with_profile
            parts += [self.profile_text[users] * usable.unsqueeze(1), usable.float().unsqueeze(1)]
        return torch.cat(parts, 1)

    def refresh_item_text(self) -> None:
        """With the `lora` encoder: every item re-encoded as the adapters stand (no gradient, no
        dropout), and the history sums rebuilt from those vectors. Frozen texts need nothing."""
        if self.text_encoder is not None:
            self.item_text = self.text_encoder.encode_all()
            self.set_history(self.history_keys)

    def encode_items(self, text: Tensor) -> Tensor:
        """q for any item texts [n, d_text], including items the graph has never seen."""
        return self.item_mlp(text)

    def forward(self, users: Tensor, positives: Tensor, negatives: Tensor, with_profile: Tensor) -> Tensor:
        """The BPR loss of a batch (`negatives`: [batch] or [batch, k]), each positive left out of its
        user's mean, and the profile only where `with_profile` (the pair came after the profile cut)."""
        negatives = negatives.view(len(users), -1)
        p = self.user_mlp(self.user_inputs(users, leave_out=positives, with_profile=with_profile))
        items, rows = torch.unique(torch.cat([positives, negatives.flatten()]), return_inverse=True)
        text = self.item_text[items] if self.text_encoder is None else self.text_encoder(items)
        q = self.encode_items(text)[rows]  # each distinct item through the encoder and the MLP once
        q_pos, q_neg = q[: len(users)], q[len(users) :].view(*negatives.shape, -1)
        margin = (p * q_pos).sum(-1, keepdim=True) - (p.unsqueeze(1) * q_neg).sum(-1)
        l2 = (p.pow(2).sum() + q_pos.pow(2).sum() + q_neg.pow(2).sum() / negatives.shape[1]) / len(users)
        return -F.logsigmoid(margin).mean() + self.params.reg * l2

    @torch.no_grad()
    def embed_all(self, batch_size: int = 8192) -> tuple[Tensor, Tensor]:
        """User vectors from the current histories and item vectors, on the CPU (call in eval mode)."""
        self.refresh_item_text()
        device = self.item_text.device
        users = torch.arange(self.n_users, device=device)
        p = torch.cat([self.user_mlp(self.user_inputs(batch)) for batch in users.split(batch_size)])
        q = torch.cat([self.encode_items(batch) for batch in self.item_text.split(batch_size)])
        return p.cpu(), q.cpu()

    def trained_weights(self) -> dict[str, Tensor]:
        """What training changed (the heads and, with `lora`, the adapters), on the CPU: with the
        inputs and the packaged MiniLM they rebuild this tower (`load_trained_weights`)."""
        return {name: p.detach().cpu().clone() for name, p in self.named_parameters() if p.requires_grad}

    def load_trained_weights(self, weights: dict[str, Tensor]) -> None:
        expected = {name for name, p in self.named_parameters() if p.requires_grad}
        if set(weights) != expected:
            raise ValueError(
                f"weights for another tower: missing {expected - set(weights)}, extra {set(weights) - expected}"
            )
        self.load_state_dict(weights, strict=False)  # the frozen MiniLM weights are not in `weights`


def _lora_encoder(texts: list[str] | None, item_text: Tensor, params: TextTowerParams) -> LoraTextEncoder:
    from peft import LoraConfig  # peft (1.7 s to import) loads only for this encoder

    from grec_dagster.llm.lora_encoder import LoraTextEncoder

    if texts is None or len(texts) != len(item_text):
        given = "no" if texts is None else len(texts)
        raise ValueError(f"the lora encoder needs one text per item: {len(item_text)} items, {given} texts")
    adapters = LoraConfig(
        r=params.lora_rank,
        lora_alpha=params.lora_alpha,
        lora_dropout=params.lora_dropout,
        target_modules=params.lora_targets,
    )
    encoder = LoraTextEncoder(texts, adapters)
    if encoder.dim != item_text.shape[1]:
        raise ValueError(f"item_text has {item_text.shape[1]} columns, the lora encoder {encoder.dim}")
    return encoder
