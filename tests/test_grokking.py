import dataclasses
import json
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

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
    validation_stalled_on_flat_loss,
)

DEFAULT = GrokkingConfig()
SEEDS = range(5)
SPACINGS = (1, 2, 5, 10)


@dataclass(frozen=True)
class Record:
    """One epoch as a training loop sees it: a loss always, a metric when it validated."""

    epoch: int
    train_loss: float
    val_metric: float | None


def first_event(curve: Sequence[Record | Evaluation], config: GrokkingConfig = DEFAULT) -> GrokkingEvent | None:
    detector = GrokkingDetector(config, tower="tower", segment="overall")
    events = [event for r in curve if (event := detector.update(r.epoch, r.train_loss, r.val_metric))]
    assert len(events) <= 1
    return events[0] if events else None


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def synthetic_run(
    epochs: int,
    seed: int,
    loss: Callable[[int], float],
    metric: Callable[[int], float],
    loss_noise: float = 0.005,
    metric_noise: float = 0.005,
    validated: Callable[[int], bool] = lambda t: True,
) -> list[Record]:
    """Every epoch's loss, and the metric on the epochs `validated` picks.

    Both noises are drawn for every epoch, so runs that differ only in `validated` share them."""
    rng = random.Random(seed)
    records = []
    for t in range(epochs):
        train_loss, value = loss(t) + rng.gauss(0, loss_noise), metric(t) + rng.gauss(0, metric_noise)
        records.append(Record(t, train_loss, value if validated(t) else None))
    return records


def every(spacing: int, first: int) -> Callable[[int], bool]:
    """Validate at epochs first, first + spacing, ...: `fit` starts at spacing - 1."""
    return lambda t: t >= first and (t - first) % spacing == 0


def evaluations_only(curve: list[Record]) -> list[Record]:
    return [r for r in curve if r.val_metric is not None]


def early_plateau_loss(t: int) -> float:
    """Drops from ~2 to a 0.1 plateau: within 1% of the 2.0 drop from epoch 5 ln 100 ~ 23 on."""
    return 0.1 + 2.0 * math.exp(-t / 5)


def power_law_loss(t: int) -> float:
    """Keeps falling, ever more slowly: 0.2 + 1.5 / (t + 1)."""
    return 0.2 + 1.5 / (t + 1)


def geometric_loss(t: int) -> float:
    return 0.3 + 2.0 * 0.96**t


def still_falling_loss(t: int) -> float:
    """Geometric too, but slow: at epoch 200, 0.99^200 = 13% of its drop is still to come."""
    return 0.3 + 2.0 * 0.99**t


SLOW_LOSSES = {"power_law": power_law_loss, "geometric": geometric_loss, "still_falling": still_falling_loss}
JUMP_AT = 200


def late_jump(t: int) -> float:
    """0.1 -> 0.4 around epoch 200, over ~16 epochs."""
    return 0.1 + 0.3 * sigmoid((t - JUMP_AT) / 4)


def slow_loss_runs(family: str, spacing: int, fed: str, seed: int) -> dict[str, list[Record]]:
    """300 epochs of a slowly falling loss, with the late jump and without, validated every `spacing`
    epochs: with every epoch's loss as `fit` keeps it, or the evaluations alone, the first at epoch 0."""
    every_epoch = fed == "every epoch's loss"
    schedule = every(spacing, first=spacing - 1 if every_epoch else 0)
    runs = {
        name: synthetic_run(300, seed, SLOW_LOSSES[family], metric, 0.001, 0.01, schedule)
        for name, metric in (("jump", late_jump), ("flat", lambda t: 0.1))
    }
    return runs if every_epoch else {name: evaluations_only(curve) for name, curve in runs.items()}


FED = ["every epoch's loss", "evaluations only"]


@pytest.fixture(scope="module")
def grokking_run() -> list[Evaluation]:
    return train_modular_addition(ModularAdditionConfig())


# --- real grokking -------------------------------------------------------------------------------


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


def test_real_run_was_stalled_on_a_flat_loss_before_it_grokked(grokking_run: list[Evaluation]) -> None:
    """Early stopping would have ended this run while it memorised; the watch state says so."""
    memorised = next(i for i, e in enumerate(grokking_run) if e.train_loss < 0.01)
    event = first_event(grokking_run)
    assert event is not None and event.epoch > grokking_run[memorised].epoch
    assert validation_stalled_on_flat_loss(grokking_run[: memorised + 1], patience=5)
    assert not validation_stalled_on_flat_loss(grokking_run, patience=5)  # climbing to new bests at the end


