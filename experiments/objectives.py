"""What a sweep's trial is judged by: a run's score curve (experiments.rundata's tags), the
objective (auc, final or steps, as experiments/sweep.py's docstring defines them and says why auc
is the default) on it cut at a horizon (the run's end or a pruning checkpoint), and the
checkpoints at which trials report to the pruner."""

from __future__ import annotations

import numpy as np

from experiments.rundata import ACCURACY_TAG, RETURN_TAG, SPS_TAG
from experiments.stats import Curve, final_value, steps_to_threshold


def score_curve(curves: dict[str, Curve]) -> tuple[str, Curve | None]:
    """The run's score: charts/accuracy where the env logs it (NoisyRecall), else the return."""
    tag = ACCURACY_TAG if ACCURACY_TAG in curves else RETURN_TAG
    return tag, curves.get(tag)


def last_step(curves: dict[str, Curve]) -> int:
    """The env steps a run has trained, as its events say (the last charts/SPS point; 0 before one)."""
    sps = curves.get(SPS_TAG)
    return int(sps[0][-1]) if sps is not None and len(sps[0]) else 0


def objective_value(curve: Curve | None, horizon: int, objective: str, total: int, final_frac: float = 0.1,
                    threshold: float | None = None, smooth: int = 10) -> float | None:
    """The objective of one run's curve cut at `horizon` steps (the run's end, or a pruning
    checkpoint); None when nothing was logged by then."""
    if curve is None:
        return None
    keep = curve[0] <= horizon
    steps, vals = curve[0][keep], np.asarray(curve[1][keep], dtype=float)
    if steps.size == 0:
        return None
    if objective == "final":
        return final_value((steps, vals), horizon, final_frac)
    if objective == "steps":
        hit = steps_to_threshold(steps, vals, threshold, smooth)
        return float(hit) if hit is not None else 2.0 * total
    if steps.size == 1:
        return float(vals[0])
    area = float(np.sum((vals[1:] + vals[:-1]) * np.diff(steps)) / 2.0)
    return area / float(steps[-1] - steps[0])


def checkpoints(total: int, points: int) -> list[int]:
    """The steps at which trials report to the pruner: every 1/points of the run, the end excluded."""
    return sorted({max(1, round(total * i / points)) for i in range(1, points)})
