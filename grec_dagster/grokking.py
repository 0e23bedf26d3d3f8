"""Grokking detector: flags sudden, late generalisation of a tower on one segment.

Grokking is a validation metric that jumps, and stays up, well after the training
loss has stopped improving. When a tower groks, the fusion gates should trust it
more, so each tower/segment is watched and the first such jump is reported.

A detector is fed training losses L_t at epochs e_t, t = 0, 1, ... (`update` without
a metric records a loss alone), and at some of them, the evaluations i = 0, 1, ...,
a validation metric v_i, higher is better (pass -metric otherwise). The rule; every
threshold is a `GrokkingConfig` field:

1. Flat loss at t. With the running best m_t = min(L_0 .. L_t), the loss settled at
   s_t, the first record whose running best is within plateau_tolerance of the whole
   improvement so far of m_t,
       m_{s_t} - m_t <= plateau_tolerance * (L_0 - m_t),
   and it is flat at t when it has stayed settled for plateau_fraction of the
   training progress so far:
       e_t - e_{s_t} >= plateau_fraction * (e_t - e_0).
   By default: within 1% of its best for the latest quarter of the run, so a jump at
   a flat epoch comes at least 4/3 as far into training as the loss settled. Only
   differences of losses and ratios of epochs enter: the verdict is the same when the
   loss is scaled by a positive factor or shifted, or epochs are counted in steps.
   Fed every epoch's loss, the rule does not see the evaluation spacing at all, so
   a loss that keeps falling slowly (a power law, a geometric decay) flattens at the
   same epoch however often the metric is evaluated. Fed only the evaluations'
   losses, it depends on the first one's epoch e_0: a power law looks alike at every
   scale, so it settles after a fixed multiple of e_0 + 1 epochs (a geometric decay
   hardly cares). A loss that never improved is flat.
2. Windows, in evaluations (they are sample sizes of a noisy metric): confirming at
   evaluation c, the after-window is v_{c-P} .. v_c (P = persist_evals), and the
   pre-jump level b is the median of the K = baseline_window evaluations that end
   G = rise_evals evaluations before the after-window. The gap lets a rise take up
   to G evaluations and still be measured from the level before it rather than from
   its own first steps, so a gradual jump from a low base is seen whole.
3. Noise: s = 1.4826 / sqrt(2) * MAD of the successive differences of every metric
   value before the baseline's end: a robust std of the metric, which neither a
   steady trend nor the fewer large moves of the learning phase inflate.
4. Jump: every value of the after-window clears the pre-jump level,
       min(v_{c-P} .. v_c) - b >= max(min_jump_abs, min_jump_rel * |b|, noise_multiplier * s),
   so neither a spike nor a bump shorter than P + 1 evaluations counts, nor a drift
   rising less than that over about G + K / 2 evaluations. The relative term keeps a
   high base's small wobbles out; from a low base (NDCG ~0.05) it is small (0.0125),
   and the noise term or min_jump_abs decides. The jump began at evaluation j, the first after the baseline
   from which the metric stayed that high through c; the loss must be flat at every
   record from e_j to e_c, so a metric that jumps while the loss is still settling,
   or while it falls again by more than plateau_tolerance, is not grokking.

The earliest report is at evaluation K + G + P = 17 (the 18th), P or more
evaluations after the jump, and a detector fires at most once: grokking is a
one-off phase change, and re-firing would shift fusion weight toward the same
tower again and again.

`validation_stalled_on_flat_loss` names the state before it (loss flat, validation
no longer improving) in which a tower may keep training a bounded while, hoping to grok.
"""

import bisect
import dataclasses
import itertools
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

_MAD_TO_STD = 1.4826  # scales a median absolute deviation to a Gaussian std
NONE_DETECTED = "none detected"


@dataclass(frozen=True)
class GrokkingConfig:
    """Thresholds of the rule in the module docstring: the loss ones are fractions, the
    window ones count evaluations, the jump sizes are in metric units.

    Defaults suit metrics in [0, 1], from per-epoch recommender training (tens of
    evaluations, NDCG around 0.05 on a segment) to modular-addition grokking (accuracy
    from ~0 to 1).
    """

    plateau_tolerance: float = 0.01  # improvement since settling, as a fraction of the total so far
    plateau_fraction: float = 0.25  # share of the progress so far the loss must have been settled for
    baseline_window: int = 8  # K: evaluations that define the pre-jump level
    rise_evals: int = 6  # G: evaluations a rise may take, between the baseline and the after-window
    persist_evals: int = 3  # P: evaluations after the jump the metric must stay up
    min_jump_abs: float = 0.01  # smallest jump, in metric units
    min_jump_rel: float = 0.25  # smallest jump, as a fraction of the pre-jump level
    noise_multiplier: float = 4.0  # smallest jump, in noise stds of the metric

    def __post_init__(self) -> None:
        if self.baseline_window < 2:
            raise ValueError("baseline_window must be >= 2 to estimate noise from differences")
        if self.rise_evals < 0 or self.persist_evals < 0:
            raise ValueError("rise_evals and persist_evals must be >= 0")
        if not 0 <= self.plateau_fraction <= 1:
            raise ValueError("plateau_fraction must be in [0, 1]")
        if self.min_jump_abs <= 0:
            raise ValueError("min_jump_abs must be > 0, or any flat metric would jump")
        if min(self.plateau_tolerance, self.min_jump_rel, self.noise_multiplier) < 0:
            raise ValueError("tolerances and multipliers must be >= 0")

    @property
    def earliest_report(self) -> int:
        """Index of the first evaluation at which an event can be reported."""
        return self.baseline_window + self.rise_evals + self.persist_evals


