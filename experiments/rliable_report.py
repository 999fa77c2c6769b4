"""The grid's aggregate over runs and envs the way the field reports it, through rliable (Agarwal et
al., "Deep RL at the Edge of the Statistical Precipice", NeurIPS 2021; pip install -e ".[report]"):

- IQM and mean over every (run, env) score with stratified-bootstrap CIs (runs resampled within
  each env, rliable.library.get_interval_estimates);
- performance profiles: the fraction of runs whose score exceeds tau, with CIs
  (rliable.library.create_performance_profile);
- the probability of improvement of every backbone over a reference one, P(X > Y) averaged over
  envs (rliable.metrics.probability_of_improvement, Mann-Whitney U per env), with CIs.

Scores are normalized per env (0 = chance or floor, 1 = perfect; experiments.report.score_range),
so envs of different scales can be pooled. A backbone enters with the seeds that finished every
env (a score matrix is runs x envs). Written as a section of summary.md and three plots:
rliable_intervals.png, rliable_profiles.png, rliable_improvement.png.

rliable draws its bootstrap indices from numpy's global RNG; it is seeded here (and restored
after), so a report is the same every time it is rebuilt.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator, Protocol, Sequence

import numpy as np

from experiments.colours import colours

PROFILE_TAUS = (0.25, 0.5, 0.75, 0.9)  # thresholds shown in the table (the plot uses 41, every 0.025)
INSTALL_HINT = 'rliable is not installed: pip install -e ".[report]" adds this section'


class Settings(Protocol):
    confidence: float
    resamples: int


Scores = dict[str, dict[str, dict[int, float]]]  # backbone -> env -> seed -> normalized score


def available() -> bool:
    try:
        import rliable  # noqa: F401
    except ImportError:
        return False
    return True


def score_matrices(scores: Scores, envs: Sequence[str]) -> dict[str, np.ndarray]:
    """backbone -> [runs, envs] over the seeds that have a score on every env (backbones with none
    are left out)."""
    out = {}
    for bb, per_env in scores.items():
        seeds = sorted(set.intersection(*(set(per_env.get(e, {})) for e in envs))) if envs else []
        if seeds:
            out[bb] = np.array([[per_env[e][s] for e in envs] for s in seeds], dtype=float)
    return out


def pick_reference(backbones: Sequence[str], wanted: str | None) -> str:
    """The reference backbone: ``wanted`` matched exactly or by its backbone name (``lstm`` matches
    ``lstm:remember_bias=2`` when that is the only lstm); default lstm if present, else the first.
    Raises ValueError naming the choices."""
    from experiments.colours import base

    if not backbones:
        raise ValueError("no backbone has a score on every env")
    if wanted is None:
        wanted = "lstm" if any(base(b) == "lstm" for b in backbones) else backbones[0]
    if wanted in backbones:
        return wanted
    by_base = [b for b in backbones if base(b) == wanted]
    if len(by_base) == 1:
        return by_base[0]
    raise ValueError(f"--reference {wanted!r} is not a backbone of this grid; choose one of: {', '.join(backbones)}")


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def probability_of_improvement(x: np.ndarray, y: np.ndarray) -> float:
    """rliable.metrics.probability_of_improvement (P(X_m > Y_m) averaged over envs m, ties counting
    half: the Mann-Whitney U over the runs of each env / (n_x n_y)) computed by comparing every pair
    at once; rliable calls scipy's mannwhitneyu per env and resample, which made the bootstrap take
    34 s per pair of backbones on this machine (3 runs x 14 envs, 2,000 resamples). Equal to it:
    tests/test_rliable_report.py."""
    gt = (x[:, None, :] > y[None, :, :]).mean(axis=(0, 1))
    eq = (x[:, None, :] == y[None, :, :]).mean(axis=(0, 1))
    return float(np.mean(gt + 0.5 * eq))


def estimates(mats: dict[str, np.ndarray], reference: str, args: Settings, seed: int = 0) -> dict:
    """Every number of the section: {"aggregate": {bb: (point[IQM, mean], ci[2, 2])},
    "profiles": {bb: (taus, profile, ci)}, "improvement": {bb: (p, (low, high))}} for bb != reference."""
    from rliable import library as rly
    from rliable import metrics

    reps = args.resamples
    small = min(reps, 2000)
    taus = np.linspace(0.0, 1.0, 41)  # steps of 0.025: holds every PROFILE_TAUS
    with _seeded(seed):
        point, ci = rly.get_interval_estimates(
            mats, lambda x: np.array([metrics.aggregate_iqm(x), metrics.aggregate_mean(x)]),
            reps=reps, confidence_interval_size=args.confidence)
        prof, prof_ci = rly.create_performance_profile(mats, taus, reps=small, confidence_interval_size=args.confidence)
        improvement = {}
        for bb in mats:
            if bb != reference:
                p, p_ci = rly.get_interval_estimates({"x": [mats[bb], mats[reference]]}, probability_of_improvement,
                                                     reps=small, confidence_interval_size=args.confidence)
                improvement[bb] = (float(np.squeeze(p["x"])), tuple(float(v) for v in np.ravel(p_ci["x"])))
    return {
        "aggregate": {bb: (np.asarray(point[bb]), np.asarray(ci[bb])) for bb in mats},
        "profiles": {bb: (taus, np.asarray(prof[bb]), np.asarray(prof_ci[bb])) for bb in mats},
        "improvement": improvement,
    }


def _f(x: float) -> str:
    return f"{x:.3f}"


def section(scores: Scores, envs: Sequence[str], what: str, out: Path, args: Settings, reference: str | None,
            order: Sequence[str] = ()) -> list[str]:
    """The summary.md lines of the rliable section (and its plots in ``out``)."""
    pct = f"{args.confidence:.0%}"
    lines = ["## Aggregate over runs and envs (rliable)", ""]
    if not available():
        return lines + [INSTALL_HINT + ".", ""]
    mats = score_matrices(scores, envs)
    rank = {b: i for i, b in enumerate(order)}
    from experiments.colours import base

    def position(label: str) -> tuple[int, str]:  # the grid's --backbones order; a preset's label by its name
        return rank.get(label, rank.get(base(label), len(rank))), label

    mats = dict(sorted(mats.items(), key=lambda kv: position(kv[0])))
    if not mats:
        return lines + ["No backbone has a finished run on every env.", ""]
    try:
        ref = pick_reference(list(mats), reference)
    except ValueError as e:  # the asked-for reference finished no env here: say so, compare to the default
        ref = pick_reference(list(mats), None)
        lines += [f"{e}; P(improvement) is against {ref} instead.", ""]
    est = estimates(mats, ref, args)
    n_env = len(envs)
    lines += [f"Score: {what}, normalized per env (0 = chance or floor, 1 = perfect). Per backbone a runs x envs "
              f"matrix ({n_env} env(s); the seeds that finished every env). {pct} stratified-bootstrap CIs "
              f"(runs resampled within each env; {args.resamples} resamples for IQM and mean, "
              f"{min(args.resamples, 2000)} for profiles and P(improvement)), rliable (Agarwal et al., NeurIPS 2021).", ""]
    head = f"| backbone | runs | IQM | {pct} CI | mean | {pct} CI | P(> {ref}) | {pct} CI |"
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for bb, (pt, ci) in est["aggregate"].items():
        imp = est["improvement"].get(bb)
        imp_txt = "reference |  |" if bb == ref else f"{_f(imp[0])} | [{_f(imp[1][0])}, {_f(imp[1][1])}] |"
        lines.append(f"| {bb} | {mats[bb].shape[0]} | {_f(pt[0])} | [{_f(ci[0, 0])}, {_f(ci[1, 0])}] | "
                     f"{_f(pt[1])} | [{_f(ci[0, 1])}, {_f(ci[1, 1])}] | {imp_txt}")
    lines += ["", "Performance profile: the fraction of (run, env) scores above tau, with its CI.", ""]
    head = "| backbone | " + " | ".join(f"tau {t:g}" for t in PROFILE_TAUS) + " |"
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for bb, (taus, prof, ci) in est["profiles"].items():
        cells = []
        for t in PROFILE_TAUS:
            i = int(np.argmin(np.abs(taus - t)))
            cells.append(f"{prof[i]:.2f} [{ci[0, i]:.2f}, {ci[1, i]:.2f}]")
        lines.append(f"| {bb} | " + " | ".join(cells) + " |")
    lines += ["", "Plots: rliable_intervals.png (IQM and mean), rliable_profiles.png, rliable_improvement.png "
              f"(P(X > {ref}) for every other backbone X).", ""]
    plot(out, est, ref)
    return lines


def plot(out: Path, est: dict, reference: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from rliable import plot_utils

    from experiments.report import save_png

    names = list(est["aggregate"])
    col = colours(names)
    point = {b: est["aggregate"][b][0] for b in names}
    ci = {b: est["aggregate"][b][1] for b in names}
    fig, _ = plot_utils.plot_interval_estimates(point, ci, metric_names=["IQM", "Mean"], algorithms=names, colors=col,
                                                xlabel="normalized score", subfigure_width=3.6,
                                                row_height=0.5)
    save_png(fig, out / "rliable_intervals.png", bbox_inches="tight")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.2))
    taus = next(iter(est["profiles"].values()))[0]
    plot_utils.plot_performance_profiles({b: p[1] for b, p in est["profiles"].items()}, taus,
                                         performance_profile_cis={b: p[2] for b, p in est["profiles"].items()},
                                         colors=col, ax=ax, xlabel=r"normalized score ($\tau$)",
                                         ylabel=r"fraction of runs with score $> \tau$", labelsize="medium",
                                         ticklabelsize="medium")
    ax.legend([plt.Line2D([0], [0], color=col[b], lw=2) for b in names], names, fontsize=8, loc="upper right")
    fig.tight_layout()
    save_png(fig, out / "rliable_profiles.png")
    plt.close(fig)

    if est["improvement"]:
        others = list(est["improvement"])
        sep = "\x1f"  # rliable splits "X<sep>Y"; labels may hold commas (mru:kind=ldu,readout=exact)
        fig, ax = plt.subplots(figsize=(6, 0.8 + 0.45 * len(others)))
        plot_utils.plot_probability_of_improvement(
            {f"{b}{sep}{reference}": np.array([est["improvement"][b][0]]) for b in others},
            {f"{b}{sep}{reference}": np.array(est["improvement"][b][1]).reshape(2, 1) for b in others},
            pair_separator=sep, ax=ax, colors=[col[b] for b in others], labelsize="medium", ticklabelsize="medium")
        save_png(fig, out / "rliable_improvement.png", bbox_inches="tight")
        plt.close(fig)
