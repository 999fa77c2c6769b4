"""MMER, POPGym's score (docs/design.md section 9), and the published table it is compared with.

A run's MMER is the maximum, over training, of the mean episodic return of the episodes that end in
one window of env steps: POPGym computes the mean episodic return of each training epoch (one train
batch) and takes the maximum over epochs. memrl logs the mean return of the episodes ending in each
rollout (charts/episodic_return, one point per update), so a window of ``window`` env steps groups
the consecutive points that fall in it (their mean, each point weighted alike: POPGym's episodes
have fixed or nearly fixed lengths, so each rollout ends about as many episodes) and MMER is the
largest window mean. ``window`` = the paper's train batch makes the figure comparable with the
paper's: the maximum of many small noisy windows is biased upward, and the bias shrinks as the
window grows. A suite's MMER is then the mean over seeds per (env, backbone), and over envs per
backbone (mean and IQM, each with a bootstrap CI over seeds).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from experiments.stats import Curve


def mmer(curve: Curve | None, window: int) -> float | None:
    """The largest mean of the logged returns over consecutive windows of ``window`` env steps
    (window w holds the points logged at steps in ((w - 1) * window, w * window]); None for a run
    that logged no return. A window larger than the run is the whole run's mean."""
    if curve is None or len(curve[0]) == 0:
        return None
    steps, vals = np.asarray(curve[0]), np.asarray(curve[1], dtype=float)
    if window < 1:
        raise ValueError(f"MMER window must be >= 1 env step, got {window}")
    bins = (steps - 1) // window
    best = -math.inf
    for b in np.unique(bins):
        best = max(best, float(vals[bins == b].mean()))
    return best


@dataclass(frozen=True)
class Published:
    """One published (env, model) figure: the mean and std over the paper's trials, and where it is from."""

    mean: float
    std: float | None
    source: str


# memrl's backbone names -> the names POPGym's tables use.
PAPER_MODELS = {"gru": "GRU", "lstm": "LSTM", "mlp": "MLP", "ffm": "FFM"}


def read_published(path: Path) -> dict[tuple[str, str], Published]:
    """The published table (CSV: env, model, mmer_mean, mmer_std, source; env as a POPGym id;
    lines starting with '#' are comments) as {(env id, model): Published}."""
    out = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(line for line in f if not line.startswith("#")):
            std = row.get("mmer_std", "")
            out[(row["env"], row["model"])] = Published(float(row["mmer_mean"]), float(std) if std else None, row.get("source", ""))
    return out


def paper_model(backbone: str) -> str | None:
    """The paper's model for a memrl backbone label (options dropped): gru -> GRU; None if the paper has none."""
    return PAPER_MODELS.get(backbone.split(":")[0])
