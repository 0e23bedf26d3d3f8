"""SASRec (Kang & McAuley, ICDM 2018): the next item from causal self-attention over a user's
most recent items.

    x_t = E[s_t] * sqrt(d) + P[t]             s: the user's last max_len items in time order,
                                              left-padded; E[PAD] = 0; P: learned positions
    h   = blocks(dropout(x)), each pre-norm:  h + Attn(LN(h)), then h + FFN(LN(h))
    F_t = LN(h_t)                             the user after s_1 .. s_t
    score(t, i) = <F_t, E[i]>                 E is both the input and the output table

Attention is causal and skips padding: position t attends to itself and to the real positions
before it, so a real position never reads padding (its output depends only on the real items)
and a padded one, which only reads itself, has a softmax row that is never empty.

Training is the paper's binary cross-entropy with one uniformly sampled negative n_t per
position,

    loss = sum over real positions t of [-log sigma(score(t, s_{t+1})) - log sigma(-score(t, n_t))]
           / (rows * max_len),

a mean over rows (of each row's sum over max_len), so the loop's DDP shards add up exactly.
It is the per-position mean times the batch's share of real positions: Adam's step ignores a
constant loss scale, and that share varies little between shuffled batches. A user's vector at a cut is F at the last
position of the items before the cut; a user without any is the zero vector.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field
from torch import Tensor, nn

from grec_dagster.graph.interactions import InteractionGraph

PAD = 0
"""The padding token; item i is token i + 1."""


class SASRecParams(BaseModel):
    dim: int = Field(default=64, description="Embedding and hidden size.")
    blocks: int = Field(default=2, description="Self-attention blocks.")
    heads: int = Field(default=1, description="Attention heads per block (dim must divide by it).")
    max_len: int = Field(default=50, description="Most recent items of a user the model reads.")
    dropout: float = Field(default=0.2, description="Dropout on the embeddings, attention weights and block outputs.")


def _user_sequences(graph: InteractionGraph, splits: tuple[int, ...]) -> tuple[Tensor, Tensor, Tensor]:
    """The events of `splits` grouped by user, each user's in time order (events at one time stay in
    the graph's order): (users, tokens, from_end), from_end 0 at a user's last event."""
    users, items, _ = graph.edges(*splits)
    order = torch.argsort(users, stable=True)
    users, tokens = users[order], items[order] + 1
    ends = torch.cumsum(torch.bincount(users, minlength=graph.n_users), 0)
    return users, tokens, ends[users] - 1 - torch.arange(len(users))


def recent_items(graph: InteractionGraph, splits: tuple[int, ...], length: int) -> Tensor:
    """[n_users, length] tokens: each user's last `length` events of `splits`, left-padded with PAD."""
    users, tokens, from_end = _user_sequences(graph, splits)
    kept = from_end < length
    recent = torch.full((graph.n_users, length), PAD, dtype=torch.long)
    recent[users[kept], length - 1 - from_end[kept]] = tokens[kept]
    return recent


def next_item_windows(graph: InteractionGraph, splits: tuple[int, ...], length: int) -> tuple[Tensor, Tensor, Tensor]:
    """Every next-item step of every user's events of `splits`, once: (users [rows], inputs and
    targets [rows, length] tokens, left-padded). A user's steps are cut into windows of `length`
    from the last one back, so the newest window is its last length + 1 events shifted by one."""
    users, tokens, from_end = _user_sequences(graph, splits)
    step = torch.cat([torch.zeros(1, dtype=torch.bool), users[1:] == users[:-1]])  # has an earlier event of its user
    window, column = from_end[step] // length, length - 1 - from_end[step] % length
    step_users = users[step]
    windows = torch.zeros(graph.n_users, dtype=torch.long).scatter_reduce(0, step_users, window + 1, "amax")
    row = (torch.cumsum(windows, 0) - windows)[step_users] + window
    inputs = torch.full((int(windows.sum()), length), PAD, dtype=torch.long)
    targets = inputs.clone()
    inputs[row, column] = tokens[torch.nonzero(step).squeeze(1) - 1]
    targets[row, column] = tokens[step]
    return torch.repeat_interleave(torch.arange(graph.n_users), windows), inputs, targets


