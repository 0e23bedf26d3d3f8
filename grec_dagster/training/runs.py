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


def latest_history(tracking_uri: str, experiment: str, run_name: str, keys: tuple[str, ...]) -> pd.DataFrame:
    """The newest finished run named `run_name`: one row per step (the epoch) with the metrics `keys`
    (MLflow keys, e.g. `ndcg_at_20`) as columns next to `epoch`; no rows when there is no such run."""
    client = MlflowClient(tracking_uri=tracking_uri)
    found = client.get_experiment_by_name(experiment)
    quoted = run_name.replace("'", "\\'")
    runs = (
        client.search_runs(
            [found.experiment_id],
            filter_string=f"attributes.run_name = '{quoted}' AND attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if found is not None
        else []
    )
    if not runs:
        return pd.DataFrame(columns=["epoch", *keys])
    history = {key: {m.step: m.value for m in client.get_metric_history(runs[0].info.run_id, key)} for key in keys}
    return pd.DataFrame(history).rename_axis("epoch").reset_index().sort_values("epoch", ignore_index=True)
