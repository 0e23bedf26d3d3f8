"""Grokking detector: flags sudden, late generalisation of a tower on one segment.

Grokking is a validation metric that jumps, and stays up, well after the training
loss has stopped improving. When a tower groks, the fusion gates should trust it
more, so each tower/segment is watched and the first such jump is reported.

The rule, for evaluations t = 0, 1, ... of one tower on one segment, with training
loss L_t and validation metric v_t (higher is better; pass -metric otherwise);
every threshold is a `GrokkingConfig` field:

1. Flat loss at t (t >= plateau_window = W): with running best m_t = min(L_0..L_t)
   and running worst M_t = max(L_0..L_t),
       m_{t-W} - m_t <= plateau_tolerance * (M_t - m_t),
   i.e. the last W evaluations brought at most that fraction of the whole
   improvement so far. Scale-free, and loss spikes do not move the running best.
2. Late: the loss is flat at every evaluation from j - min_delay through j + P
   (P = persist_evals); the plateau began at p, the first evaluation of that run.
3. Pre-jump level b_j = median(v_{j-K} .. v_{j-1}), K = baseline_window, and noise
   s_j = 1.4826 / sqrt(2) * MAD of the successive differences of v_{min(p, j-K)} .. v_{j-1}:
   a robust std of the metric on the plateau, which a steady trend (such as the
   start of a smooth jump) does not inflate.
4. Jump at j that persists: the metric stays up for P + 1 evaluations,
       min(v_j .. v_{j+P}) - b_j >= max(min_jump_abs, min_jump_rel * |b_j|, noise_multiplier * s_j),
   so neither a spike nor a bump shorter than P + 1 evaluations counts.

The event is reported on the update of evaluation j + P, so P evaluations after the
jump, and a detector fires at most once: grokking is a one-off phase change, and
re-firing would shift fusion weight toward the same tower again and again.
"""

import dataclasses
import itertools
import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_MAD_TO_STD = 1.4826  # scales a median absolute deviation to a Gaussian std
NONE_DETECTED = "none detected"


@dataclass(frozen=True)
class GrokkingConfig:
    """Thresholds of the rule in the module docstring, in evaluations and metric units.

    Defaults suit metrics in [0, 1], from per-epoch recommender training (tens of
    evaluations, recall around 0.05) to modular-addition grokking (accuracy from ~0
    to 1). The earliest possible report is at evaluation max(K, W + min_delay) + P = 13.
    """

    plateau_window: int = 5  # W: evaluations over which the loss must not improve
    plateau_tolerance: float = 0.01  # allowed improvement, as a fraction of the total
    min_delay: int = 5  # evaluations the loss must already be flat at the jump
    baseline_window: int = 8  # K: evaluations that define the pre-jump level
    min_jump_abs: float = 0.01  # smallest jump, in metric units
    min_jump_rel: float = 0.25  # smallest jump, as a fraction of the pre-jump level
    noise_multiplier: float = 4.0  # smallest jump, in noise stds of the metric on the plateau
    persist_evals: int = 3  # P: evaluations after the jump the metric must stay up

    def __post_init__(self) -> None:
        if self.plateau_window < 1:
            raise ValueError("plateau_window must be >= 1")
        if self.baseline_window < 2:
            raise ValueError("baseline_window must be >= 2 to estimate noise from differences")
        if self.min_delay < 0 or self.persist_evals < 0:
            raise ValueError("min_delay and persist_evals must be >= 0")
        if self.min_jump_abs <= 0:
            raise ValueError("min_jump_abs must be > 0, or any flat metric would jump")
        if min(self.plateau_tolerance, self.min_jump_rel, self.noise_multiplier) < 0:
            raise ValueError("tolerances and multipliers must be >= 0")


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
    confirmed_epoch: int  # evaluation j + P where it was reported
    plateau_epoch: int  # evaluation p where the flat training loss began
    plateau_train_loss: float  # best training loss by the jump: the plateau level
    val_before: float  # pre-jump level b_j
    val_after: float  # median of the metric over evaluations j .. j + P
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


