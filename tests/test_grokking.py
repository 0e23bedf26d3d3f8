import dataclasses
import json
import math
import random
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from modular_addition import ModularAdditionConfig, train_modular_addition

from grec_dagster.grokking import (
    NONE_DETECTED,
    Evaluation,
    GrokkingConfig,
    GrokkingDetector,
    GrokkingEvent,
    GrokkingMonitor,
)

DEFAULT = GrokkingConfig()
SEEDS = range(5)


def first_event(curve: list[Evaluation], config: GrokkingConfig = DEFAULT) -> GrokkingEvent | None:
    detector = GrokkingDetector(config, tower="tower", segment="overall")
    events = [event for e in curve if (event := detector.update(e.epoch, e.train_loss, e.val_metric))]
    assert len(events) <= 1
    return events[0] if events else None


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def synthetic_run(
    n_evals: int,
    seed: int,
    loss: Callable[[int], float],
    metric: Callable[[int], float],
    loss_noise: float = 0.005,
    metric_noise: float = 0.005,
) -> list[Evaluation]:
    rng = random.Random(seed)
    return [
        Evaluation(t, loss(t) + rng.gauss(0, loss_noise), metric(t) + rng.gauss(0, metric_noise))
        for t in range(n_evals)
    ]


def early_plateau_loss(t: int) -> float:
    """Drops from ~2 to a 0.1 plateau within ~20 evaluations."""
    return 0.1 + 2.0 * math.exp(-t / 5)


@pytest.fixture(scope="module")
def grokking_run() -> list[Evaluation]:
    return train_modular_addition(ModularAdditionConfig())


def test_fires_on_real_modular_addition_grokking(grokking_run: list[Evaluation]) -> None:
    memorised = next(e.epoch for e in grokking_run if e.train_loss < 0.01)
    # The MLP memorises first, accuracy falls to ~0, so 1% marks the start of the climb.
    climb_starts = next(e.epoch for e in grokking_run if e.epoch > memorised and e.val_metric >= 0.01)
    half_way = next(e.epoch for e in grokking_run if e.val_metric >= 0.5)
    assert [e.val_metric for e in grokking_run if e.epoch == memorised][0] < 0.01
    assert grokking_run[-1].val_metric > 0.9  # the run really grokked

    event = first_event(grokking_run)

    assert event is not None
    assert event.plateau_epoch <= memorised  # the plateau is where the loss reached ~0 ...
    assert event.epoch >= 2 * memorised  # ... and the jump came well after: later than memorising took
    assert climb_starts <= event.epoch <= half_way
    assert event.plateau_train_loss < 0.01
    assert event.val_before < 0.01 < event.val_after  # from the memorisation floor, upwards


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(
    ("n_evals", "jump_at", "width", "low", "high", "noise"),
    [
        (200, 120, 3.0, 0.1, 0.7, 0.01),  # accuracy-like, hundreds of evaluations
        (80, 50, 1.5, 0.05, 0.08, 0.002),  # recall@k-like, per-epoch evaluations
    ],
)
def test_fires_on_late_sigmoid_jump(
    seed: int, n_evals: int, jump_at: int, width: float, low: float, high: float, noise: float
) -> None:
    curve = synthetic_run(
        n_evals,
        seed,
        loss=early_plateau_loss,
        metric=lambda t: low + (high - low) * sigmoid((t - jump_at) / width),
        metric_noise=noise,
    )

    event = first_event(curve)

    assert event is not None
    assert event.plateau_epoch <= 35 < jump_at - 4 * width  # the loss was flat long before
    assert jump_at - 4 * width <= event.epoch <= jump_at + 2 * width
    assert event.confirmed_epoch == event.epoch + DEFAULT.persist_evals
    assert event.val_before < low + (high - low) / 4  # measured from the low plateau


@pytest.mark.parametrize("seed", SEEDS)
def test_silent_when_loss_and_metric_improve_together_steadily(seed: int) -> None:
    curve = synthetic_run(
        200,
        seed,
        loss=lambda t: 0.1 + 2.0 * math.exp(-t / 20),
        metric=lambda t: 0.1 + 0.6 * (1 - math.exp(-t / 20)),
    )
    assert first_event(curve) is None
    # Only the still-falling loss keeps it silent: ignore the loss and it fires.
    assert first_event(curve, dataclasses.replace(DEFAULT, plateau_tolerance=1e9)) is not None


@pytest.mark.parametrize("seed", SEEDS)
def test_silent_when_loss_drops_with_a_late_metric_jump(seed: int) -> None:
    """A late second learning phase: the metric jumps, but the loss drops with it."""
    curve = synthetic_run(
        200,
        seed,
        loss=lambda t: early_plateau_loss(t) + 0.5 * sigmoid((120 - t) / 3),
        metric=lambda t: 0.1 + 0.6 * sigmoid((t - 120) / 3),
    )
    assert first_event(curve) is None
    # Only the moving loss keeps it silent: ignore the loss and it fires.
    assert first_event(curve, dataclasses.replace(DEFAULT, plateau_tolerance=1e9)) is not None


