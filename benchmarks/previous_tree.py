"""A previous commit's files, unpacked beside this working tree so a benchmark can run that tree's
code in a child process and print both figures from one run."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def unpack_previous(rev: str, into: Path, *paths: str) -> Path:
    """`git archive rev paths` unpacked in `into` (default: the engine, `grec_dagster`): with `into`
    first on PYTHONPATH, a child imports that commit's engine exactly."""
    archive = subprocess.run(
        ["git", "archive", rev, *(paths or ("grec_dagster",))], cwd=ROOT, capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into
