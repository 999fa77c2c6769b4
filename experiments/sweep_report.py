"""A sweep's outputs in --out, rebuilt from the study after every session: trials.csv, best.json,
preset.toml (the best trial's configuration as a table for the backbone, in the presets/ format:
`train.py --preset DIR/preset.toml`), summary.md and Optuna's matplotlib plots (optimization
history, intermediate values, parameter importances), each written whole
(experiments.report.write_atomic)."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import warnings
from typing import TYPE_CHECKING

import numpy as np

from experiments.executors import _duration
from experiments.grid import parse_train_argv
from experiments.objectives import last_step
from experiments.report import save_png, write_atomic
from experiments.rundata import load_scalars
from experiments.space import NOT_SEARCHED
from experiments.study import shown

if TYPE_CHECKING:
    from experiments.sweep_setup import Sweep


def _fmt(v) -> str:
    return "" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return json.dumps(str(v))


def best_config(sw: Sweep, params: dict) -> dict:
    """The train.py settings of a trial as a preset table: the sampled params and every
    hyperparameter the fixed flags (and a --preset in them) set away from train.py's defaults."""
    from agents.config import Args as TrainArgs

    resolved = dataclasses.asdict(parse_train_argv(sw.argv(0, sw.args.seeds[0], params)))
    default = dataclasses.asdict(TrainArgs())
    table = {}
    for k, v in resolved.items():
        if k in NOT_SEARCHED or v is None or (k not in params and v == default[k]):
            continue
        table[k] = list(v) if isinstance(v, tuple) else v
    if sw.backbone.options:
        table["memory_options"] = list(sw.backbone.options)
    return table


def steps_trained(sw: Sweep, t) -> int:
    """The env steps a trial's runs trained: result.json's global_step, else the runs' events."""
    total = 0
    for seed in sw.args.seeds:
        d = sw.out / "runs" / sw.run_name(t.number, seed)
        try:
            total += int(json.loads((d / "result.json").read_text())["global_step"])
            continue
        except (OSError, ValueError, KeyError):
            pass
        total += last_step(load_scalars(d)) if d.is_dir() else 0
    return total


