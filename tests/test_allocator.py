"""The package's import keeps freed memory in the process: a large tensor no longer gets its own
mmap, which is what made every temporal step fault its pages in again."""

import platform
import subprocess
import sys

import pytest

from grec_dagster.allocator import tuned_by_environment

MAPPED_AFTER_A_LARGE_TENSOR = """
import ctypes, sys
if sys.argv[1] == "grec":
    import grec_dagster
import torch

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

mallinfo2 = ctypes.CDLL(None).mallinfo2
mallinfo2.restype = MallInfo2
tensor = torch.ones(64 * 2**20 // 4)  # 64 MiB, over glibc's largest mmap threshold
print(mallinfo2().hblkhd)
"""


def mapped_bytes(*, import_grec: bool) -> int:
    """Bytes glibc holds in mmapped blocks while a 64 MiB tensor is alive, in a fresh interpreter."""
    argv = [sys.executable, "-c", MAPPED_AFTER_A_LARGE_TENSOR, "grec" if import_grec else "plain"]
    return int(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc (and its mallinfo2)")
def test_importing_grec_serves_large_tensors_from_the_heap(monkeypatch) -> None:
    for name in ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES"):
        monkeypatch.delenv(name, raising=False)
    assert mapped_bytes(import_grec=False) >= 64 * 2**20  # glibc's default: its own mapping
    assert mapped_bytes(import_grec=True) < 64 * 2**20


def test_a_users_own_malloc_settings_win() -> None:
    assert tuned_by_environment({"MALLOC_MMAP_MAX_": "65536"})
    assert tuned_by_environment({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"})
    assert not tuned_by_environment({"MALLOC_ARENA_MAX": "2", "GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX"})
