"""The grokking check of one training run, and where its verdicts go.

Every tower is checked the same way, while it trains: `OnlineGrokking` is the loop's epoch
callback, so each epoch record (training loss, each segment's validation NDCG@20) reaches a
`GrokkingMonitor` as soon as `fit` reports it, and an event reaches MLflow the moment it fires:
a `grokking_jump/<segment>` metric at the jump's epoch, a `grokking.<segment>` tag, and the
tower's curves with the event marked (`grokking/training_curves.png`). When training ends the
check is made once more over the whole history as `fit` keeps it (a resumed run's restored
epochs included), so every segment gets its verdict, "none detected" included: in MLflow (the
tags, a `grokking_events` count, a JSON artifact) and in the model's grokking file next to its
checkpoint (`layout.ModelFiles.grokking`), where the fusion reads which towers grokked.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from grec_dagster.evaluation.plots import training_curves
from grec_dagster.grokking import GrokkingConfig, GrokkingEvent, GrokkingMonitor
from grec_dagster.storage import atomic_write, write_json
from grec_dagster.training.tracking import TrackedRun

WATCHED_METRIC = "ndcg@20"
"""Validation records hold it overall and as `ndcg@20/<segment>` (see `validation_ndcg`)."""
OVERALL = "all"


@dataclass(frozen=True)
class GrokkingCheck:
    """One tower's check: the events that fired and a verdict for every segment watched."""

    tower: str
    metric: str
    config: GrokkingConfig
    events: tuple[GrokkingEvent, ...]
    verdicts: dict[str, str]
    """segment -> the event's description, or "none detected"."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "tower": self.tower,
            "metric": self.metric,
            "config": dataclasses.asdict(self.config),
            "events": [event.to_dict() for event in self.events],
            "summary": self.verdicts,
        }


def segment_metrics(record: Mapping[str, float], metric: str = WATCHED_METRIC) -> dict[str, float]:
    """segment -> `metric` in one epoch record; empty for an epoch without validation."""
    prefix = f"{metric}/"
    found = {OVERALL: record[metric]} if metric in record else {}
    return found | {key.removeprefix(prefix): value for key, value in record.items() if key.startswith(prefix)}


def check_grokking(
    tower: str,
    history: Iterable[Mapping[str, float]],
    config: GrokkingConfig | None = None,
    metric: str = WATCHED_METRIC,
) -> GrokkingCheck:
    """Feed every epoch of `history` to a fresh monitor (default thresholds), in order: each epoch's
    training loss, and each segment's metric where the epoch was validated, so the flat-loss rule
    measures training progress in epochs whatever `eval_every` is."""
    monitor = GrokkingMonitor(config or GrokkingConfig())
    for record in history:
        monitor.update(tower, int(record["epoch"]), float(record["train_loss"]), segment_metrics(record, metric))
    return GrokkingCheck(tower, metric, monitor.config, tuple(monitor.events), monitor.summary().get(tower, {}))


def record_grokking(
    check: GrokkingCheck, run: TrackedRun, path: Path, logged: Iterable[GrokkingEvent] = ()
) -> None:
    """Write the check to the MLflow run and to `path` (the model's `grokking.json`), where fusion
    reads it; events in `logged` already reached MLflow while training ran."""
    run.log_metrics({"grokking_events": float(len(check.events))})  # 0 in every run comparison when none fired
    already = set(logged)
    for event in check.events:
        if event not in already:
            log_event(event, run)
    if check.verdicts:
        run.set_tags({f"grokking.{segment}": verdict for segment, verdict in check.verdicts.items()})
    payload = check.to_dict()
    write_json(path, payload)
    run.log_json(payload, Path(path).name)


def log_event(event: GrokkingEvent, run: TrackedRun) -> None:
    run.log_metrics({f"grokking_jump/{event.segment}": event.jump_abs}, step=event.epoch)
    run.set_tags({f"grokking.{event.segment}": event.describe()})


class OnlineGrokking:
    """The loop's `on_epoch` callback for one tower: logs each epoch record to its MLflow run, feeds
    the detector, and records an event in MLflow as soon as it fires (metric, tag, and the curves
    written to `plot` with the event marked). `finish` makes the final check over `fit`'s history."""

    def __init__(self, tower: str, run: TrackedRun, plot: Path, metric: str = WATCHED_METRIC) -> None:
        self.tower, self.run, self.plot, self.metric = tower, run, Path(plot), metric
        self.monitor = GrokkingMonitor()
        self.history: list[dict[str, float]] = []
        self.logged: list[GrokkingEvent] = []

    def __call__(self, record: dict[str, float]) -> None:
        self.run.log_epoch(record)
        self.history.append(record)
        fired = self.monitor.update(
            self.tower, int(record["epoch"]), float(record["train_loss"]), segment_metrics(record, self.metric)
        )
        for event in fired:
            log_event(event, self.run)
            self.logged.append(event)
        if fired:
            self.log_curves(self.history, self.logged)

    def log_curves(self, history: Iterable[Mapping[str, float]], events: Iterable[GrokkingEvent]) -> None:
        frame = pd.DataFrame([dict(record) for record in history])
        png = training_curves({self.tower: frame}, {self.tower: list(events)}, self.metric)
        self.run.log_artifact(atomic_write(self.plot, lambda path: path.write_bytes(png)), "grokking")

    def finish(self, history: list[dict[str, float]], path: Path) -> GrokkingCheck:
        """The check over the whole run (resumed epochs included), recorded in MLflow and at `path`."""
        check = check_grokking(self.tower, history, self.monitor.config, self.metric)
        record_grokking(check, self.run, path, self.logged)
        self.log_curves(history, check.events)
        return check

