"""An MLflow experiment's runs side by side: one column per run, or one per model and source tree
with the mean ± std of each metric over the runs' seeds.

Every training asset logs the same test metrics, so this is the table to compare models (or
two retrains of one model) at a glance; the MLflow UI shows the same runs with their curves.
A single run of a sampled model says little (see the README's variance notes): the grouped view
puts each model's seeds together, per commit, so a change is judged against the spread of seeds.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter

import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Run

from grec_dagster.training.tracking import COMMIT_TAG, DIFF_TAG, DIRTY_TAG, UNKNOWN

SEED_PARAMS = ("seed", "split_seed")
"""Params that only reseed a run: runs differing in nothing else are one group over seeds."""


def compare_runs(
    tracking_uri: str, experiment: str, last: int = 10, prefix: str = "", over_seeds: bool = False
) -> pd.DataFrame:
    """The latest value of each metric starting with `prefix` of the `last` most recent runs, one
    column per run (newest first); with `over_seeds`, one column per model, tree and config instead
    (`over_seeds_table`)."""
    runs = newest_runs(tracking_uri, experiment, last)
    return over_seeds_table(runs, prefix) if over_seeds else side_by_side(runs, prefix)


def newest_runs(tracking_uri: str, experiment: str, last: int) -> list[Run]:
    client = MlflowClient(tracking_uri=tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise LookupError(f"no MLflow experiment {experiment!r} at {tracking_uri}")
    return client.search_runs([found.experiment_id], order_by=["attributes.start_time DESC"], max_results=last)


def side_by_side(runs: list[Run], prefix: str) -> pd.DataFrame:
    """One column per run, labelled by name, seed, run id and tree."""
    columns = {}
    for run in runs:
        status = "" if run.info.status == "FINISHED" else f" ({run.info.status})"
        seed = f" seed {_seeds(run)}" if _seeds(run) else ""
        label = f"{run.info.run_name}{seed} {run.info.run_id[:6]} @{source_tree(run)}{status}"
        columns[label] = _metrics(run, prefix)
    return pd.DataFrame(columns).sort_index()


def over_seeds_table(runs: list[Run], prefix: str) -> pd.DataFrame:
    """Finished runs grouped by name, source tree and every param but the seeds: per group, how many
    runs, which seeds, and each metric as `mean ± std` (sample std; the mean alone for one run).

    A column is labelled `name @tree`, plus its config digest where one name and tree ran with
    several configs. Groups are ordered by their newest run.
    """
    finished = [run for run in runs if run.info.status == "FINISHED"]
    groups: dict[tuple[str, str, str], list[Run]] = {}
    for run in finished:
        groups.setdefault((run.info.run_name, source_tree(run), _config_digest(run)), []).append(run)
    configs = Counter((name, tree) for name, tree, _ in groups)
    columns = {}
    for (name, tree, config), members in groups.items():
        label = f"{name} @{tree}" + (f" config {config}" if configs[name, tree] > 1 else "")
        metrics = pd.DataFrame([_metrics(run, prefix) for run in members])
        seeds = sorted({_seeds(run) for run in members if _seeds(run)})
        columns[label] = {"runs": str(len(members)), "seeds": ", ".join(seeds) or "-"} | {
            metric: _mean_std(metrics[metric].dropna()) for metric in sorted(metrics.columns)
        }
    table = pd.DataFrame(columns, dtype=object)
    return table.reindex(["runs", "seeds", *sorted(set(table.index) - {"runs", "seeds"})])


def source_tree(run: Run) -> str:
    """The run's commit, short, with `+digest` of its changes when the tree was dirty; "unknown" when
    it ran outside a git checkout or before runs were tagged."""
    tags = run.data.tags
    commit = tags.get(COMMIT_TAG, UNKNOWN)
    short = commit if commit == UNKNOWN else commit[:7]
    return f"{short}+{tags[DIFF_TAG][:6]}" if tags.get(DIRTY_TAG) == "true" and DIFF_TAG in tags else short


def _metrics(run: Run, prefix: str) -> dict[str, float]:
    return {key: value for key, value in run.data.metrics.items() if key.startswith(prefix)}


def _seeds(run: Run) -> str:
    """The run's seed params, e.g. `0` or `seed 0 / split_seed 2` when it logged both."""
    logged = {name: run.data.params[name] for name in SEED_PARAMS if name in run.data.params}
    if len(logged) <= 1:
        return "".join(logged.values())
    return " / ".join(f"{name} {value}" for name, value in logged.items())


def _config_digest(run: Run) -> str:
    config = {key: value for key, value in run.data.params.items() if key not in SEED_PARAMS}
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:6]


def _mean_std(values: pd.Series) -> str:
    if values.empty:
        return "-"
    if len(values) == 1:
        return f"{values.iloc[0]:.4f}"
    return f"{values.mean():.4f} ± {values.std(ddof=1):.4f}"


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