@dataclass(frozen=True)
class Evaluation:
    """One evaluation fed to a detector."""

    epoch: int
    train_loss: float
    val_metric: float


@dataclass(frozen=True)
class GrokkingEvent:
    """A confirmed grokking jump, ready to log (see `to_dict`)."""

    tower: str
    segment: str
    epoch: int  # evaluation j where the jump began
    confirmed_epoch: int  # evaluation c where it was reported, P or more after j
    plateau_epoch: int  # epoch s_j where the training loss settled, as seen at the jump
    plateau_train_loss: float  # best training loss by the jump: the plateau level
    val_before: float  # pre-jump level b
    val_after: float  # median of the metric over evaluations j .. c
    jump_abs: float  # val_after - val_before
    jump_rel: float | None  # jump_abs / |val_before|; None when val_before is 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def describe(self) -> str:
        return (
            f"grokked at epoch {self.epoch} (loss flat since epoch {self.plateau_epoch}, "
            f"confirmed at epoch {self.confirmed_epoch}): "
            f"{self.val_before:.4g} -> {self.val_after:.4g} ({self.jump_abs:+.4g})"
        )


class _LossPlateau:
    """Rule 1 over a growing training-loss curve: where it settled, and whether it is flat."""

    def __init__(self, tolerance: float, fraction: float) -> None:
        self.tolerance = tolerance
        self.fraction = fraction
        self.epochs: list[int] = []
        self.best: list[float] = []  # m_t
        self._negated_best: list[float] = []  # -m_t, non-decreasing, for bisect
        self.settled: list[int] = []  # s_t
        self.flat: list[bool] = []

    def add(self, epoch: int, loss: float) -> None:
        best = min(loss, self.best[-1]) if self.best else loss
        self.epochs.append(epoch)
        self.best.append(best)
        self._negated_best.append(-best)
        # first s with m_s <= m_t + tolerance * (L_0 - m_t), i.e. -m_s >= -(that)
        settled = bisect.bisect_left(self._negated_best, -(best + self.tolerance * (self.best[0] - best)))
        self.settled.append(settled)
        first = self.epochs[0]
        self.flat.append(epoch - self.epochs[settled] >= self.fraction * (epoch - first))


class GrokkingDetector:
    """Applies the module's rule to one tower on one segment; fires at most once."""

    def __init__(self, config: GrokkingConfig, tower: str, segment: str) -> None:
        self.config = config
        self.tower = tower
        self.segment = segment
        self._loss = _LossPlateau(config.plateau_tolerance, config.plateau_fraction)
        self._history: list[Evaluation] = []
        self._loss_index: list[int] = []  # where each evaluation's loss sits in self._loss
        self._event: GrokkingEvent | None = None

    @property
    def history(self) -> tuple[Evaluation, ...]:
        """The evaluations with a metric, not the loss-only records."""
        return tuple(self._history)

    @property
    def events(self) -> tuple[GrokkingEvent, ...]:
        """Empty, or the single event this detector fired."""
        return () if self._event is None else (self._event,)

    def update(self, epoch: int, train_loss: float, val_metric: float | None = None) -> GrokkingEvent | None:
        """Record one epoch's loss, and its evaluation when `val_metric` is given; return the
        event if this evaluation confirms a jump that persisted."""
        values = {"train_loss": train_loss} | ({} if val_metric is None else {"val_metric": val_metric})
        _check_record(
            f"{self.tower}/{self.segment}", self._loss.epochs[-1] if self._loss.epochs else None, epoch, values
        )
        self._loss.add(epoch, train_loss)
        if val_metric is None:
            return None
        self._history.append(Evaluation(epoch, train_loss, val_metric))
        self._loss_index.append(len(self._loss.epochs) - 1)
        if self._event is not None:
            return None
        self._event = self._confirmed_jump()
        return self._event

    def _confirmed_jump(self) -> GrokkingEvent | None:
        config, last = self.config, len(self._history) - 1
        if last < config.earliest_report:
            return None
        after = last - config.persist_evals
        baseline_end = after - config.rise_evals
        baseline_start = baseline_end - config.baseline_window
        metric = [evaluation.val_metric for evaluation in self._history]
        before = statistics.median(metric[baseline_start:baseline_end])
        noise = _robust_std(metric[:baseline_end])
        level = before + max(config.min_jump_abs, config.min_jump_rel * abs(before), config.noise_multiplier * noise)
        if min(metric[after:]) < level:
            return None
        jump = after
        while jump > baseline_end and metric[jump - 1] >= level:
            jump -= 1
        loss, at_jump = self._loss, self._loss_index[jump]
        if not all(loss.flat[at_jump:]):
            return None
        value_after = statistics.median(metric[jump:])
        return GrokkingEvent(
            tower=self.tower,
            segment=self.segment,
            epoch=self._history[jump].epoch,
            confirmed_epoch=self._history[last].epoch,
            plateau_epoch=loss.epochs[loss.settled[at_jump]],
            plateau_train_loss=loss.best[at_jump],
            val_before=before,
            val_after=value_after,
            jump_abs=value_after - before,
            jump_rel=(value_after - before) / abs(before) if before != 0 else None,
        )


