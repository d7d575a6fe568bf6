"""Statistics shared by the judge's agreement measures and the evaluation stage (pure)."""

from __future__ import annotations

import math


def wilson_interval(wins: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for a proportion (`wins` may be fractional: a tie counts half)."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = wins / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (centre - half, centre + half)


# Fewer samples than this and a figure is marked as such wherever a user reads it.
FEW = 20


def bootstrap_interval(stat, n: int, resamples: int = 2000, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of `stat(idx)` over `n` units (prompts) resampled with
    replacement. `stat` takes an index array, so one call can resample paired data (a policy's
    and the reference's answers to the same prompts) together, as a difference needs."""
    import numpy as np

    if n == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    draws = np.array([stat(rng.integers(0, n, n)) for _ in range(resamples)], dtype=float)
    draws = draws[np.isfinite(draws)]
    if not len(draws):
        return (float("nan"), float("nan"))
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(draws, [tail, 100 - tail])
    return (float(lo), float(hi))
