"""Attention that keeps a prompt prefix every row shares as one row, instead of a copy per row.

Every profile prompt starts with the same system prompt and instructions (184 of the ~370 prompt
tokens with `profile_v2`). Before, those keys and values were copied into every row's cache in
float32, and half of a batch-32 decode step went to PyTorch's fused attention reading them back.
Now, at a decode step, the prefix is scored for all rows' queries in one matmul against its single
copy, each row's own positions against its own cache, and one softmax spans both parts (their
maxima and sums are merged, as in cascade attention), so the result equals attention over the
concatenated keys. The matmuls run in the model's dtype (bf16 on CPU), the softmax in float32 as
in transformers' eager attention, and grouped-query heads need no `repeat_kv` copy: the query
heads that share a key/value head are stacked into one matmul against it. A prompt (many queries
per row) instead uses PyTorch's fused kernel over the prefix copied in front of its keys, which
is faster there. `benchmarks/bench_profiles.py` measures the whole generation.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.nn.functional import scaled_dot_product_attention
from transformers import AttentionInterface, AttentionMaskInterface, Cache
from transformers.cache_utils import DynamicLayer
from transformers.masking_utils import eager_mask

SHARED_PREFIX_ATTENTION = "grec_shared_prefix"
"""The attention implementation to set on a model that is called with `shared_prefix=<Cache>`."""


def shared_prefix_attention(
    module: torch.nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    scaling: float | None = None,
    shared_prefix: Cache | None = None,
    **kwargs: Any,
) -> tuple[Tensor, None]:
    """Attention of `query` [batch, heads, q, dim] over the row's own `key`/`value` [batch, kv_heads, kv, dim]
    (under the additive `attention_mask` [batch, 1, q, kv]) and, if given, over the one-row
    `shared_prefix` cache's keys and values of this layer, which precede every row's own positions."""
    prefix = None if shared_prefix is None else shared_prefix.layers[module.layer_idx]
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    if query.shape[2] == 1:
        output = _decode_step(query, key, value, attention_mask, scale, prefix)
    else:
        output = _prompt(query, key, value, attention_mask, scale, prefix)
    return output.transpose(1, 2).contiguous(), None  # [batch, q, heads, dim], as transformers expects


def _prompt(
    query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None, scale: float, prefix: DynamicLayer | None
) -> Tensor:
    """Many queries per row (a prompt): PyTorch's fused attention over the prefix copied in front of each
    row's keys -- one copy per prompt chunk (`decoding.PROMPT_ROWS` rows), small next to its compute."""
    if prefix is not None:
        batch = query.shape[0]
        key = torch.cat([prefix.keys.expand(batch, -1, -1, -1), key], dim=2)
        value = torch.cat([prefix.values.expand(batch, -1, -1, -1), value], dim=2)
        if mask is not None:
            mask = torch.cat([mask.new_zeros((*mask.shape[:-1], prefix.keys.shape[2])), mask], dim=-1)
    return scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scale, enable_gqa=True)


def _decode_step(
    query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None, scale: float, prefix: DynamicLayer | None
) -> Tensor:
    """One query per row, as plain matmuls, keys multiplied against the queries (the faster orientation
    for bf16 cache views on CPU). The softmax is normalized after the value matmuls, so each part's
    exponentials are taken once."""
    batch, heads, _, dim = query.shape
    kv_heads = key.shape[1]
    group = heads // kv_heads
    grouped = query.reshape(batch, kv_heads, group, dim)  # the query heads that share a kv head
    scores = (torch.matmul(key, grouped.mT).float() * scale).mT.contiguous()  # [batch, kv_heads, group, kv]
    if mask is not None:
        scores = scores + mask
    peak = scores.amax(dim=-1, keepdim=True)
    if prefix is not None:
        # every row's queries against the one prefix: [kv_heads, batch * group, prefix]
        all_rows = grouped.transpose(0, 1).reshape(kv_heads, batch * group, dim)
        prefix_scores = (torch.matmul(prefix.keys[0], all_rows.mT).float() * scale).mT.contiguous()
        prefix_peak = prefix_scores.amax(dim=-1, keepdim=True)
        peak = torch.maximum(peak, _by_row(prefix_peak, batch))
    weights = torch.exp(scores - peak)
    output = torch.matmul(weights.to(value.dtype), value).float()  # [batch, kv_heads, group, dim]
    total = weights.sum(dim=-1, keepdim=True)
    if prefix is not None:
        prefix_weights = torch.exp(prefix_scores - _by_kv_head(peak))
        output = output + _by_row(torch.matmul(prefix_weights.to(value.dtype), prefix.values[0]).float(), batch)
        total = total + _by_row(prefix_weights.sum(dim=-1, keepdim=True), batch)
    return (output / total).to(value.dtype).reshape(batch, heads, 1, dim)


def _by_row(per_kv_head: Tensor, batch: int) -> Tensor:
    """[kv_heads, batch * group, n] -> [batch, kv_heads, group, n]."""
    kv_heads, rows, n = per_kv_head.shape
    return per_kv_head.view(kv_heads, batch, rows // batch, n).transpose(0, 1)


def _by_kv_head(per_row: Tensor) -> Tensor:
    """[batch, kv_heads, group, n] -> [kv_heads, batch * group, n]."""
    batch, kv_heads, group, n = per_row.shape
    return per_row.transpose(0, 1).reshape(kv_heads, batch * group, n)


AttentionInterface.register(SHARED_PREFIX_ATTENTION, shared_prefix_attention)
AttentionMaskInterface.register(SHARED_PREFIX_ATTENTION, eager_mask)
