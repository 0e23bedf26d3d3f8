"""Keep freed memory inside the process, so a training step stops faulting its pages in again.

glibc's malloc serves every block over 32 MiB (its largest mmap threshold) with a fresh `mmap`, hands
it back to the kernel on `free`, and trims the heap's top whenever 128 KiB are free there. A temporal
step at a capped batch allocates and frees dozens of [queries x neighbours x 128] float tensors
(80 MB each at 8,000 events), so every step faulted fresh zeroed pages in again, time spent in the
kernel rather than in torch. With mmap off and the top kept (up to 2 GiB free), freed blocks are reused:
`benchmarks/bench_gnn_scale.py` measures the gain beside the previous tree. Every number stays the
same bit for bit: where a block lives does not change what is computed (torch aligns each tensor to
64 bytes either way). The cost is that a process keeps the heap of its peak until it ends, which a
step process, the one that allocates, does anyway.

Left alone where the environment tunes these two settings itself (MALLOC_MMAP_MAX_,
MALLOC_TRIM_THRESHOLD_ or GLIBC_TUNABLES) and where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import os
import platform
from collections.abc import Mapping

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
KEEP_FREE_TOP = 2**31 - 1
"""Free bytes at the heap's top before glibc trims it: mallopt takes a C int, so 2 GiB is the most."""


def tuned_by_environment(environ: Mapping[str, str]) -> bool:
    """Whether the user already set how malloc maps or trims (their setting wins)."""
    tunables = environ.get("GLIBC_TUNABLES", "")
    return any(name in environ for name in ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_")) or any(
        name in tunables for name in ("glibc.malloc.mmap_max", "glibc.malloc.trim_threshold")
    )


def keep_freed_memory() -> bool:
    """Apply the module's malloc settings to this process; whether they were applied."""
    if platform.libc_ver()[0] != "glibc" or tuned_by_environment(os.environ):
        return False
    libc = ctypes.CDLL(None)  # the running process's C library
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, KEEP_FREE_TOP))
