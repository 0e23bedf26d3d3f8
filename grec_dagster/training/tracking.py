"""A thin wrapper over one MLflow run, through an explicit client (no global active run).

Explicit clients keep concurrent runs (several assets in one process, or DDP workers) apart,
and let tests point at a throw-away SQLite store. Every run is tagged with the source tree it ran
from (`source_tags`), so runs of one model can be compared across commits (`runs.compare_runs`).
"""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag


@dataclass
class TrackedRun:
    client: MlflowClient
    run_id: str
    experiment_id: str
    ui_url: str

    @property
    def url(self) -> str:
        return f"{self.ui_url.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{self.run_id}"

    def log_params(self, params: dict[str, Any]) -> None:
        items = [Param(key, str(value)[:6000]) for key, value in _flatten(params).items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        finite = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and math.isfinite(v)}
        stamp = _now_ms()
        batch = [Metric(_metric_key(k), v, stamp, step) for k, v in finite.items()]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)

    def log_epoch(self, record: dict[str, float]) -> None:
        """An epoch record of `fit` at its epoch's step: the loop's `on_epoch` callback."""
        self.log_metrics(record, step=int(record["epoch"]))

    def set_tags(self, tags: dict[str, str]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), folder)

    def log_json(self, payload: Any, name: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            target = Path(tmp) / name
            target.write_text(json.dumps(payload, indent=2, default=str))
            self.client.log_artifact(self.run_id, str(target))


def _now_ms() -> int:
    return int(time.time() * 1000)


def _metric_key(name: str) -> str:
    """MLflow keys allow letters, digits and `_-./ `; `@` (as in ndcg@20) becomes `_at_`."""
    return name.replace("@", "_at_")


def _flatten(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, dict):
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


COMMIT_TAG = "mlflow.source.git.commit"
"""MLflow's own tag for the commit (its UI shows it on the run page); "unknown" outside a git checkout."""
DIRTY_TAG = "grec.git.dirty"
""""true" when the tree differed from its commit (changed or untracked files), "false", or "unknown"."""
DIFF_TAG = "grec.git.diff"
"""For a dirty tree, a digest of how it differed from its commit: equal digests, equal trees."""
UNKNOWN = "unknown"
PACKAGE_DIR = Path(__file__).resolve().parents[1]
"""The `grec_dagster` package: the tree a run ran from is the checkout holding it."""


def source_tags(package_dir: Path = PACKAGE_DIR) -> dict[str, str]:
    """The commit of the git checkout that `package_dir` is tracked in, whether the tree was dirty and,
    if so, a digest of its changes (tracked diffs, and untracked files by name and content).

    Asked at each run, not once per process: a long-lived code server outlives commits. A package
    installed outside a checkout (or untracked inside one, as in a virtualenv) is "unknown".
    """

    def git(*args: str, cwd: Path = package_dir, stdin: bytes | None = None) -> bytes:
        return subprocess.run(["git", *args], cwd=cwd, input=stdin, capture_output=True, check=True).stdout

    try:
        git("ls-files", "--error-unmatch", "__init__.py")
        top = Path(git("rev-parse", "--show-toplevel").decode().strip())
        commit = git("rev-parse", "HEAD", cwd=top).decode().strip()
        diff = git("diff", "HEAD", "--binary", cwd=top)
        untracked = git("ls-files", "-z", "--others", "--exclude-standard", cwd=top).split(b"\0")[:-1]
        contents = git("hash-object", "--stdin-paths", cwd=top, stdin=b"\n".join(untracked)) if untracked else b""
    except (OSError, subprocess.CalledProcessError):
        return {COMMIT_TAG: UNKNOWN, DIRTY_TAG: UNKNOWN}
    if not diff and not untracked:
        return {COMMIT_TAG: commit, DIRTY_TAG: "false"}
    changes = hashlib.sha256(b"\0".join([diff, *untracked, contents])).hexdigest()
    return {COMMIT_TAG: commit, DIRTY_TAG: "true", DIFF_TAG: changes[:12]}


def experiment_id(client: MlflowClient, name: str, artifact_location: str | None) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    return client.create_experiment(name, artifact_location=artifact_location)


@contextmanager
def tracked_run(
    tracking_uri: str,
    experiment: str,
    run_name: str,
    tags: dict[str, str],
    artifact_location: str | None = None,
    ui_url: str = "http://127.0.0.1:5000",
) -> Iterator[TrackedRun]:
    """Open a run tagged with its source tree (and `tags`), yield it, and close it FINISHED, or FAILED
    if the body raised."""
    client = MlflowClient(tracking_uri=tracking_uri)
    exp_id = experiment_id(client, experiment, artifact_location)
    run = client.create_run(exp_id, run_name=run_name, tags=source_tags() | tags)
    tracked = TrackedRun(client, run.info.run_id, exp_id, ui_url)
    try:
        yield tracked
    except BaseException:
        client.set_terminated(run.info.run_id, status="FAILED")
        raise
    client.set_terminated(run.info.run_id, status="FINISHED")
