"""The outputs of a grid: results.csv (one row per run), summary.md (per env x backbone: mean, IQM
and a bootstrap CI over seeds, steps to a threshold; an aggregate over envs) and the curve plots,
every number read from the runs' events (experiments.rundata)."""

from __future__ import annotations

import csv
import io
import math
import os
import tempfile
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from experiments import rliable_report
from experiments.colours import colours
from experiments.grid import default_threshold, env_label
from experiments.rundata import ACCURACY_TAG, EVAL_ACCURACY_TAG, EVAL_RETURN_TAG, RETURN_TAG, RunData
from experiments.stats import bootstrap_ci, common_grid, curve_band, final_value, iqm, resample, steps_to_threshold


def _umask() -> int:
    """The process's umask: read from /proc/self/status where Linux shows it (setting and restoring
    it would leave a moment in which another thread's new files get the wrong mask), else so."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: Path, data: bytes) -> None:
    """Temp file + rename: a reader (or a second compare.py writing the same report) never sees
    half a file. The file gets the mode open() would give a new one (0666 less the umask: 0644
    under the usual 022), not mkstemp's 0600."""
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            os.fchmod(f.fileno(), 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_png(fig, path: Path, **savefig) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, **savefig)
    write_atomic(path, buf.getvalue())


class Settings(Protocol):
    """What the report reads from compare.Args."""

    final_frac: float
    smooth: int
    confidence: float
    resamples: int


def score_tag(env_id: str, runs: Sequence[RunData]) -> str:
    """The metric that says how well an env is solved, as its suite declares it (envs.suites:
    accuracy for NoisyRecall, the episodic return elsewhere); an env of no suite of its own that
    logs an accuracy (info["accuracy"] at episode ends) is scored by it."""
    import envs

    suite = envs.suite_of(env_id)
    if suite.name == "gymnasium" and any(ACCURACY_TAG in r.curves for r in runs):
        return ACCURACY_TAG
    return suite.score_tag


def score_range(env_id: str, runs: Sequence[RunData], tag: str) -> tuple[float, float]:
    """(chance-or-floor, ceiling) used to normalize an env's score to [0, 1] for the aggregate, as
    the env's suite declares it (MiniGrid Memory returns [0, 1], NoisyRecall accuracy [1 / keys, 1],
    POPGym returns [-1, 1]); any other env is scaled by the lowest and highest value its runs logged."""
    import envs

    c = next((r.config for r in runs if r.config), {})
    declared = envs.suites.score_range(env_id, c) if tag == envs.suite_of(env_id).score_tag else None
    if declared is not None:
        return declared
    vals = np.concatenate([r.curves[tag][1] for r in runs if tag in r.curves] or [np.zeros(1)])
    lo, hi = float(vals.min()), float(vals.max())
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def fmt(x: float | None, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    return f"{x:.{digits}f}"


def fmt_steps(x: float | None) -> str:
    return "" if x is None else f"{int(x):,}"


CSV_FIELDS = ["env", "backbone", "seed", "status", "exit_code", "steps", "final_return", "final_accuracy",
              "eval_return", "eval_accuracy", "score_metric", "threshold", "steps_to_threshold",
              "wall_time_s", "sps", "run_dir"]


def build_report(out: Path, runs: list[RunData], thresholds: dict[str, float | None], args: Settings, order: Sequence[str] = (),
                 suite=None) -> None:
    """results.csv, summary.md and the curve PNGs from the runs' events; with ``suite``
    (experiments.suite_files.SuiteFile) also suite.md and suite.csv (experiments.suite_report).
    Backbones appear in `order` (the grid's --backbones), then any others alphabetically; then by seed."""
    rank = {b: i for i, b in enumerate(order)}
    runs = sorted(runs, key=lambda r: (r.env_id, rank.get(r.backbone, len(rank)), r.backbone, r.seed))
    by_env: dict[str, list[RunData]] = {}
    for r in runs:
        by_env.setdefault(r.env_id, []).append(r)
    rows = []
    for env_id, env_runs in by_env.items():
        tag = score_tag(env_id, env_runs)
        thr = thresholds.get(env_id, default_threshold(env_id))
        for r in env_runs:
            s = r.curves.get(tag)
            reach = steps_to_threshold(*s, thr, args.smooth) if (thr is not None and s is not None) else None
            ev_ret, ev_acc = r.curves.get(EVAL_RETURN_TAG), r.curves.get(EVAL_ACCURACY_TAG)
            rows.append({
                "env": env_id, "backbone": r.backbone, "seed": r.seed, "status": r.status,
                "exit_code": "" if r.returncode is None else r.returncode,
                "steps": "" if r.steps is None else r.steps,
                "final_return": fmt(final_value(r.curves.get(RETURN_TAG), r.steps, args.final_frac), 4),
                "final_accuracy": fmt(final_value(r.curves.get(ACCURACY_TAG), r.steps, args.final_frac), 4),
                "eval_return": fmt(float(ev_ret[1][-1]) if ev_ret else None, 4),
                "eval_accuracy": fmt(float(ev_acc[1][-1]) if ev_acc else None, 4),
                "score_metric": tag.split("/")[-1], "threshold": "" if thr is None else thr,
                "steps_to_threshold": "" if reach is None else int(reach),
                "wall_time_s": fmt(r.wall_time, 1), "sps": fmt(r.sps, 1),
                "run_dir": "" if r.run_dir is None else str(r.run_dir),
            })
    out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS)
    w.writeheader()
    w.writerows(rows)
    write_atomic(out / "results.csv", buf.getvalue().encode())
    text = summary_markdown(by_env, thresholds, args)
    scores, what = rliable_scores(by_env, args, suite)
    text += "\n".join(rliable_report.section(scores, list(by_env), what, out, args, getattr(args, "reference", None),
                                             order))
    write_atomic(out / "summary.md", text.encode())
    plot_curves(out, by_env, thresholds, args)
    if suite is not None:
        from experiments.suite_report import write_suite_report

        write_suite_report(out, suite, by_env, args, order)


