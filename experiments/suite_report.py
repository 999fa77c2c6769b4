"""The suite part of a grid's report (compare.py --suite): each run scored as the suite says (MMER
for POPGym, experiments.mmer), per (env, backbone) beside the published figure, and aggregated over
the suite's envs (mean and IQM over envs, each with a bootstrap CI over seeds), written to
suite.md and suite.csv."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from experiments.mmer import Published, mmer, paper_model, read_published
from experiments.rundata import RETURN_TAG, RunData
from experiments.stats import bootstrap_ci, final_value, iqm


class Settings(Protocol):
    final_frac: float
    confidence: float
    resamples: int
    mmer_window: int


def run_score(r: RunData, score: str, args: Settings) -> float | None:
    """A finished run's score: MMER of its return curve, or its final return."""
    curve = r.curves.get(RETURN_TAG)
    if score == "mmer":
        return mmer(curve, args.mmer_window)
    return final_value(curve, r.steps, args.final_frac)


def _fmt(x: float | None, digits: int = 3) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _ci(vals: Sequence[float], args: Settings) -> str:
    if len(vals) < 2:
        return ""
    ci = bootstrap_ci(vals, args.confidence, args.resamples)
    return f"[{_fmt(ci.low)}, {_fmt(ci.high)}]"


CSV_FIELDS = ["env", "backbone", "seeds", "score", "score_mean", "score_ci_low", "score_ci_high", "final_return_mean",
              "paper_model", "paper_mean", "paper_std", "gap", "paper_source"]


def write_suite_report(out: Path, suite, by_env: dict[str, list[RunData]], args: Settings, order: Sequence[str]) -> None:
    """suite.md and suite.csv in ``out`` for ``suite`` (experiments.suite_files.SuiteFile)."""
    from experiments.report import write_atomic

    published: dict[tuple[str, str], Published] = read_published(suite.published) if suite.published else {}
    name = "MMER" if suite.score == "mmer" else "final return"
    pct = f"{args.confidence:.0%}"
    backbones = list(dict.fromkeys([*order, *(r.backbone for runs in by_env.values() for r in runs)]))
    backbones = [b for b in backbones if any(r.backbone == b for runs in by_env.values() for r in runs)]
    envs = [e for e in suite.envs if e in by_env]

    # score[bb][env] = {seed: value} over finished runs
    score: dict[str, dict[str, dict[int, float]]] = {b: {} for b in backbones}
    finals: dict[str, dict[str, list[float]]] = {b: {} for b in backbones}
    for env_id in envs:
        for r in by_env[env_id]:
            if r.status != "finished":
                continue
            v = run_score(r, suite.score, args)
            if v is not None:
                score[r.backbone].setdefault(env_id, {})[r.seed] = v
            f = final_value(r.curves.get(RETURN_TAG), r.steps, args.final_frac)
            if f is not None:
                finals[r.backbone].setdefault(env_id, []).append(f)

    lines = [f"# Suite {suite.name}: {name}", "", suite.description, ""]
    if suite.score == "mmer":
        lines += [f"MMER (docs/design.md section 9): per run, the largest mean episodic return over windows of "
                  f"{args.mmer_window:,} env steps; mean and a {pct} percentile-bootstrap CI over seeds. Final return: "
                  f"the mean over the last {args.final_frac:.0%} of each run's steps.", ""]
    if published:
        lines += [f"Paper: the published MMER (mean, std over the paper's trials) of the same model, from "
                  f"{suite.published.name}; gap = memrl's mean minus the paper's.", ""]

    rows = []
    head = f"| env | backbone | seeds | {name} | {pct} CI | final return | paper | gap |"
    lines += ["## Per env", "", head, "|" + "---|" * (head.count("|") - 1)]
    for env_id in envs:
        for bb in backbones:
            per_seed = score[bb].get(env_id, {})
            vals = list(per_seed.values())
            if not vals and not any(r.backbone == bb for r in by_env[env_id]):
                continue
            mean = float(np.mean(vals)) if vals else None
            fin = finals[bb].get(env_id, [])
            model = paper_model(bb)
            pub = published.get((env_id, model)) if model else None
            gap = mean - pub.mean if (pub is not None and mean is not None) else None
            pub_txt = "" if pub is None else (f"{pub.mean:.3f}" + (f" ± {pub.std:.3f}" if pub.std is not None else "") + f" ({model})")
            lines.append(f"| {env_id} | {bb} | {len(vals)} | {_fmt(mean)} | {_ci(vals, args)} | "
                         f"{_fmt(float(np.mean(fin)) if fin else None)} | {pub_txt} | {_fmt(gap, 3) if gap is not None else ''} |")
            ci = bootstrap_ci(vals, args.confidence, args.resamples) if len(vals) > 1 else None
            rows.append({
                "env": env_id, "backbone": bb, "seeds": len(vals), "score": suite.score, "score_mean": _fmt(mean, 4),
                "score_ci_low": _fmt(ci.low, 4) if ci else "", "score_ci_high": _fmt(ci.high, 4) if ci else "",
                "final_return_mean": _fmt(float(np.mean(fin)) if fin else None, 4), "paper_model": model or "",
                "paper_mean": "" if pub is None else pub.mean, "paper_std": "" if pub is None or pub.std is None else pub.std,
                "gap": _fmt(gap, 4) if gap is not None else "", "paper_source": "" if pub is None else pub.source,
            })

    lines += ["", f"## Over the suite's {len(envs)} envs", "",
              f"Per seed, the mean and the IQM over envs of the per-env {name} (seeds with every env finished); then the "
              f"mean over seeds and a {pct} bootstrap CI over seeds. Paper: the mean and IQM over the same envs of the "
              "published means, where the paper has every one of them. Ranked by the mean.", ""]
    head = f"| rank | backbone | seeds | mean over envs | {pct} CI | IQM over envs | {pct} CI | paper mean | paper IQM |"
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    agg = []
    for bb in backbones:
        seeds = sorted({s for e in envs for s in score[bb].get(e, {})})
        full = [s for s in seeds if all(s in score[bb].get(e, {}) for e in envs)]
        means = [float(np.mean([score[bb][e][s] for e in envs])) for s in full]
        iqms = [iqm([score[bb][e][s] for e in envs]) for s in full]
        model = paper_model(bb)
        pubs = [published.get((e, model)) for e in envs] if model else []
        have = pubs and all(p is not None for p in pubs)
        agg.append((bb, full, means, iqms,
                    float(np.mean([p.mean for p in pubs])) if have else None, iqm([p.mean for p in pubs]) if have else None))
    agg.sort(key=lambda a: -np.mean(a[2]) if a[2] else math.inf)
    for i, (bb, full, means, iqms, pm, pi) in enumerate(agg, 1):
        lines.append(f"| {i if means else ''} | {bb} | {len(full)} | {_fmt(float(np.mean(means)) if means else None)} | "
                     f"{_ci(means, args)} | {_fmt(float(np.mean(iqms)) if iqms else None)} | {_ci(iqms, args)} | "
                     f"{_fmt(pm)} | {_fmt(pi)} |")
    missing = [e for e in suite.envs if e not in by_env]
    if missing:
        lines += ["", f"Envs of the suite with no runs here: {', '.join(missing)}."]
    lines.append("")
    write_atomic(out / "suite.md", "\n".join(lines).encode())
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS)
    w.writeheader()
    w.writerows(rows)
    write_atomic(out / "suite.csv", buf.getvalue().encode())
