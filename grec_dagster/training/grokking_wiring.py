"""The grokking check of one training run, and where its verdicts go.

Every tower is checked the same way, after training: its epoch records, as `fit` keeps them
(a resumed run's restored epochs included), feed a `GrokkingMonitor` with the training loss
and each segment's validation NDCG@20. Each segment's verdict, "none detected" included, is
recorded in MLflow (a `grokking_jump/<segment>` metric at the jump's epoch, a
`grokking.<segment>` tag, a JSON artifact) and in the model's grokking file next to its
checkpoint (`layout.ModelFiles.grokking`), where the fusion reads which towers grokked.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grec_dagster.grokking import GrokkingConfig, GrokkingEvent, GrokkingMonitor
from grec_dagster.storage import write_json
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


def record_grokking(check: GrokkingCheck, run: TrackedRun, path: Path) -> None:
    """Write the check to the MLflow run and to `path` (the model's `grokking.json`), where fusion reads it."""
    run.log_metrics({"grokking_events": float(len(check.events))})  # 0 in every run comparison when none fired
    for event in check.events:
        run.log_metrics({f"grokking_jump/{event.segment}": event.jump_abs}, step=event.epoch)
    if check.verdicts:
        run.set_tags({f"grokking.{segment}": verdict for segment, verdict in check.verdicts.items()})
    payload = check.to_dict()
    write_json(path, payload)
    run.log_json(payload, Path(path).name)