# --- late jumps that fire --------------------------------------------------------------------------


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
    # Noiseless, the loss is within 1% of its 2.0 drop (0.02) from epoch 5 ln 100 ~ 23 on. With noise
    # (std 0.005), the running best ends ~2.5 stds below 0.1, which eats most of that margin: settling
    # comes later, by up to 5 ln 4 ~ 7 epochs for a margin of 0.005, and rarely more.
    assert 20 <= event.plateau_epoch <= 40
    assert jump_at - 4 * width <= event.epoch <= jump_at + 2 * width
    assert event.confirmed_epoch >= event.epoch + DEFAULT.persist_evals
    assert event.val_before < low + (high - low) / 4  # measured from the low plateau


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("family", ["power_law", "geometric"])
@pytest.mark.parametrize("fed", FED)
def test_late_jump_on_a_slowly_falling_loss_is_found_at_every_spacing(family: str, spacing: int, fed: str) -> None:
    """A loss that never stops falling still flattens relative to what it gained: by epoch 200 it
    has been within 1% of its best for over a quarter of the run, however often it is evaluated."""
    for seed in range(3):
        runs = slow_loss_runs(family, spacing, fed, seed)

        event = first_event(runs["jump"])

        assert event is not None, seed
        # The threshold is 0.1 + max(25% of 0.1, 4 noise stds = 0.04): the sigmoid clears it at
        # 200 - 4 ln(0.3 / 0.04 - 1) ~ 192.5, give or take the noise; the first evaluation after
        # that is at most one spacing later.
        assert JUMP_AT - 16 <= event.epoch <= JUMP_AT + 8 + spacing
        assert first_event(runs["flat"]) is None, seed


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("fed", FED)
def test_jump_while_the_loss_still_falls_is_silent_at_every_spacing(spacing: int, fed: str) -> None:
    """0.3 + 2 * 0.99^t settles (within 1% of its best at t) only ~6 epochs before t = 200: not flat,
    at any spacing."""
    for seed in range(3):
        jump = slow_loss_runs("still_falling", spacing, fed, seed)["jump"]
        assert first_event(jump) is None, seed
        # Only the still-falling loss keeps it silent: ignore the loss and the jump is found.
        assert first_event(jump, dataclasses.replace(DEFAULT, plateau_tolerance=1e9)) is not None, seed


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("width", [0.0, 2.0])
def test_fires_on_a_late_jump_from_a_low_base(seed: int, width: float) -> None:
    """A cold-item NDCG: ~0.05 with noise 0.005, rising to ~0.09 around epoch 60 (a step, or over ~8 epochs)."""
    rise = (lambda t: float(t >= 60)) if width == 0 else (lambda t: sigmoid((t - 60) / width))
    curve = synthetic_run(100, seed, early_plateau_loss, lambda t: 0.05 + 0.04 * rise(t))

    event = first_event(curve)

    assert event is not None
    assert 60 - 4 * width <= event.epoch <= 60 + 2 * width + 1
    # Measured from the base (its median of 8 has a noise std of ~0.002), not from the rise; every
    # value from the jump on cleared it by at least 4 noise stds (0.02), so their median did too.
    assert event.val_before < 0.056 and event.val_after > 0.07


def test_a_gradual_low_base_jump_needs_the_rise_gap() -> None:
    """Measured from the K evaluations right before it, a rise over several evaluations is measured
    from its own first steps, and the baseline climbs with it: without the gap, some of these runs
    are missed."""
    curves = [
        synthetic_run(100, seed, early_plateau_loss, lambda t: 0.05 + 0.04 * sigmoid((t - 60) / 2))
        for seed in range(10)
    ]
    assert all(first_event(curve) is not None for curve in curves)
    no_gap = dataclasses.replace(DEFAULT, rise_evals=0)
    assert any(first_event(curve, no_gap) is None for curve in curves)


@pytest.mark.parametrize("seed", range(10))
def test_silent_on_slow_drift_from_a_low_base(seed: int) -> None:
    curve = synthetic_run(200, seed, early_plateau_loss, lambda t: 0.05 + 0.0005 * max(0, t - 30))
    assert curve[-1].val_metric > 2 * 0.05  # more than doubles, more than the jumps above ...
    assert first_event(curve) is None  # ... but never suddenly


# --- what does not fire ----------------------------------------------------------------------------


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
    # Only lateness keeps it silent: count the loss flat as soon as it settled and it fires.
    assert first_event(curve, dataclasses.replace(DEFAULT, plateau_fraction=0.0)) is not None


