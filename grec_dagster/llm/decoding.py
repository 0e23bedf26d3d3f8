"""Grammar-constrained batched decoding that lets finished rows leave the batch.

`model.generate` keeps every row of a batch until the longest one ends: with profiles of 60 to
112 tokens, a fifth of the decode steps computed rows that had already finished. Here a row that
emits a stop token is parked, and once a quarter of the batch is parked those rows are dropped
from the batch and the key/value cache (dropping copies the cache, so it is not done for every
row as it ends). Each row has its own xgrammar matcher, so whatever a row writes is a valid
prefix of the schema, and a repetition penalty on the row's own generated tokens keeps a small
model from looping.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import xgrammar as xgr
from torch import Tensor
from transformers import Cache, PreTrainedModel, RepetitionPenaltyLogitsProcessor

COMPACT_FRACTION = 0.25
"""Drop parked rows once they are this share of the batch."""


@dataclass(frozen=True)
class DecodingSettings:
    max_new_tokens: int
    stop_token_ids: frozenset[int]
    pad_token_id: int
    repetition_penalty: float
    temperature: float
    """0: greedy. Above 0: sampled from the global torch generator (seed it before calling)."""


def decode(
    model: PreTrainedModel,
    input_ids: Tensor,
    attention_mask: Tensor,
    cache: Cache,
    matchers: list[xgr.GrammarMatcher],
    settings: DecodingSettings,
) -> list[list[int]]:
    """New tokens per row (a row's stop token included), for left-padded `input_ids` [rows, width].

    `cache` may already hold the keys and values of the first positions (a prefix shared by all
    rows); `attention_mask` covers those positions too.
    """
    rows = list(range(len(input_ids)))
    """Which original row each batch position holds."""
    outputs: list[list[int]] = [[] for _ in rows]
    parked: set[int] = set()
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    cached = cache.get_seq_length()
    logits = _last_logits(model, input_ids[:, cached:], attention_mask, positions[:, cached:], cache)
    next_positions = positions[:, -1:] + 1
    generated = input_ids.new_empty((len(rows), 0))
    bitmask = xgr.allocate_token_bitmask(len(rows), logits.shape[-1])
    penalty = RepetitionPenaltyLogitsProcessor(settings.repetition_penalty)
    for _ in range(settings.max_new_tokens):
        if generated.shape[1] and settings.repetition_penalty != 1.0:
            logits = penalty(generated, logits)
        for position, row in enumerate(rows):
            if row in parked:
                bitmask[position].fill_(-1)  # anything: a parked row's token is never used
            else:
                matchers[row].fill_next_token_bitmask(bitmask, position)
        xgr.apply_token_bitmask_inplace(logits, bitmask[: len(rows)].to(logits.device))
        tokens = _choose(logits, settings.temperature)
        for row, token in zip(rows, tokens.tolist(), strict=True):
            if row in parked:
                continue
            outputs[row].append(token)
            matchers[row].accept_token(token)
            if token in settings.stop_token_ids or matchers[row].is_terminated():
                parked.add(row)
        if len(parked) == len(rows):
            break
        if len(parked) >= COMPACT_FRACTION * len(rows):
            keep = [position for position, row in enumerate(rows) if row not in parked]
            index = torch.tensor(keep, device=input_ids.device)
            cache.batch_select_indices(index)
            rows, parked = [rows[position] for position in keep], set()
            tokens, generated = tokens[index], generated[index]
            attention_mask, next_positions = attention_mask[index], next_positions[index]
        active = torch.tensor([row not in parked for row in rows], device=tokens.device)
        tokens = tokens.where(active, settings.pad_token_id)
        generated = torch.cat([generated, tokens[:, None]], dim=1)
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones((len(rows), 1))], dim=1)
        logits = _last_logits(model, tokens[:, None], attention_mask, next_positions, cache)
        next_positions = next_positions + 1
    return outputs


def _last_logits(
    model: PreTrainedModel, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor, cache: Cache
) -> Tensor:
    output = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    return output.logits[:, -1].float()


def _choose(logits: Tensor, temperature: float) -> Tensor:
    if temperature == 0:
        return logits.argmax(dim=-1)
    return torch.multinomial(torch.softmax(logits / temperature, dim=-1), num_samples=1).squeeze(1)