def blocked_attention(real: Tensor) -> Tensor:
    """[batch, L, L], True where query t may not read key j: j after t, or j padding (unless j = t)."""
    length = real.shape[1]
    later = torch.ones(length, length, dtype=torch.bool, device=real.device).triu(1)
    itself = torch.eye(length, dtype=torch.bool, device=real.device)
    return (later | ~real.unsqueeze(1)) & ~itself


class CausalSelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        if dim % heads:
            raise ValueError(f"SASRec dim {dim} does not divide into {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, blocked: Tensor) -> Tensor:
        batch, length, dim = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(dim // self.heads)
        weights = self.dropout(scores.masked_fill(blocked.unsqueeze(1), float("-inf")).softmax(-1))
        return self.out((weights @ v).transpose(1, 2).reshape(batch, length, dim))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.attention_norm = nn.LayerNorm(dim)
        self.attention = CausalSelfAttention(dim, heads, dropout)
        self.feed_forward_norm = nn.LayerNorm(dim)
        self.feed_forward = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(dim, dim))
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: Tensor, blocked: Tensor) -> Tensor:
        h = h + self.dropout(self.attention(self.attention_norm(h), blocked))
        return h + self.dropout(self.feed_forward(self.feed_forward_norm(h)))


def _small_init(module: nn.Module) -> None:
    """N(0, 0.02) weights and zero biases, as RecBole's SASRec: with torch's N(0, 1) embeddings the
    first scores are ~N(0, 64) at dim 64, and the loss starts far out on the softplus."""
    if isinstance(module, nn.Embedding | nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Embedding) and module.padding_idx is not None:
        module.weight.data[module.padding_idx] = 0.0
    if isinstance(module, nn.Linear):
        nn.init.zeros_(module.bias)


class SASRec(nn.Module):
    def __init__(self, n_items: int, params: SASRecParams):
        super().__init__()
        self.params = params
        self.item_embedding = nn.Embedding(n_items + 1, params.dim, padding_idx=PAD)
        self.position_embedding = nn.Embedding(params.max_len, params.dim)
        self.dropout = nn.Dropout(params.dropout)
        self.blocks = nn.ModuleList(Block(params.dim, params.heads, params.dropout) for _ in range(params.blocks))
        self.final_norm = nn.LayerNorm(params.dim)
        self.apply(_small_init)

    def states(self, tokens: Tensor) -> Tensor:
        """F [batch, L, dim] for left-padded `tokens` [batch, L], L <= max_len."""
        real = tokens != PAD
        positions = self.position_embedding.weight[-tokens.shape[1] :]
        x = self.item_embedding(tokens) * math.sqrt(self.params.dim) + positions
        h = self.dropout(x) * real.unsqueeze(-1)
        blocked = blocked_attention(real)
        for block in self.blocks:
            h = block(h, blocked)
        return self.final_norm(h)

    def forward(self, tokens: Tensor, targets: Tensor, negatives: Tensor) -> Tensor:
        """The BCE loss of the module docstring; `targets` and `negatives` are tokens shaped like `tokens`."""
        states = self.states(tokens)
        positive = (states * self.item_embedding(targets)).sum(-1)
        negative = (states * self.item_embedding(negatives)).sum(-1)
        counted = (tokens != PAD) & (targets != PAD)
        losses = F.softplus(-positive) + F.softplus(negative)  # -log sigma(p) - log sigma(-n)
        return (losses * counted).sum() / tokens.numel()

    @torch.no_grad()
    def user_vectors(self, tokens: Tensor, batch_size: int = 1024) -> Tensor:
        """[rows, dim] on the CPU: F at the last position of each row of `tokens` (run on the model's
        device); zero for a row of padding only."""
        device = self.item_embedding.weight.device
        parts = [
            self.states(tokens[start : start + batch_size].to(device))[:, -1].cpu()
            for start in range(0, len(tokens), batch_size)
        ]
        return torch.cat(parts) * (tokens[:, -1] != PAD).unsqueeze(1)

    @torch.no_grad()
    def item_vectors(self) -> Tensor:
        """[n_items, dim] on the CPU: the item table without the padding row (a copy, not a view of the weights)."""
        return self.item_embedding.weight[1:].cpu().clone()
