"""The divergence guard on hand-made loss sequences: when it fires, what it names, what it ignores."""
import math

import pytest

from components.training.divergence import DivergenceGuard, LossDiverged, NonFiniteLoss


def feed(guard, losses, phase=""):
    for step, loss in enumerate(losses, start=1):
        guard.check(loss, 1, step, step, phase)


def test_a_loss_four_times_its_start_over_a_full_window_diverges():
    guard = DivergenceGuard(factor=4.0, window=3, references={})
    with pytest.raises(LossDiverged) as error:
        feed(guard, [1.0, 6.0, 6.0])  # mean 13/3 = 4.33 > 4 x 1.0
    assert (error.value.step, error.value.window, error.value.reference) == (3, 3, 1.0)
    assert error.value.mean == pytest.approx(13 / 3)
    assert "epoch 1, step 3" in str(error.value)


def test_noise_and_a_short_spike_do_not():
    guard = DivergenceGuard(factor=4.0, window=3, references={})
    feed(guard, [1.0, 1.3, 0.9, 9.0, 1.0, 0.2, 0.01])  # worst 3-step mean: 11.2 / 3 = 3.73
    guard = DivergenceGuard(factor=4.0, window=3, references={})
    feed(guard, [1.0, 12.5])  # the window is not yet full


def test_every_phase_has_its_own_reference():
    references = {}
    guard = DivergenceGuard(factor=2.0, window=2, references=references)
    feed(guard, [1.0, 1.1], phase="classification")
    feed(guard, [5.0, 5.5, 6.0], phase="detection")  # 5x the classification start, but its own phase
    assert references == {"classification": 1.0, "detection": 5.0}
    with pytest.raises(LossDiverged):
        feed(guard, [2.5, 2.5], phase="classification")


def test_a_restored_reference_is_kept():
    guard = DivergenceGuard(factor=4.0, window=2, references={"": 0.5})
    with pytest.raises(LossDiverged, match=r"the first step's 0\.5"):
        feed(guard, [2.2, 2.2])


def test_nan_always_fails_and_a_null_factor_checks_nothing_else():
    guard = DivergenceGuard(factor=None, window=2, references={})
    feed(guard, [1.0, 100.0, 1000.0])
    with pytest.raises(NonFiniteLoss, match=r"loss became nan at epoch 1, step 2"):
        feed(guard, [1.0, math.nan])


def test_a_negative_reference_switches_the_ratio_off():
    guard = DivergenceGuard(factor=4.0, window=2, references={})
    feed(guard, [-0.5, 3.0, 30.0])  # an uncertainty-weighted total can start below zero