def write_outputs(sw: Sweep, study) -> None:
    """trials.csv, best.json, preset.toml (when a trial completed), summary.md and the plots."""
    from optuna.trial import TrialState

    out, a = sw.out, sw.args
    trials = sorted(study.get_trials(deepcopy=False, states=shown()), key=lambda t: t.number)
    waiting = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    names = [p.name for p in sw.params]
    seeds = [str(s) for s in a.seeds]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["number", "state", a.objective, *[f"seed{s}" for s in seeds], *names, "pruned_at_step", "note"])
    for t in trials:
        sc = t.user_attrs.get("scores", {})
        w.writerow([t.number, t.state.name, "" if t.value is None or t.state != TrialState.COMPLETE else t.value,
                    *[sc.get(s, "") if sc.get(s) is not None else "" for s in seeds],
                    *[t.params.get(n, "") for n in names], t.user_attrs.get("pruned_at", ""), t.user_attrs.get("note", "")])
    write_atomic(out / "trials.csv", buf.getvalue().encode())

    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    counts = {s: sum(t.state.name == s for t in trials) for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")}
    trained = sum(steps_trained(sw, t) for t in trials)
    planned = len(trials) * len(a.seeds) * a.total_timesteps
    wall = float(study.user_attrs.get("wall_time", 0.0))
    budget = (f"{trained:,} env steps trained ({len(trials)} trial(s) x {len(a.seeds)} seed(s) x {a.total_timesteps:,} steps "
              f"would be {planned:,} without pruning); {_duration(wall)} wall time over {study.user_attrs.get('sessions', 1)} session(s)")
    best = min(complete, key=lambda t: t.value) if complete and sw.direction == "minimize" else (
        max(complete, key=lambda t: t.value) if complete else None)
    command = study.user_attrs.get("command", sw.command)
    info = {"objective": a.objective, "direction": sw.direction, "score_tag": best.user_attrs.get("score_tag") if best else None,
            "number": best.number if best else None, "value": best.value if best else None,
            "params": best.params if best else None, "scores": best.user_attrs.get("scores") if best else None,
            "trials": counts, "env_steps_trained": trained, "wall_time_s": wall, "command": command,
            "definition": sw.definition}
    write_atomic(out / "best.json", (json.dumps(info, indent=2) + "\n").encode())

    if best is not None:
        table = best_config(sw, best.params)
        lines = [f"# Found by a sweep ({a.objective} of {best.user_attrs.get('score_tag', 'the score')}, best trial {best.number}: "
                 f"{best.value:.4g}, seeds {', '.join(seeds)}):",
                 f"#   {command}",
                 f"# {len(trials)} trials ({counts['COMPLETE']} complete, {counts['PRUNED']} pruned, {counts['FAIL']} failed) on "
                 f"{a.env_id}; budget: {budget}.",
                 f"# Use: python train.py --env-id {a.env_id} --backbone {sw.backbone.name} --preset {out / 'preset.toml'}", "",
                 f"[{sw.backbone.name}]", *[f"{k} = {toml_value(v)}" for k, v in table.items()], ""]
        write_atomic(out / "preset.toml", "\n".join(lines).encode())
    else:
        (out / "preset.toml").unlink(missing_ok=True)

    plots = write_plots(sw, study, complete)
    md = [f"# Sweep: {sw.backbone.display} on {a.env_id}", "", f"    {command}", "",
          f"Objective: **{a.objective}** ({sw.direction}d) of {best.user_attrs.get('score_tag') if best else 'the score'} per run, "
          f"{'the mean over seeds ' + ', '.join(seeds) if len(seeds) > 1 else 'seed ' + seeds[0]} (docs/sweeps.md says what each objective rewards and why auc is the default).", "",
          f"Trials: {len(trials)} of {a.trials} ({counts['COMPLETE']} complete, {counts['PRUNED']} pruned by the "
          f"{a.pruner} pruner, {counts['FAIL']} failed, {counts['RUNNING']} unfinished)"
          + (f"; {waiting} enqueued trial(s) waiting." if waiting else "."), "", f"Budget: {budget}.", ""]
    if best is not None:
        md += [f"## Best: trial {best.number}, {a.objective} {best.value:.4g}", "", "| param | value |", "|-|-|",
               *[f"| {k} | {_fmt(v)} |" for k, v in best.params.items()], "",
               f"preset.toml holds it: `python train.py --env-id {a.env_id} --backbone {sw.backbone.name} --preset {out / 'preset.toml'}`", ""]
    else:
        md += ["No trial has completed yet: no best configuration, no preset.toml.", ""]
    ranked = sorted(trials, key=lambda t: (t.state != TrialState.COMPLETE, (t.value if sw.direction == "minimize" else -t.value)
                                           if t.state == TrialState.COMPLETE else 0, t.number))
    md += ["## Trials (best first)", "",
           "| trial | state | " + a.objective + " | " + " | ".join(f"seed {s}" for s in seeds) + " | " + " | ".join(names) + " | pruned at |",
           "|" + "-|" * (4 + len(seeds) + len(names))]
    for t in ranked:
        sc = t.user_attrs.get("scores", {})
        state = "unfinished" if t.state == TrialState.RUNNING else t.state.name.lower()
        md.append(f"| {t.number} | {state} | {_fmt(t.value) if t.state == TrialState.COMPLETE else ''} | "
                  + " | ".join(_fmt(sc.get(s)) for s in seeds) + " | " + " | ".join(_fmt(t.params.get(n)) for n in names)
                  + f" | {_fmt(t.user_attrs.get('pruned_at'))} |")
    md += ["", "## Plots", "", *[f"- {p}" for p in plots], "",
           "Continue the study: run the same command again (a larger --trials adds trials; interrupted trials resume from "
           "their checkpoints). `tensorboard --logdir " + str(out / "runs") + "` shows every run.", ""]
    write_atomic(out / "summary.md", "\n".join(md).encode())


def write_plots(sw: Sweep, study, complete: list) -> list[str]:
    """Optuna's matplotlib plots; each one that cannot be drawn yet is listed with the reason."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as vis

    out, lines = sw.out, []

    def plot(name: str, fn, why_not: str | None):
        path = out / f"{name}.png"
        if why_not is not None:
            path.unlink(missing_ok=True)
            lines.append(f"{name}.png: not drawn ({why_not})")
            return
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = fn(study)
            fig = (ax.flat[0] if isinstance(ax, np.ndarray) else ax).figure
            fig.set_size_inches(8, 5)
            fig.tight_layout()
            save_png(fig, path)
            plt.close(fig)
            lines.append(f"{name}.png")
        except Exception as e:  # noqa: BLE001 (a plot must not lose the study's other outputs)
            plt.close("all")
            path.unlink(missing_ok=True)
            lines.append(f"{name}.png: not drawn ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")

    plot("optimization_history", vis.plot_optimization_history, None if complete else "no completed trial")
    plot("intermediate_values", vis.plot_intermediate_values,
         None if any(t.intermediate_values for t in study.get_trials(deepcopy=False)) else "no trial reported yet")
    plot("param_importances", vis.plot_param_importances,
         None if len(complete) >= 2 and len(sw.params) >= 2 else "needs >= 2 completed trials and >= 2 params")
    return lines