def _check_record(source: str, previous_epoch: int | None, epoch: int, values: Mapping[str, float]) -> None:
    """Reject a record before anything is stored, so a bad one leaves no partial state."""
    if previous_epoch is not None and epoch <= previous_epoch:
        raise ValueError(f"{source}: epochs must increase: got {epoch} after {previous_epoch}")
    non_finite = {name: value for name, value in values.items() if not math.isfinite(value)}
    if non_finite:
        raise ValueError(f"{source}: non-finite values at epoch {epoch}: {non_finite}")


def _robust_std(series: list[float]) -> float:
    """Noise std from the MAD of successive differences (each difference carries it twice)."""
    differences = [value - prior for prior, value in itertools.pairwise(series)]
    center = statistics.median(differences)
    return _MAD_TO_STD / math.sqrt(2) * statistics.median(abs(d - center) for d in differences)


def validation_stalled_on_flat_loss(
    history: Sequence[Evaluation], patience: int, config: GrokkingConfig = GrokkingConfig()
) -> bool:
    """Whether a tower is where grokking would start: its loss flat and its validation stuck.

    True when the training loss is flat at the last evaluation (rule 1) and the last
    `patience` evaluations brought no new best metric, which is early stopping's own
    "stop" condition. Early stopping alone would end such a run; a grokking watch may
    instead keep training for a bounded budget, since the jump comes only later.
    """
    if patience < 1:
        raise ValueError("patience must be >= 1")
    if len(history) <= patience:
        return False
    loss = _LossPlateau(config.plateau_tolerance, config.plateau_fraction)
    for evaluation in history:
        loss.add(evaluation.epoch, evaluation.train_loss)
    metric = [evaluation.val_metric for evaluation in history]
    return loss.flat[-1] and max(metric[-patience:]) <= max(metric[:-patience])


class GrokkingMonitor:
    """One detector per (tower, segment), so every run records a verdict for each; every
    detector of a tower sees all of its training losses, those of epochs without validation too."""

    def __init__(self, config: GrokkingConfig = GrokkingConfig()) -> None:
        self.config = config
        self._detectors: dict[tuple[str, str], GrokkingDetector] = {}
        self._losses: dict[str, list[tuple[int, float]]] = {}

    @property
    def events(self) -> list[GrokkingEvent]:
        return [event for detector in self._detectors.values() for event in detector.events]

    def update(
        self, tower: str, epoch: int, train_loss: float, val_metrics: Mapping[str, float]
    ) -> list[GrokkingEvent]:
        """Feed one epoch of `tower`: its training loss and a metric per segment validated (maybe none)."""
        losses = self._losses.setdefault(tower, [])
        values = {"train_loss": train_loss} | {
            f"val_metric[{segment}]": value for segment, value in val_metrics.items()
        }
        _check_record(tower, losses[-1][0] if losses else None, epoch, values)
        for (owner, segment), detector in self._detectors.items():
            if owner == tower and segment not in val_metrics:
                detector.update(epoch, train_loss)
        events = []
        for segment, value in val_metrics.items():
            detector = self._detectors.get((tower, segment)) or self._new_detector(tower, segment, losses)
            event = detector.update(epoch, train_loss, value)
            if event is not None:
                events.append(event)
        losses.append((epoch, train_loss))
        return events

    def _new_detector(self, tower: str, segment: str, losses: list[tuple[int, float]]) -> GrokkingDetector:
        """A detector for a segment seen first now, given the tower's earlier losses."""
        detector = self._detectors[(tower, segment)] = GrokkingDetector(self.config, tower, segment)
        for epoch, loss in losses:
            detector.update(epoch, loss)
        return detector

    def summary(self) -> dict[str, dict[str, str]]:
        """tower -> segment -> verdict, saying "none detected" where nothing fired."""
        verdicts: dict[str, dict[str, str]] = {}
        for (tower, segment), detector in self._detectors.items():
            fired = detector.events
            verdicts.setdefault(tower, {})[segment] = fired[0].describe() if fired else NONE_DETECTED
        return verdicts