@pytest.mark.parametrize("seed", SEEDS)
def test_silent_on_one_epoch_spike(seed: int) -> None:
    curve = synthetic_run(200, seed, loss=early_plateau_loss, metric=lambda t: 0.3 + 0.3 * (t == 100))
    assert first_event(curve) is None
    # Only persistence keeps it silent: report without confirmation and it fires at the spike.
    unconfirmed = first_event(curve, dataclasses.replace(DEFAULT, persist_evals=0))
    assert unconfirmed is not None and unconfirmed.epoch == 100


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    start=st.integers(60, 140),
    length=st.integers(1, DEFAULT.persist_evals),
    height=st.floats(0.15, 1.0),
)
def test_silent_on_bumps_shorter_than_the_persistence_window(seed: int, start: int, length: int, height: float) -> None:
    def bump(n: int) -> Callable[[int], float]:
        return lambda t: 0.3 + height * (start <= t < start + n)

    assert first_event(synthetic_run(200, seed, early_plateau_loss, bump(length))) is None
    # The threshold is max(25% of 0.3, 4 noise stds of 0.005) = 0.075, well under the bump: held one
    # evaluation longer, the same bump is a jump.
    event = first_event(synthetic_run(200, seed, early_plateau_loss, bump(DEFAULT.persist_evals + 1)))
    assert event is not None and event.epoch == start


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


# --- guarantees of the rule ------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(
    family=st.sampled_from(sorted(SLOW_LOSSES)),
    spacing=st.sampled_from(SPACINGS),
    seed=st.integers(0, 2**16),
    jump=st.booleans(),
    log_scale=st.floats(-3, 3),
    shift=st.floats(-50, 50),
    unit=st.integers(1, 100),
)
def test_verdict_ignores_loss_scale_and_shift_and_epoch_units(
    family: str, spacing: int, seed: int, jump: bool, log_scale: float, shift: float, unit: int
) -> None:
    """The loss enters only through differences and epochs only through ratios, so a loss in other
    units (times 1e-3 .. 1e3, plus a constant) and epochs counted in steps give the same verdict."""
    scale = 10.0**log_scale
    metric = late_jump if jump else lambda t: 0.1
    curve = synthetic_run(300, seed, SLOW_LOSSES[family], metric, 0.001, 0.01, every(spacing, spacing - 1))
    rescaled = [Record(unit * r.epoch, scale * r.train_loss + shift, r.val_metric) for r in curve]

    event, event_rescaled = first_event(curve), first_event(rescaled)

    assert (event is None) == (event_rescaled is None)
    if event is not None:
        # x -> scale * x + shift, rounded, is monotone: the running best of the rescaled losses is
        # exactly the rescaled running best, so even the plateau level compares exactly.
        assert event_rescaled == dataclasses.replace(
            event,
            epoch=unit * event.epoch,
            confirmed_epoch=unit * event.confirmed_epoch,
            plateau_epoch=unit * event.plateau_epoch,
            plateau_train_loss=scale * event.plateau_train_loss + shift,
        )
    as_evaluations = [Evaluation(r.epoch, r.train_loss, r.val_metric) for r in evaluations_only(curve)]
    rescaled_evaluations = [Evaluation(r.epoch, r.train_loss, r.val_metric) for r in evaluations_only(rescaled)]
    for n in range(0, len(as_evaluations), 7):
        assert validation_stalled_on_flat_loss(as_evaluations[:n], 3) == validation_stalled_on_flat_loss(
            rescaled_evaluations[:n], 3
        )


@settings(max_examples=200, deadline=None)
@given(drop_at=st.integers(0, 20), metric=st.lists(st.floats(0, 1), max_size=80))
def test_any_event_keeps_the_rule_guarantees(drop_at: int, metric: list[float]) -> None:
    """A loss that drops once at `drop_at` and an arbitrary rising metric."""
    curve = [Evaluation(t, 2.0 if t < drop_at else 0.1, v) for t, v in enumerate(sorted(metric))]
    event = first_event(curve)
    if event is not None:
        # The loss settles at the drop, and is flat once it stayed settled for a quarter of the run.
        assert event.plateau_epoch == drop_at
        assert event.epoch - drop_at >= DEFAULT.plateau_fraction * event.epoch
        assert event.plateau_train_loss == 0.1
        assert event.confirmed_epoch >= event.epoch + DEFAULT.persist_evals
        assert event.confirmed_epoch >= DEFAULT.earliest_report
        assert event.jump_abs >= DEFAULT.min_jump_abs


