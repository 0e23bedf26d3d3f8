"""Shared-prefix attention against PyTorch's own attention over the concatenated keys."""

import pytest
import torch
from torch import nn
from torch.nn.functional import scaled_dot_product_attention

from grec_dagster.llm.kv_cache import reserved_cache
from grec_dagster.llm.prefix_attention import shared_prefix_attention

BATCH, HEADS, KV_HEADS, DIM, PREFIX = 3, 6, 2, 8, 5


def attention_layer(index: int) -> nn.Module:
    layer = nn.Module()
    layer.layer_idx = index
    return layer


def expected(query, keys, values, allowed):
    """Reference: every query head against its key/value head (repeated), masked where not `allowed`."""
    group = HEADS // KV_HEADS
    output = scaled_dot_product_attention(
        query, keys.repeat_interleave(group, dim=1), values.repeat_interleave(group, dim=1), attn_mask=allowed
    )
    return output.transpose(1, 2)


def additive(allowed: torch.Tensor) -> torch.Tensor:
    return torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)


def rows(q_length: int, own: int, padded_row: int, padding: int):
    """Random queries, keys and values for `own` positions per row; causal over the last `q_length`
    positions, with `padded_row` left-padded by `padding` positions."""
    query = torch.randn(BATCH, HEADS, q_length, DIM)
    keys, values = torch.randn(BATCH, KV_HEADS, own, DIM), torch.randn(BATCH, KV_HEADS, own, DIM)
    allowed = torch.ones(own, own, dtype=torch.bool).tril()[-q_length:].expand(BATCH, 1, q_length, own).clone()
    allowed[padded_row, :, :, :padding] = False
    return query, keys, values, allowed


@pytest.mark.parametrize("q_length", [1, 4], ids=["decode step", "prompt"])
def test_rows_attend_to_the_shared_prefix_as_if_it_were_in_their_own_cache(q_length: int) -> None:
    torch.manual_seed(0)
    query, keys, values, allowed = rows(q_length, own=7, padded_row=1, padding=2)
    prefix_keys, prefix_values = torch.randn(1, KV_HEADS, PREFIX, DIM), torch.randn(1, KV_HEADS, PREFIX, DIM)
    prefix = reserved_cache(num_layers=2, capacity=PREFIX)
    prefix.update(prefix_keys, prefix_values, layer_idx=1)

    output, _ = shared_prefix_attention(
        attention_layer(1), query, keys, values, additive(allowed), shared_prefix=prefix
    )

    all_keys = torch.cat([prefix_keys.expand(BATCH, -1, -1, -1), keys], dim=2)
    all_values = torch.cat([prefix_values.expand(BATCH, -1, -1, -1), values], dim=2)
    sees_prefix = torch.ones(BATCH, 1, q_length, PREFIX, dtype=torch.bool)
    reference = expected(query, all_keys, all_values, torch.cat([sees_prefix, allowed], dim=-1))
    torch.testing.assert_close(output, reference)


@pytest.mark.parametrize("q_length", [1, 6], ids=["decode step", "prompt"])
def test_without_a_prefix_it_is_plain_masked_attention_and_fully_masked_queries_stay_finite(q_length: int) -> None:
    torch.manual_seed(1)
    # row 2's first three positions are padding: in a prompt, its first queries see nothing
    query, keys, values, allowed = rows(q_length, own=6, padded_row=2, padding=3)

    output, _ = shared_prefix_attention(attention_layer(0), query, keys, values, additive(allowed))

    assert torch.isfinite(output).all()
    seen = allowed.any(-1).squeeze(1)  # [batch, q]: queries that see at least one key
    torch.testing.assert_close(output[seen], expected(query, keys, values, allowed)[seen])