def rliable_scores(by_env: dict[str, list[RunData]], args: Settings, suite=None) -> tuple[rliable_report.Scores, str]:
    """Per backbone, env and seed, each finished run's normalized score for the rliable section:
    the suite's score (MMER for POPGym) when a suite is given, else the final score of the env's
    metric; normalized by the env's score range, as the summary's aggregate is."""
    scores: rliable_report.Scores = {}
    what = f"the suite's {suite.score}" if suite is not None else "the final value of each env's score metric"
    for env_id, runs in by_env.items():
        tag = RETURN_TAG if suite is not None else score_tag(env_id, runs)
        lo, hi = score_range(env_id, runs, tag)
        for r in runs:
            if r.status != "finished":
                continue
            if suite is not None:
                from experiments.suite_report import run_score

                v = run_score(r, suite.score, args)
            else:
                v = final_value(r.curves.get(tag), r.steps, args.final_frac)
            if v is not None:
                scores.setdefault(r.backbone, {}).setdefault(env_id, {})[r.seed] = (v - lo) / (hi - lo)
    return scores, what


def summary_markdown(by_env: dict[str, list[RunData]], thresholds: dict[str, float | None], args: Settings) -> str:
    pct = f"{args.confidence:.0%}"
    lines = ["# Comparison", "",
             f"Final = mean of the values logged in the last {args.final_frac:.0%} of each run's steps. "
             f"Mean, IQM (interquartile mean, scipy.stats.trim_mean(x, 0.25)) and a {pct} percentile-bootstrap "
             f"CI of the mean (scipy.stats.bootstrap, {args.resamples} resamples) over the seeds of finished runs. "
             f"Steps to threshold: first logged step where the trailing mean of {args.smooth} logged points reaches "
             "the threshold; the median counts seeds that never reached it as never (so it exists only when more "
             "than half did). Every number is read from the runs' TensorBoard events.", ""]
    problems: list[str] = []
    agg: dict[str, dict[int, list[float]]] = {}
    for env_id, runs in by_env.items():
        tag = score_tag(env_id, runs)
        metric = tag.split("/")[-1].replace("episodic_", "")
        thr = thresholds.get(env_id, default_threshold(env_id))
        lo, hi = score_range(env_id, runs, tag)
        lines += [f"## {env_id}", "", f"Score: final {metric}" + (f"; threshold {thr:g} ({metric})" if thr is not None else "; no threshold") + ".", ""]
        head = f"| backbone | finished | {metric} mean | IQM | {pct} CI | steps to threshold (median) | reached |"
        if tag != RETURN_TAG:
            head += " return mean |"
        lines += [head, "|" + "---|" * (head.count("|") - 1)]
        notes = []
        for bb in dict.fromkeys(r.backbone for r in runs):
            group = [r for r in runs if r.backbone == bb]
            done = [r for r in group if r.status == "finished"]
            finals = [(r.seed, final_value(r.curves.get(tag), r.steps, args.final_frac)) for r in done]
            finals = [(s, v) for s, v in finals if v is not None]
            vals = [v for _, v in finals]
            for s, v in finals:
                agg.setdefault(bb, {}).setdefault(s, []).append((v - lo) / (hi - lo))
            ci = bootstrap_ci(vals, args.confidence, args.resamples)
            if ci.note and vals:
                notes.append(f"{bb}: {ci.note}")
            reach_txt, reached = "", ""
            if thr is not None and done:
                reach = [steps_to_threshold(*r.curves[tag], thr, args.smooth) if tag in r.curves else None for r in done]
                k = sum(x is not None for x in reach)
                reached = f"{k}/{len(done)}"
                med = np.median([math.inf if x is None else x for x in reach])
                reach_txt = fmt_steps(med) if math.isfinite(med) else "not reached"
            row = (f"| {bb} | {len(done)}/{len(group)} | {fmt(float(np.mean(vals)) if vals else None)} | "
                   f"{fmt(iqm(vals) if vals else None)} | {'' if not vals else f'[{fmt(ci.low)}, {fmt(ci.high)}]'} | "
                   f"{reach_txt} | {reached} |")
            if tag != RETURN_TAG:
                rets = [final_value(r.curves.get(RETURN_TAG), r.steps, args.final_frac) for r in done]
                rets = [x for x in rets if x is not None]
                row += f" {fmt(float(np.mean(rets)) if rets else None)} |"
            lines.append(row)
            for r in group:
                if r.status != "finished":
                    code = "" if r.returncode is None else f", exit {r.returncode}"
                    problems.append(f"- {r.name}: {r.status}{code}")
        if notes:
            lines += ["", "Notes: " + "; ".join(notes) + "."]
        lines.append("")
    if len(by_env) > 1 and agg:
        lines += ["## Aggregate over envs", "",
                  "Normalized score: 0 = chance (NoisyRecall accuracy) or zero return (MiniGrid Memory), 1 = perfect; "
                  "other envs scaled by the lowest and highest value their runs logged. Mean and CI over seeds of "
                  "each seed's mean over envs (seeds with every env finished); IQM over all env x seed runs.", "",
                  f"| backbone | seeds | mean | {pct} CI | IQM (runs) |", "|---|---|---|---|---|"]
        n_env = len(by_env)
        for bb, per_seed in agg.items():
            seed_means = [float(np.mean(v)) for v in per_seed.values() if len(v) == n_env]
            every = [x for v in per_seed.values() for x in v]
            ci = bootstrap_ci(seed_means, args.confidence, args.resamples)
            ci_txt = f"[{fmt(ci.low)}, {fmt(ci.high)}]" + (f" ({ci.note})" if ci.note and seed_means else "")
            lines.append(f"| {bb} | {len(seed_means)} | {fmt(float(np.mean(seed_means)) if seed_means else None)} | "
                         f"{ci_txt if seed_means else ''} | {fmt(iqm(every))} |")
        lines.append("")
    if problems:
        lines += ["## Runs not finished", "", *problems, ""]
    return "\n".join(lines)