def test_earliest_report_is_the_one_the_docstring_states() -> None:
    """A loss that never moved is flat, and a step right after the first baseline is reported as
    soon as it persisted: at evaluation K + G + P, and not before."""
    config = DEFAULT
    step = config.baseline_window + config.rise_evals
    curve = [Evaluation(t, 1.0, float(t >= step)) for t in range(step + 10)]
    detector = GrokkingDetector(config, "tower", "overall")
    fired_at = [t for t, e in enumerate(curve) if detector.update(e.epoch, e.train_loss, e.val_metric)]
    assert fired_at == [config.earliest_report] == [17]  # 17: the module docstring's number
    assert detector.events[0].epoch == step


# --- the watch state -------------------------------------------------------------------------------


def watched(loss: Callable[[int], float], metric: Sequence[float]) -> list[Evaluation]:
    return [Evaluation(t, loss(t), value) for t, value in enumerate(metric)]


@pytest.mark.parametrize(
    ("loss", "best_at", "stalled"),
    [
        (early_plateau_loss, 40, True),  # flat loss, no new best in the last 5 of 61 evaluations
        (early_plateau_loss, 57, False),  # flat loss, but a new best 4 evaluations ago
        (lambda t: 0.1 + 2.0 * math.exp(-t / 40), 40, False),  # validation stuck, loss still falling
    ],
)
def test_validation_stalled_on_flat_loss(loss: Callable[[int], float], best_at: int, stalled: bool) -> None:
    metric = [0.2 if t == best_at else 0.1 for t in range(61)]
    assert validation_stalled_on_flat_loss(watched(loss, metric), patience=5) == stalled


def test_a_tie_with_the_best_is_no_improvement_as_in_early_stopping() -> None:
    metric = [0.2 if t in (40, 58) else 0.1 for t in range(61)]
    assert validation_stalled_on_flat_loss(watched(early_plateau_loss, metric), patience=5)
    assert not validation_stalled_on_flat_loss(watched(early_plateau_loss, metric[:-1] + [0.2 + 1e-9]), patience=5)


def test_stall_needs_more_history_than_patience() -> None:
    history = watched(lambda t: 1.0, [0.1] * 5)
    assert not validation_stalled_on_flat_loss(history, patience=5)
    assert validation_stalled_on_flat_loss(history, patience=4)
    with pytest.raises(ValueError, match="patience"):
        validation_stalled_on_flat_loss(history, patience=0)


# --- monitor and input checks ----------------------------------------------------------------------


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


def test_monitor_gives_every_segment_all_of_its_towers_losses() -> None:
    """Epochs without validation, and those before a segment first appears, still reach its detector."""
    curve = synthetic_run(300, 0, power_law_loss, late_jump, 0.001, 0.01, every(10, 9))
    from_100 = [r if r.epoch >= 100 else dataclasses.replace(r, val_metric=None) for r in curve]
    monitor = GrokkingMonitor()
    for r, late in zip(curve, from_100, strict=True):
        segments = {
            name: value for name, value in (("all", r.val_metric), ("late", late.val_metric)) if value is not None
        }
        monitor.update("tower", r.epoch, r.train_loss, segments)

    expected = [first_event(curve), first_event(from_100)]
    assert None not in expected
    assert monitor.events == [
        dataclasses.replace(expected[0], segment="all"),
        dataclasses.replace(expected[1], segment="late"),
    ]
    assert first_event(evaluations_only(curve)) != expected[0]  # the unvalidated epochs did matter


def test_detector_rejects_out_of_order_or_non_finite_evaluations() -> None:
    detector = GrokkingDetector(DEFAULT, tower="tower", segment="overall")
    detector.update(1, 0.5, 0.1)
    with pytest.raises(ValueError, match="tower/overall: epochs must increase: got 1 after 1"):
        detector.update(1, 0.5, 0.1)
    with pytest.raises(ValueError, match="non-finite values at epoch 2: {'val_metric': nan}"):
        detector.update(2, 0.5, math.nan)
    with pytest.raises(ValueError, match="non-finite values at epoch 2: {'train_loss': inf}"):
        detector.update(2, math.inf)
    assert detector.history == (Evaluation(1, 0.5, 0.1),)


def test_monitor_rejects_a_bad_epoch_before_recording_any_of_it() -> None:
    monitor = GrokkingMonitor()
    monitor.update("tower", 0, 0.5, {})
    with pytest.raises(ValueError, match=r"tower: non-finite values at epoch 1: {'val_metric\[cold_items\]': nan}"):
        monitor.update("tower", 1, 0.5, {"all": 0.1, "cold_items": math.nan})
    with pytest.raises(ValueError, match="tower: epochs must increase"):
        monitor.update("tower", 0, 0.5, {"all": 0.1})
    monitor.update("tower", 1, 0.5, {"all": 0.1})  # nothing of the rejected epoch 1 was kept
    assert monitor.summary() == {"tower": {"all": NONE_DETECTED}}
