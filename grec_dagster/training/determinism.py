"""Bit-identical training in every process: torch's deterministic kernels for the length of a run.

Why a run differed between two processes at the default thread count: on the CPU, the backward
of advanced indexing (`weight[users]`, `h[rows]`) is `index_put_(accumulate=True)`, which torch
runs with atomic float adds across threads once a tensor passes its grain size (32,768
elements). Which thread adds first changes the float sum in its last bits; early stopping and
best-epoch selection then turn those bits into different checkpoints. With deterministic
algorithms on, torch runs that accumulation serially (and picks deterministic CUDA kernels where
it has them), so the same data, config and thread count give the same bits in every process.

Forward passes need nothing: gathers and `index_add_` are deterministic on the CPU already;
only gradients accumulate with atomics, so `fit` is where this is switched on.

On CUDA, cuBLAS needs `CUBLAS_WORKSPACE_CONFIG=:4096:8` in the environment before CUDA starts to
be deterministic; `warn_only` makes torch warn, not fail, for an op without a deterministic kernel.

Deterministic mode also fills every new uninitialized tensor with NaN by default
(`torch.utils.deterministic.fill_uninitialized_memory`), so that code reading memory it never wrote
gives NaN rather than whatever was there. It is turned off inside the block: correct kernels never
read unwritten memory, so it changes no result, and a temporal-model step allocates hundreds of
small tensors, each of which it would fill.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.utils.deterministic

CUBLAS_WORKSPACE = ":4096:8"


@contextmanager
def deterministic_kernels() -> Iterator[None]:
    """Deterministic torch kernels inside the block; the previous setting is restored after it."""
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    fills = torch.utils.deterministic.fill_uninitialized_memory
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
        torch.utils.deterministic.fill_uninitialized_memory = fills