def plot_curves(out: Path, by_env: dict[str, list[RunData]], thresholds: dict[str, float | None], args: Settings) -> None:
    """curves_<env>.png per env and curves_aggregate.png; finished runs only."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_res = min(args.resamples, 1000)
    col = colours(r.backbone for runs in by_env.values() for r in runs)  # one colour per backbone in every plot
    agg: dict[str, list[tuple[np.ndarray, np.ndarray, int]]] = {}  # backbone -> (grid, normalized curve, seed)
    for env_id, runs in by_env.items():
        tag = score_tag(env_id, runs)
        lo, hi = score_range(env_id, runs, tag)
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for bb in dict.fromkeys(r.backbone for r in runs):
            done = [r for r in runs if r.backbone == bb and r.status == "finished" and tag in r.curves and len(r.curves[tag][0])]
            grid = common_grid([r.curves[tag] for r in done])
            if grid is None:
                continue
            curves = np.stack([resample(*r.curves[tag], grid) for r in done])  # [seeds, G]
            mean, low, high = curve_band(curves, args.confidence, n_res)
            ax.plot(grid, mean, label=f"{bb} (n={len(done)})", color=col[bb])
            ax.fill_between(grid, low, high, alpha=0.2, color=col[bb])
            for r, c in zip(done, curves):
                agg.setdefault(bb, []).append((grid, (c - lo) / (hi - lo), r.seed))
        thr = thresholds.get(env_id, default_threshold(env_id))
        if thr is not None:
            ax.axhline(thr, color="grey", linestyle="--", linewidth=1, label=f"threshold {thr:g}")
        ax.set_xlabel("env steps")
        ax.set_ylabel(tag)
        ax.set_title(f"{env_id}: mean and {args.confidence:.0%} bootstrap CI over seeds")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        save_png(fig, out / f"curves_{env_label(env_id)}.png")
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for bb, items in agg.items():
        grid = common_grid([(g, c) for g, c, _ in items])
        if grid is None:
            continue
        # Per seed, the mean over envs of the normalized curves; then mean and CI over seeds.
        seeds = sorted({s for _, _, s in items})
        per_seed = []
        for s in seeds:
            cs = [resample(g, c, grid) for g, c, s2 in items if s2 == s]
            if len(cs) == len(by_env):
                per_seed.append(np.mean(cs, axis=0))
        if not per_seed:
            continue
        mean, low, high = curve_band(np.stack(per_seed), args.confidence, n_res)
        ax.plot(grid, mean, label=f"{bb} (n={len(per_seed)})", color=col[bb])
        ax.fill_between(grid, low, high, alpha=0.2, color=col[bb])
    ax.set_xlabel("env steps")
    ax.set_ylabel("normalized score (0 chance, 1 perfect)")
    ax.set_title(f"Mean over {len(by_env)} env(s): mean and {args.confidence:.0%} CI over seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, out / "curves_aggregate.png")
    plt.close(fig)

