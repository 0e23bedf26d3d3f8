"""A thin wrapper over one MLflow run, through an explicit client (no global active run).

Explicit clients keep concurrent runs (several assets in one process, or DDP workers) apart,
and let tests point at a throw-away SQLite store.
"""

from __future__ import annotations

import json
import math
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
    """Open a run, yield it, and close it FINISHED, or FAILED if the body raised."""
    client = MlflowClient(tracking_uri=tracking_uri)
    exp_id = experiment_id(client, experiment, artifact_location)
    run = client.create_run(exp_id, run_name=run_name, tags=tags)
    tracked = TrackedRun(client, run.info.run_id, exp_id, ui_url)
    try:
        yield tracked
    except BaseException:
        client.set_terminated(run.info.run_id, status="FAILED")
        raise
    client.set_terminated(run.info.run_id, status="FINISHED")
