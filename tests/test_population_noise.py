import math

import pytest

from population.noise import is_improvement, noise_sd


def test_without_noise_estimate_any_lower_mean_wins():
    assert is_improvement(0.999, 1, 1.0, 1, None)
    assert is_improvement(0.999, 1, 1.0, 1, 0.0)
    assert not is_improvement(1.0, 1, 1.0, 1, None)


def test_gap_must_beat_noise():
    # threshold = 1.645 * 0.01 * sqrt(2) ≈ 0.0233
    assert not is_improvement(0.98, 1, 1.0, 1, 0.01)
    assert is_improvement(0.97, 1, 1.0, 1, 0.01)


def test_more_trials_shrink_the_threshold():
    # 0.015 better: not enough on one trial each, enough on eight each (threshold ≈ 0.0082)
    assert not is_improvement(0.985, 1, 1.0, 1, 0.01)
    assert is_improvement(0.985, 8, 1.0, 8, 0.01)


def test_worse_is_never_an_improvement():
    assert not is_improvement(1.1, 10, 1.0, 10, 0.01)


def test_needs_trials():
    with pytest.raises(ValueError):
        is_improvement(1.0, 0, 1.0, 1, 0.01)


def test_noise_sd():
    assert noise_sd([]) is None
    assert noise_sd([1.0]) is None
    assert noise_sd([1.0, 1.0]) == 0.0
    assert math.isclose(noise_sd([1.0, 1.2]), math.sqrt(0.02))
