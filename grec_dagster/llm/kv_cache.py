"""A key/value cache and attention that keep CPU decoding about matmul-bound.

Profiling one SmolLM2 decode step at batch 16 on this machine (2 cores, bf16 weights) showed two
costs that dwarf the matmuls: transformers' `DynamicLayer` concatenates every new key onto the
whole cache, copying it at every step (56% of the step), and PyTorch's CPU attention kernel is
several times slower on bf16 than on fp32 (3.4 vs 0.5 ms per layer at 400 cached tokens; 28%).
`ReservedLayer` writes into storage reserved for the whole generation, and keeps it in
`storage_dtype` -- float32 on CPU -- so attention runs in float32 while the matmuls stay in bf16.
Together they made a SmolLM2 decode step 2-3x faster at batch 16-64 (timed by hand on random
tokens with 350 cached positions; `benchmarks/bench_profiles.py` measures whole profiles).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.cache_utils import Cache, DynamicLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

CACHE_DTYPE_ATTENTION = "sdpa_in_cache_dtype"
"""The attention implementation to set on a model whose cache stores another dtype than its weights."""


class ReservedLayer(DynamicLayer):
    """One layer's keys and values in storage of `capacity` positions, grown by doubling if exceeded.

    `keys` and `values` are views of the filled positions, so everything transformers reads off a
    `DynamicLayer` (sequence length, mask sizes) stays true.
    """

    def __init__(self, capacity: int, storage_dtype: torch.dtype) -> None:
        super().__init__()
        self.capacity = capacity
        self.storage_dtype = storage_dtype
        self.length = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = self.storage_dtype, key_states.device
        self._keys = self._storage(key_states, self.capacity)
        self._values = self._storage(value_states, self.capacity)
        self.length = 0
        self.is_initialized = True

    def _storage(self, like: torch.Tensor, positions: int) -> torch.Tensor:
        batch, heads, _, head_dim = like.shape
        return torch.empty((batch, heads, positions, head_dim), dtype=self.storage_dtype, device=like.device)

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self._keys.shape[-2]:
            self._reserve(max(end, 2 * self._keys.shape[-2]))
        self._keys[:, :, self.length : end] = key_states
        self._values[:, :, self.length : end] = value_states
        self.length = end
        self._refresh_views()
        return self.keys, self.values

    def _reserve(self, positions: int) -> None:
        for name in ("_keys", "_values"):
            old = getattr(self, name)
            grown = self._storage(old, positions)
            grown[:, :, : self.length] = old[:, :, : self.length]
            setattr(self, name, grown)

    def _refresh_views(self) -> None:
        self.keys = self._keys[:, :, : self.length]
        self.values = self._values[:, :, : self.length]

    def get_seq_length(self) -> int:
        return self.length if self.is_initialized else 0

    def reset(self) -> None:
        self.keys = self.values = None
        self.length = 0
        self.is_initialized = False

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError("crop takes the negative number of tokens to remove")
        if self.is_initialized:
            self.length = max(0, self.length + tokens_to_remove)
            self._refresh_views()

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.is_initialized:
            self._keys = self._keys.repeat_interleave(repeats, dim=0)
            self._values = self._values.repeat_interleave(repeats, dim=0)
            self._refresh_views()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_initialized:
            self._keys, self._values = self._keys[indices], self._values[indices]
            self._refresh_views()


def reserved_cache(num_layers: int, capacity: int, storage_dtype: torch.dtype) -> Cache:
    return Cache(layers=[ReservedLayer(capacity, storage_dtype) for _ in range(num_layers)])


def broadcast_prefix(prefix: Cache, batch_size: int, capacity: int) -> Cache:
    """A cache for `batch_size` rows that all start with `prefix` (one row), with room for `capacity`
    positions; the prefix is copied once per row instead of recomputed."""
    layers = []
    for source in prefix.layers:
        layer = ReservedLayer(capacity, source.dtype)
        layer.update(
            source.keys.expand(batch_size, -1, -1, -1),
            source.values.expand(batch_size, -1, -1, -1),
        )
        layers.append(layer)
    return Cache(layers=layers)


def cache_dtype(weights_dtype: torch.dtype, device: str) -> torch.dtype:
    """float32 on CPU, where bf16 attention kernels are the slow ones; the weights' dtype elsewhere."""
    return torch.float32 if torch.device(device).type == "cpu" else weights_dtype


def _sdpa_in_cache_dtype(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' SDPA attention, computed in the dtype the cache returned keys in."""
    output, weights = sdpa_attention_forward(
        module, query.to(key.dtype), key, value.to(key.dtype), attention_mask, **kwargs
    )
    return output.to(query.dtype), weights


AttentionInterface.register(CACHE_DTYPE_ATTENTION, _sdpa_in_cache_dtype)
AttentionMaskInterface.register(CACHE_DTYPE_ATTENTION, sdpa_mask)
