"""How grec writes anything that must survive a crash: files moved into place whole, tensors as
safetensors with a JSON header, DuckDB changes in one transaction. The bottom layer: it imports
no other grec module, and every module that writes goes through it.

It imports torch only inside the tensor functions: `grec recommend` writes its NumPy index
through `atomic_write` and must not pay for a torch import.

A file is written under a temporary name in its own folder and moved into place with
`os.replace`, so a process killed mid-write leaves the previous file whole. Everything that is
not a tensor (config, epoch counters, metric history) travels as JSON in the safetensors
header, so one file is one consistent state.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import duckdb
    import torch

META_KEY = "grec"
PARTIAL_SUFFIX = ".partial"


def atomic_write(path: Path, write: Callable[[Path], object]) -> Path:
    """`write(temporary path)`, then move the result to `path` in one step; returns `path`.

    A writer that dies half-way leaves `<name>.partial` behind and `path` as it was; the next
    write replaces both.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + PARTIAL_SUFFIX)
    write(partial)
    os.replace(partial, path)
    return path


def write_json(path: Path, payload: Any) -> Path:
    return atomic_write(path, lambda partial: partial.write_text(json.dumps(payload, indent=2, default=str)))


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    from safetensors.torch import save_file

    contiguous = {name: tensor.detach().contiguous().cpu() for name, tensor in tensors.items()}
    header = {META_KEY: json.dumps(meta)}
    return atomic_write(path, lambda partial: save_file(contiguous, str(partial), metadata=header))


def load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors.torch import load_file, safe_open

    with safe_open(str(path), framework="pt") as handle:
        meta = json.loads((handle.metadata() or {}).get(META_KEY, "{}"))
    return load_file(str(path)), meta


def tensor_fingerprint(*tensors: torch.Tensor) -> str:
    """A short digest of the tensors' bytes, in order: state keyed by it starts afresh when its inputs change."""
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """One DuckDB transaction: committed when the block ends, rolled back when it raises (a killed
    process leaves the previous state too: DuckDB never replays a transaction that did not commit)."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield con
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")