class GrokkingDetector:
    """Applies the module's rule to one tower on one segment; fires at most once."""

    def __init__(self, config: GrokkingConfig, tower: str, segment: str) -> None:
        self.config = config
        self.tower = tower
        self.segment = segment
        self._history: list[Evaluation] = []
        self._best_loss: list[float] = []  # m_t
        self._worst_loss = -math.inf  # M_t of the latest evaluation
        self._flat: list[bool] = []
        self._event: GrokkingEvent | None = None

    @property
    def history(self) -> tuple[Evaluation, ...]:
        return tuple(self._history)

    @property
    def events(self) -> tuple[GrokkingEvent, ...]:
        """Empty, or the single event this detector fired."""
        return () if self._event is None else (self._event,)

    def update(self, epoch: int, train_loss: float, val_metric: float) -> GrokkingEvent | None:
        """Record one evaluation; return the event if it confirms a jump P evaluations back."""
        if self._history and epoch <= self._history[-1].epoch:
            raise ValueError(f"epochs must increase: got {epoch} after {self._history[-1].epoch}")
        if not (math.isfinite(train_loss) and math.isfinite(val_metric)):
            raise ValueError(f"non-finite evaluation at epoch {epoch}: {train_loss}, {val_metric}")
        self._history.append(Evaluation(epoch, train_loss, val_metric))
        self._best_loss.append(min(train_loss, self._best_loss[-1]) if self._best_loss else train_loss)
        self._worst_loss = max(self._worst_loss, train_loss)
        self._flat.append(self._loss_is_flat())
        if self._event is not None:
            return None
        self._event = self._confirmed_jump(len(self._history) - 1 - self.config.persist_evals)
        return self._event

    def _loss_is_flat(self) -> bool:
        t, window = len(self._best_loss) - 1, self.config.plateau_window
        if t < window:
            return False
        best = self._best_loss
        return best[t - window] - best[t] <= self.config.plateau_tolerance * (self._worst_loss - best[t])

    def _confirmed_jump(self, j: int) -> GrokkingEvent | None:
        config, last = self.config, len(self._history) - 1
        flat_from = j - config.min_delay
        if j < config.baseline_window or flat_from < 0 or not all(self._flat[flat_from:]):
            return None
        plateau = flat_from
        while self._flat[plateau - 1]:  # stops at 1 at the latest: _flat[0] is False
            plateau -= 1
        metric = [evaluation.val_metric for evaluation in self._history]
        before = statistics.median(metric[j - config.baseline_window : j])
        noise = _robust_std(metric[min(plateau, j - config.baseline_window) : j])
        threshold = max(config.min_jump_abs, config.min_jump_rel * abs(before), config.noise_multiplier * noise)
        if min(metric[j:]) - before < threshold:
            return None
        after = statistics.median(metric[j:])
        return GrokkingEvent(
            tower=self.tower,
            segment=self.segment,
            epoch=self._history[j].epoch,
            confirmed_epoch=self._history[last].epoch,
            plateau_epoch=self._history[plateau].epoch,
            plateau_train_loss=self._best_loss[j],
            val_before=before,
            val_after=after,
            jump_abs=after - before,
            jump_rel=(after - before) / abs(before) if before != 0 else None,
        )


def _robust_std(series: list[float]) -> float:
    """Noise std from the MAD of successive differences (each difference carries it twice)."""
    differences = [value - prior for prior, value in itertools.pairwise(series)]
    center = statistics.median(differences)
    return _MAD_TO_STD / math.sqrt(2) * statistics.median(abs(d - center) for d in differences)


class GrokkingMonitor:
    """One detector per (tower, segment), so every run records a verdict for each."""

    def __init__(self, config: GrokkingConfig = GrokkingConfig()) -> None:
        self.config = config
        self._detectors: dict[tuple[str, str], GrokkingDetector] = {}

    @property
    def events(self) -> list[GrokkingEvent]:
        return [event for detector in self._detectors.values() for event in detector.events]

    def update(
        self, tower: str, epoch: int, train_loss: float, val_metrics: Mapping[str, float]
    ) -> list[GrokkingEvent]:
        """Feed one evaluation of `tower` (one training loss, one metric per segment)."""
        events = []
        for segment, value in val_metrics.items():
            key = (tower, segment)
            if key not in self._detectors:
                self._detectors[key] = GrokkingDetector(self.config, tower, segment)
            event = self._detectors[key].update(epoch, train_loss, value)
            if event is not None:
                events.append(event)
        return events

    def summary(self) -> dict[str, dict[str, str]]:
        """tower -> segment -> verdict, saying "none detected" where nothing fired."""
        verdicts: dict[str, dict[str, str]] = {}
        for (tower, segment), detector in self._detectors.items():
            fired = detector.events
            verdicts.setdefault(tower, {})[segment] = fired[0].describe() if fired else NONE_DETECTED
        return verdicts
