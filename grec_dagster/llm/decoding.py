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

from grec_dagster.llm.kv_cache import concatenated, reserved_cache

COMPACT_FRACTION = 0.25
"""Drop parked rows once they are this share of the batch."""

PROMPT_ROWS = 32
"""Rows whose prompts run through the model together. Decode steps get cheaper per row up to large
batches, but prompt activations of many rows spill out of the CPU caches: a 184-token prompt took
~100 ms per row in batches of 32 and ~135 ms in batches of 128 on this machine."""


@dataclass(frozen=True)
class SharedPrefix:
    """Keys and values of the prompt tokens every row starts with, computed once as a single row."""

    length: int
    cache: Cache | None
    """One row; None for no shared prefix. Attended to by `prefix_attention`, never copied per row."""


NO_SHARED_PREFIX = SharedPrefix(0, None)


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
    prefix: SharedPrefix,
    matchers: list[xgr.GrammarMatcher],
    settings: DecodingSettings,
) -> list[list[int]]:
    """New tokens per row (a row's stop token included), for left-padded `input_ids` [rows, width]
    that follow the `prefix` every row shares. The model must run the `prefix_attention` implementation."""
    rows = list(range(len(input_ids)))
    """Which original row each batch position holds."""
    outputs: list[list[int]] = [[] for _ in rows]
    parked: set[int] = set()
    positions = prefix.length + (attention_mask.cumsum(-1) - 1).clamp(min=0)
    next_positions = positions[:, -1:] + 1
    generated = input_ids.new_empty((len(rows), 0))
    bitmask = xgr.allocate_token_bitmask(len(rows), model.config.get_text_config().vocab_size)
    penalty = RepetitionPenaltyLogitsProcessor(settings.repetition_penalty)
    grammar = xgr.BatchGrammarMatcher(max_threads=1)
    logits, cache = _prompt_logits(model, input_ids, attention_mask, positions, prefix, settings.max_new_tokens)
    for _ in range(settings.max_new_tokens):
        if generated.shape[1] and settings.repetition_penalty != 1.0:
            logits = penalty(generated, logits)
        _fill_masks(grammar, matchers, bitmask, rows, parked)
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
        logits = _last_logits(model, tokens[:, None], attention_mask, next_positions, cache, prefix)
        next_positions = next_positions + 1
    return outputs


def _fill_masks(
    grammar: xgr.BatchGrammarMatcher,
    matchers: list[xgr.GrammarMatcher],
    bitmask: Tensor,
    rows: list[int],
    parked: set[int],
) -> None:
    """Each batch position's allowed next tokens; a parked row may take any (its token is never used)."""
    bitmask.fill_(-1)
    active = [position for position, row in enumerate(rows) if row not in parked]
    grammar.batch_fill_next_token_bitmask([matchers[rows[position]] for position in active], bitmask, active)


def _prompt_logits(
    model: PreTrainedModel,
    input_ids: Tensor,
    attention_mask: Tensor,
    positions: Tensor,
    prefix: SharedPrefix,
    max_new_tokens: int,
) -> tuple[Tensor, Cache]:
    """The prompts' last logits, `PROMPT_ROWS` rows at a time, and one cache holding all their keys and
    values with room for `max_new_tokens` more."""
    layers = model.config.get_text_config().num_hidden_layers
    width = input_ids.shape[1]
    logits, caches = [], []
    for start in range(0, len(input_ids), PROMPT_ROWS):
        rows = slice(start, start + PROMPT_ROWS)
        caches.append(reserved_cache(layers, width))
        logits.append(_last_logits(model, input_ids[rows], attention_mask[rows], positions[rows], caches[-1], prefix))
    return torch.cat(logits), concatenated(caches, width + max_new_tokens)


def _last_logits(
    model: PreTrainedModel,
    input_ids: Tensor,
    attention_mask: Tensor,
    position_ids: Tensor,
    cache: Cache,
    prefix: SharedPrefix,
) -> Tensor:
    output = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,
        shared_prefix=prefix.cache,
    )
    return output.logits[:, -1].float()


def _choose(logits: Tensor, temperature: float) -> Tensor:
    if temperature == 0:
        return logits.argmax(dim=-1)
    return torch.multinomial(torch.softmax(logits / temperature, dim=-1), num_samples=1).squeeze(1)
