"""Checkpoints as safetensors plus JSON, written atomically.

A file is written under a temporary name and moved into place with `os.replace`, so a
process killed mid-write leaves the previous checkpoint whole. Everything that is not a
tensor (config, epoch counters, metric history, optimizer hyper-parameters) travels as JSON
in the safetensors header, so one file is one consistent state.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, safe_open, save_file

META_KEY = "grec"


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    contiguous = {name: tensor.detach().contiguous().cpu() for name, tensor in tensors.items()}
    save_file(contiguous, str(partial), metadata={META_KEY: json.dumps(meta)})
    os.replace(partial, path)


def tensor_fingerprint(*tensors: torch.Tensor) -> str:
    """A short digest of the tensors' bytes, in order: resumable training state keyed by it starts
    afresh when its inputs change."""
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    with safe_open(str(path), framework="pt") as handle:
        meta = json.loads((handle.metadata() or {}).get(META_KEY, "{}"))
    return load_file(str(path)), meta


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(payload, indent=2, default=str))
    os.replace(partial, path)


def flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split `optimizer.state_dict()` into tensors (per-parameter state) and JSON (the rest)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entries in state["state"].items():
        for name, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{index}.{name}"] = value
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    for index, entries in meta["scalars"].items():
        state.setdefault(int(index), {}).update(entries)
    return {"state": state, "param_groups": meta["param_groups"]}


def resumable_state_dir(root: Path, data_fingerprint: str, config_json: str) -> Path:
    """Where an interrupted training run left its state: keyed by data and config, so only the
    very same run resumes from it (a changed config or graph starts fresh)."""
    digest = hashlib.sha256(f"{data_fingerprint}:{config_json}".encode()).hexdigest()[:16]
    return Path(root) / f"state-{digest}"