@pytest.mark.parametrize("seed", SEEDS)
def test_silent_when_jump_comes_as_the_loss_settles(seed: int) -> None:
    """Not late: the metric jumps while the loss is still finishing its descent."""
    curve = synthetic_run(
        100,
        seed,
        loss=lambda t: 0.1 + 2.0 * sigmoid((30 - t) / 2),
        metric=lambda t: 0.1 + 0.6 * sigmoid((t - 41) / 1.5),
        metric_noise=0.01,
    )
    assert first_event(curve) is None
    # Only the required delay keeps it silent: drop it and it fires.
    assert first_event(curve, dataclasses.replace(DEFAULT, min_delay=0)) is not None


@pytest.mark.parametrize("seed", SEEDS)
def test_silent_on_one_epoch_spike(seed: int) -> None:
    curve = synthetic_run(200, seed, loss=early_plateau_loss, metric=lambda t: 0.3 + 0.3 * (t == 100))
    assert first_event(curve) is None
    # Only persistence keeps it silent: report without confirmation and it fires at the spike.
    unconfirmed = first_event(curve, dataclasses.replace(DEFAULT, persist_evals=0))
    assert unconfirmed is not None and unconfirmed.epoch == 100


@pytest.mark.parametrize("seed", SEEDS)
def test_silent_on_slow_drift_after_plateau(seed: int) -> None:
    curve = synthetic_run(
        200, seed, loss=early_plateau_loss, metric=lambda t: 0.2 + 0.0015 * max(0, t - 30), metric_noise=0.002
    )
    assert curve[-1].val_metric - curve[30].val_metric > 0.2  # drifts far more than a jump needs ...
    assert first_event(curve) is None  # ... but never suddenly
    # A size threshold below the rise over a few evaluations would take the drift for jumps.
    smaller_jumps = dataclasses.replace(DEFAULT, min_jump_abs=0.004, min_jump_rel=0.0, noise_multiplier=0.0)
    assert first_event(curve, smaller_jumps) is not None


def test_silent_on_noisy_flat_metric() -> None:
    """A small segment (say cold items): recall around 0.05, noise std 0.02."""
    curves = [
        synthetic_run(300, seed, loss=early_plateau_loss, metric=lambda t: 0.05, metric_noise=0.02)
        for seed in range(30)
    ]
    assert all(first_event(curve) is None for curve in curves)
    # Only the noise-aware size threshold and persistence keep it silent.
    naive = dataclasses.replace(DEFAULT, noise_multiplier=0.0, persist_evals=0)
    assert any(first_event(curve, naive) is not None for curve in curves)


@settings(max_examples=200, deadline=None)
@given(drop_at=st.integers(0, 20), metric=st.lists(st.floats(0, 1), max_size=80))
def test_any_event_keeps_the_rule_guarantees(drop_at: int, metric: list[float]) -> None:
    """A loss that drops once at `drop_at` and an arbitrary rising metric."""
    curve = [Evaluation(t, 2.0 if t < drop_at else 0.1, v) for t, v in enumerate(sorted(metric))]
    event = first_event(curve)
    if event is not None:
        # A loss improving at drop_at is not flat for the next W evaluations, so no plateau spans it.
        assert event.confirmed_epoch < drop_at or event.plateau_epoch >= drop_at + DEFAULT.plateau_window
        assert event.epoch - event.plateau_epoch >= DEFAULT.min_delay
        assert event.confirmed_epoch == event.epoch + DEFAULT.persist_evals
        assert event.jump_abs >= DEFAULT.min_jump_abs


def test_monitor_reports_every_tower_and_segment() -> None:
    grokking = synthetic_run(200, 0, loss=early_plateau_loss, metric=lambda t: 0.1 + 0.6 * sigmoid((t - 120) / 3))
    flat = synthetic_run(200, 1, loss=early_plateau_loss, metric=lambda t: 0.3)
    monitor = GrokkingMonitor()
    fired: list[GrokkingEvent] = []
    for g, f in zip(grokking, flat, strict=True):
        fired += monitor.update(
            "lightgcn", g.epoch, g.train_loss, {"overall": g.val_metric, "cold_items": f.val_metric}
        )
        fired += monitor.update("text", f.epoch, f.train_loss, {"overall": f.val_metric})

    assert [(e.tower, e.segment) for e in fired] == [("lightgcn", "overall")]
    assert monitor.events == fired
    summary = monitor.summary()
    assert summary["lightgcn"]["overall"] == fired[0].describe()
    assert summary["lightgcn"]["cold_items"] == NONE_DETECTED
    assert summary["text"] == {"overall": NONE_DETECTED}
    assert json.loads(json.dumps(fired[0].to_dict()))["epoch"] == fired[0].epoch


def test_detector_rejects_out_of_order_or_non_finite_evaluations() -> None:
    detector = GrokkingDetector(DEFAULT, tower="tower", segment="overall")
    detector.update(1, 0.5, 0.1)
    with pytest.raises(ValueError, match="epochs must increase"):
        detector.update(1, 0.5, 0.1)
    with pytest.raises(ValueError, match="non-finite"):
        detector.update(2, math.nan, 0.1)
    assert detector.history == (Evaluation(1, 0.5, 0.1),)
