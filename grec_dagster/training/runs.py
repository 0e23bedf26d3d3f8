"""An MLflow experiment's runs side by side: one column per run, one row per metric.

Every training asset logs the same test metrics, so this is the table to compare models (or
two retrains of one model) at a glance; the MLflow UI shows the same runs with their curves.
"""

from __future__ import annotations

import pandas as pd
from mlflow import MlflowClient


def compare_runs(tracking_uri: str, experiment: str, last: int = 10, prefix: str = "") -> pd.DataFrame:
    """The latest value of each metric starting with `prefix`, for the `last` most recent runs (newest first)."""
    client = MlflowClient(tracking_uri=tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise LookupError(f"no MLflow experiment {experiment!r} at {tracking_uri}")
    runs = client.search_runs([found.experiment_id], order_by=["attributes.start_time DESC"], max_results=last)
    columns = {}
    for run in runs:
        status = "" if run.info.status == "FINISHED" else f" ({run.info.status})"
        label = f"{run.info.run_name} {run.info.run_id[:6]}{status}"
        columns[label] = {key: value for key, value in run.data.metrics.items() if key.startswith(prefix)}
    return pd.DataFrame(columns).sort_index()
