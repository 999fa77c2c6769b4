"""Statistics over seeds: IQM, percentile-bootstrap intervals, curve bands, steps to a threshold,
curves on a common step grid and a run's final value. numpy and scipy only (no torch), so the
probes in benchmarks/ can use them too."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

Curve = tuple[np.ndarray, np.ndarray]  # (steps [N], values [N])


def iqm(x: Sequence[float]) -> float:
    """Interquartile mean: the mean of the middle 50% (scipy.stats.trim_mean(x, 0.25))."""
    from scipy import stats

    return float(stats.trim_mean(np.asarray(x, dtype=float), 0.25))


@dataclass
class Interval:
    low: float
    high: float
    note: str = ""  # why the interval is degenerate, when it is


def bootstrap_ci(x: Sequence[float], confidence: float = 0.95, n_resamples: int = 10_000, seed: int = 0) -> Interval:
    """Percentile bootstrap CI of the mean over seeds (scipy.stats.bootstrap).

    Percentile, not scipy's default BCa: with 3-10 seeds BCa's acceleration estimate is unstable
    and undefined on ties (rliable uses percentile intervals too). n = 1 or all-equal samples
    have no spread to resample: the interval is the value itself, and ``note`` says so.
    """
    from scipy import stats

    a = np.asarray(x, dtype=float)
    if a.size == 0:
        return Interval(math.nan, math.nan, "no runs")
    if a.size == 1:
        return Interval(float(a[0]), float(a[0]), "n=1: CI = the value")
    if np.all(a == a[0]):
        return Interval(float(a[0]), float(a[0]), "all seeds equal: CI = the value")
    res = stats.bootstrap((a,), np.mean, confidence_level=confidence, n_resamples=n_resamples,
                          method="percentile", rng=np.random.default_rng(seed))
    return Interval(float(res.confidence_interval.low), float(res.confidence_interval.high))


def curve_band(curves: np.ndarray, confidence: float = 0.95, n_resamples: int = 1000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and percentile-bootstrap CI band over seeds of resampled curves [n_seeds, G]."""
    from scipy import stats

    mean = curves.mean(axis=0)  # [G]
    if curves.shape[0] < 2:
        return mean, mean.copy(), mean.copy()
    res = stats.bootstrap((curves,), np.mean, axis=0, confidence_level=confidence, n_resamples=n_resamples,
                          method="percentile", vectorized=True, rng=np.random.default_rng(seed))
    return mean, res.confidence_interval.low, res.confidence_interval.high


def trailing_mean(values: np.ndarray, window: int) -> np.ndarray:
    """m[i] = mean(values[i-window+1 : i+1]); NaN where fewer than `window` points exist yet."""
    v = np.asarray(values, dtype=float)
    out = np.full(v.shape, np.nan)
    if window < 1 or v.size < window:
        return out
    c = np.concatenate([[0.0], np.cumsum(v)])
    out[window - 1 :] = (c[window:] - c[:-window]) / window
    return out


def steps_to_threshold(steps: np.ndarray, values: np.ndarray, threshold: float, window: int) -> float | None:
    """First logged step at which the trailing mean of `window` points (fewer if the run logged
    fewer) reaches `threshold`; None if it never does."""
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return None
    m = trailing_mean(v, min(window, v.size))
    hit = np.nonzero(m >= threshold)[0]
    return float(steps[hit[0]]) if hit.size else None


def resample(steps: np.ndarray, values: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """A curve logged at its own steps, linearly interpolated onto a common step grid (inside its
    range; callers choose the grid inside every curve's range, so nothing is extrapolated)."""
    return np.interp(grid, steps, values)


def common_grid(curves: Sequence[tuple[np.ndarray, np.ndarray]], points: int = 200) -> np.ndarray | None:
    """A step grid inside every curve's logged range: [max of first steps, min of last steps]."""
    if not curves or any(len(s) == 0 for s, _ in curves):
        return None
    lo = max(float(s[0]) for s, _ in curves)
    hi = min(float(s[-1]) for s, _ in curves)
    if hi < lo:
        return None
    if hi == lo:
        return np.array([lo])
    return np.linspace(lo, hi, points)


def final_value(curve: Curve | None, total_steps: int | None, frac: float) -> float | None:
    """Mean of the points logged in the last `frac` of the run's steps (at least the last one)."""
    if curve is None or len(curve[0]) == 0:
        return None
    steps, vals = curve
    end = total_steps if total_steps is not None else int(steps[-1])
    sel = vals[steps > end * (1.0 - frac)]
    return float(sel.mean()) if sel.size else float(vals[-1])

