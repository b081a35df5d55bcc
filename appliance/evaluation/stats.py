"""Means with percentile-bootstrap 95% intervals (Efron & Tibshirani 1993, ch. 13): resample the
questions with replacement B times, take the mean of each resample, report the 2.5th and 97.5th
percentiles of those means. A fixed seed makes an evaluation's interval reproducible.

A paired comparison resamples question indices once and applies them to both evaluations (the
mean of per-question differences), so the question-to-question spread that both models share
cancels: the interval is that of the difference, far narrower than two separate intervals.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

RESAMPLES = 1000
SEED = 13
LEVEL = 0.95


def bootstrap_means(values: Sequence[float], *, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """Shape (resamples,): the means of `resamples` resamples of `values` (length n >= 1)."""
    data = np.asarray(values, dtype=np.float64)
    if data.ndim != 1 or data.size == 0:
        raise ValueError("bootstrap needs a non-empty 1-d sequence of values")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, data.size, size=(resamples, data.size))
    return data[idx].mean(axis=1)  # type: ignore[no-any-return]


def interval(values: Sequence[float], *, resamples: int = RESAMPLES, seed: int = SEED,
             level: float = LEVEL) -> tuple[float, float, float]:
    """(mean, low, high): the sample mean and its percentile-bootstrap `level` interval.
    One value: (v, v, v). Raises ValueError on an empty sequence."""
    means = bootstrap_means(values, resamples=resamples, seed=seed)
    alpha = (1 - level) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    mean = float(np.mean(np.asarray(values, dtype=np.float64)))
    # The percentile interval of a skewed statistic can miss the sample mean by a rounding error.
    return mean, min(float(low), mean), max(float(high), mean)


def paired_interval(baseline: Sequence[float], candidate: Sequence[float], *, resamples: int = RESAMPLES,
                    seed: int = SEED, level: float = LEVEL) -> tuple[float, float, float]:
    """(mean, low, high) of candidate[i] - baseline[i] over questions i, paired bootstrap. The two
    sequences must have the same length (the same questions in the same order)."""
    if len(baseline) != len(candidate):
        raise ValueError(f"paired values differ in length: {len(baseline)} vs {len(candidate)}")
    diffs = np.asarray(candidate, dtype=np.float64) - np.asarray(baseline, dtype=np.float64)
    return interval(diffs.tolist(), resamples=resamples, seed=seed, level=level)
