"""Noise-aware comparison of val_bpb scores.

Two trainings of the same `train.py` under different seeds differ in val_bpb by a few thousandths
of a bit per byte. A greedy loop that keeps any lower number (as autoresearch does) therefore
keeps seed changes and lucky draws as "improvements", and its chain of champions drifts on noise.
evo measures that noise once per run (the sd over the seed's replicate trials) and only calls a
newcomer better when the gap beats what noise alone would produce, given how many trials each
side's mean rests on.
"""

from __future__ import annotations

import math
from collections.abc import Iterable


def is_improvement(
    new_mean: float,
    new_n: int,
    old_mean: float,
    old_n: int,
    sigma: float | None,
    z: float = 1.645,
) -> bool:
    """Is `new_mean` lower than `old_mean` by more than seed noise explains?

    A one-sided z-test on the difference of two means with a known per-trial sd `sigma`: the
    standard error of the difference is `sigma * sqrt(1/new_n + 1/old_n)`, so re-training a
    champion with more seeds (larger n) makes it harder to dislodge by a single lucky trial.
    The default z = 1.645 is a 5 % false-replacement rate per comparison. Without a noise
    estimate (`sigma` None or 0) this is a strict `<`, the best that can be done.
    """
    if new_n < 1 or old_n < 1:
        raise ValueError(f"both means need at least one trial (got n={new_n} and n={old_n})")
    if not sigma:
        return new_mean < old_mean
    return new_mean < old_mean - z * sigma * math.sqrt(1.0 / new_n + 1.0 / old_n)


def noise_sd(values: Iterable[float]) -> float | None:
    """Sample standard deviation (n - 1) of replicate val_bpb values; None below two values,
    since one trial says nothing about seed-to-seed spread."""
    xs = [float(v) for v in values]
    if len(xs) < 2:
        return None
    mean = sum(xs) / len(xs)
    return math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1))
