"""Hyperparameter sweeps: Optuna (TPE, seeded) over train.py flags, each trial one train.py run per
seed on compare.py's executors (experiments.executors), pruned from the runs' events while they train.

    python sweep.py --env-id memrl/NoisyRecall-v0 --backbone lstm \\
        --space learning_rate=loguniform:1e-4:3e-3 update_epochs=int:2:10 ent_coef=choice:0.0,0.01,0.03 \\
        --trials 20 --seeds 1 2 --total-timesteps 200000 --jobs 2 --out sweeps/recall_lstm

The study lives in DIR/study.journal (Optuna's JournalFileBackend), so running the same command again
continues it: finished trials are kept, a larger --trials adds trials, and a trial that was
interrupted (its runs checkpointed, no result.json) resumes from its checkpoints (train.py --resume)
under its own number. Trial k, seed s trains in DIR/runs/trial<k>__seed<s> with `--preset none`
plus --train-args plus the sampled flags (a --preset in --train-args replaces the `none`), so what
a trial ran is exactly what its flags say. docs/sweeps.md is the user's guide.

The objective (--objective; the score is charts/accuracy where the env logs it, e.g. NoisyRecall,
else charts/episodic_return; a trial's value is the mean over its seeds):
  auc    (default) the mean of the score over the run: the trapezoid area under the logged curve
         divided by the steps it spans. Maximized.
  final  the mean of the points logged in the last --final-frac (10%) of the steps. Maximized.
  steps  the first step where the trailing mean of --smooth points reaches --threshold; a run that
         never does scores 2 x --total-timesteps. Minimized.
Why auc: a sweep trains short versions of the real runs on the one to three seeds it can afford.
(1) The area averages every logged point, the final value only the last 10%, so the area separates
configurations with fewer seeds; final on a short run rewards whatever happens to sit high at the
end (a late spike, a collapse that has not shown yet). (2) It rewards learning fast and reliably,
which is what carries over from a short budget to a long one. (3) Its value at a pruning checkpoint
is the area of the curve so far, the same quantity the trial is finally judged by, so the pruner
compares like with like. (4) steps needs a threshold and ties every configuration that misses it,
which gives TPE nothing to model early on. The price: auc prefers a fast learner that plateaus
lower over a slow one that ends higher; when the sweep's budget is the real budget and only the
end state matters, use --objective final.

Pruning: at --prune-points checkpoints (every 10% of the steps by default) a trial reports the mean
over its seeds of the objective computed on the curves up to that step (read from the runs' events
as they train); Optuna's MedianPruner (or SuccessiveHalving) decides, and a pruned trial's runs are
asked to stop (one SIGINT: they checkpoint and exit).

Outputs in DIR: trials.csv, best.json, preset.toml (the best configuration as a table for the
backbone, in the presets/ format: `train.py --preset DIR/preset.toml`), summary.md and Optuna's
matplotlib plots (optimization history, intermediate values, parameter importances).

This module holds the command line (Args, main) and the driver (trials <-> runs, pruning); the
rest: experiments/space.py (--space, --enqueue, --train-args), experiments/objectives.py,
experiments/study.py (the Optuna study), experiments/sweep_setup.py (Sweep: the validated sweep,
every run's train.py flags; prepare: the checks) and experiments/sweep_report.py (the outputs).
"""

from __future__ import annotations

import shlex
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import numpy as np

from experiments.executors import LOST, RUNNING_ELSEWHERE, Job, LocalExecutor, RayExecutor
from experiments.grid import UsageError, cores, glue_train_args
from experiments.objectives import checkpoints, last_step, score_curve
from experiments.rundata import load_scalars
from experiments.stats import Curve
from experiments.study import open_study, shown
from experiments.sweep_report import write_outputs
from experiments.sweep_setup import Sweep, prepare


@dataclass
class Args:
    env_id: str = "memrl/NoisyRecall-v0"
    """env id (anything train.py --env-id accepts)"""
    backbone: str = "lstm"
    """the backbone: NAME or NAME:key=value,key=value (its --memory-options), e.g. mru:kind=ldu"""
    space: tuple[str, ...] = ()
    """what to search, as train.py flags (with '_') and a distribution each: learning_rate=loguniform:1e-4:3e-3 clip_coef=uniform:0.1:0.3 update_epochs=int:2:10[:STEP] ent_coef=choice:0.0,0.01 obs_encoder=choice:onehot,cells"""
    trials: int = 20
    """trials the study should hold (complete, pruned or failed); running again with a larger N adds trials"""
    seeds: tuple[int, ...] = (1,)
    """seeds: every trial trains one run per seed; its value is the mean over them"""
    total_timesteps: int = 100_000
    """env steps per run"""
    train_args: str = ""
    """fixed train.py flags for every run, as one quoted string: --train-args "--num-envs 8 --seq-len 64" (a --preset here replaces sweep's --preset none)"""
    out: str = "sweep_out"
    """output directory: study.journal, runs/, logs/, trials.csv, best.json, preset.toml, summary.md, plots"""
    objective: Literal["auc", "final", "steps"] = "auc"
    """auc: mean of the score over the run (default; see the module docstring for why); final: mean of the last --final-frac; steps: steps to --threshold (minimized)"""
    threshold: float | None = None
    """--objective steps: the score to reach (default: MiniGrid 0.9 return, NoisyRecall 0.5 accuracy)"""
    final_frac: float = 0.1
    """--objective final: the last fraction of each run's steps whose logged points are averaged"""
    smooth: int = 10
    """--objective steps: trailing mean over this many logged points"""
    pruner: Literal["median", "halving", "none"] = "median"
    """median: prune a trial whose best value so far is below the median of completed trials at the same step; halving: successive halving; none"""
    prune_points: int = 10
    """checkpoints at every 1/N of the steps at which a trial reports and may be pruned"""
    prune_startup: int = 3
    """completed trials before the median pruner prunes anything"""
    enqueue: tuple[str, ...] = ()
    """trials to run first with these params, one per entry as key=value,key=value (e.g. the current defaults as a baseline); ones the study already holds are skipped"""
    sampler_seed: int = 0
    """seed of the TPE sampler"""
    threads_per_run: int = 1
    """torch threads per run (train.py's --torch-threads; a Ray task reserves as many CPUs); 0: share the cores, max(1, cores // jobs). 1 by default: small recurrent models train fastest on one thread each (docs/sweeps.md)"""
    jobs: int = 0
    """runs trained at once (each a train.py process with --threads-per-run torch threads); 0: one per core (with --executor ray: as many as the cluster's CPUs hold)"""
    executor: Literal["local", "ray"] = "local"
    """where runs train: local processes, or Ray tasks on a cluster (pip install -e ".[ray]")"""
    ray_address: str | None = None
    """--executor ray: the cluster to join (auto: the one this machine is part of; default: a local Ray)"""
    gpus_per_run: float = 0.0
    """--executor ray with --device cuda in --train-args: GPUs each run reserves"""
    poll: float = 5.0
    """seconds between reads of the running runs' events for pruning"""


# ----------------------------------------------------------------------------- the driver


@dataclass
class TrialRuns:
    """One trial in flight: its optuna trial and a job per seed."""

    trial: Any  # optuna.trial.Trial
    params: dict
    jobs: dict[int, Job]  # seed -> job
    queued: list[int] = field(default_factory=list)  # seeds not yet submitted
    codes: dict[int, int] = field(default_factory=dict)  # seed -> exit status, for runs that ended
    reported: set[int] = field(default_factory=set)  # checkpoint steps already reported (or skipped)
    state: str = "running"  # running | pruned | failed | elsewhere (told, or not ours to tell)
    cache: dict[int, tuple] = field(default_factory=dict)  # seed -> (events files' stat, curves)

    @property
    def number(self) -> int:
        return self.trial.number

    def submitted(self) -> list[int]:
        return [s for s in self.jobs if s not in self.queued]

    def live(self) -> list[int]:
        return [s for s in self.submitted() if s not in self.codes]


def read_curves(tr: TrialRuns, seed: int) -> dict[str, Curve]:
    """The run's scalars, re-read only when its events files changed."""
    d = tr.jobs[seed].run_dir
    files = sorted(d.glob("events.out.tfevents.*")) if d.is_dir() else []
    key = tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    if seed not in tr.cache or tr.cache[seed][0] != key:
        tr.cache[seed] = (key, load_scalars(d) if files else {})
    return tr.cache[seed][1]


def report_progress(sw: Sweep, tr: TrialRuns, until: int | None = None) -> list[tuple[int, float]]:
    """Report every checkpoint all of the trial's seeds have passed (up to `until`) and not yet
    reported: the mean over seeds of the objective of the curves cut there. Returns what it reported."""
    reached = []
    curves = {}
    for seed in tr.jobs:
        if seed in tr.queued:
            return []
        curves[seed] = read_curves(tr, seed)
        reached.append(last_step(curves[seed]))
    limit = min(reached) if until is None else until
    done = []
    for c in checkpoints(sw.args.total_timesteps, sw.args.prune_points):
        if c > limit or c in tr.reported:
            continue
        tr.reported.add(c)
        vals = [sw.value(curves[s], c) for s in tr.jobs]
        if any(v is None for v in vals):
            continue
        value = float(np.mean(vals))
        tr.trial.report(value, c)
        done.append((c, value))
    return done


def drive(study, sw: Sweep, executor, parallel: int, say: Callable[[str], None]) -> dict:
    """Run trials until the study holds --trials finished ones (or a signal). Returns counts."""
    import optuna
    from optuna.trial import TrialState

    dists = {p.name: p.dist for p in sw.params}
    out = sw.out
    active: dict[int, TrialRuns] = {}
    by_job: dict[str, tuple[TrialRuns, int]] = {}
    stats = {"told": 0, "elsewhere": 0, "interrupted": False, "failed": 0, "new": 0, "resumed": 0}
    stop = {"n": 0}

    def add(trial, params, resumed: bool):
        jobs = {}
        for seed in sw.args.seeds:
            name = sw.run_name(trial.number, seed)
            jobs[seed] = Job(name, sw.argv(trial.number, seed, params), (out / "logs" / f"{name}.log").absolute(),
                             (out / "runs" / name).absolute(), threads=sw.threads)
        tr = TrialRuns(trial, params, jobs, queued=list(jobs))
        active[trial.number] = tr
        for seed, job in jobs.items():
            by_job[job.name] = (tr, seed)
        stats["resumed" if resumed else "new"] += 1
        shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
        say(f"sweep: trial {trial.number} {'resumed' if resumed else 'started'}: {shown}")

    def drop(tr: TrialRuns):
        for seed in tr.live():
            executor.stop(tr.jobs[seed].name)
        tr.queued.clear()

    def finish(tr: TrialRuns):
        scores, tags = {}, set()
        for seed, job in tr.jobs.items():
            curves = read_curves(tr, seed)
            tags.add(score_curve(curves)[0])
            scores[str(seed)] = sw.value(curves, sw.args.total_timesteps)
        report_progress(sw, tr, until=sw.args.total_timesteps)  # complete trials carry every checkpoint
        tr.trial.set_user_attr("scores", scores)
        tr.trial.set_user_attr("score_tag", ",".join(sorted(tags)))
        if any(v is None for v in scores.values()):
            tr.trial.set_user_attr("note", "a run logged no score (no episode ended)")
            study.tell(tr.trial, state=TrialState.FAIL)
            stats["failed"] += 1
            say(f"sweep: trial {tr.number} FAILED: a run logged no score")
        else:
            value = float(np.mean(list(scores.values())))
            study.tell(tr.trial, value)
            say(f"sweep: trial {tr.number} finished: {sw.args.objective} {value:.4g} (seeds {', '.join(f'{v:.4g}' for v in scores.values())})")
        stats["told"] += 1

    def on_end(name: str, rc: int):
        tr, seed = by_job[name]
        tr.codes[seed] = rc
        if tr.state != "running" or rc == 0 or (stop["n"] and rc != RUNNING_ELSEWHERE):
            return
        if rc == RUNNING_ELSEWHERE:
            tr.state = "elsewhere"
            stats["elsewhere"] += 1
            drop(tr)
            say(f"sweep: trial {tr.number}: {name} is training in another process; leaving the trial to it")
            return
        tr.state = "failed"
        drop(tr)
        why = "Ray gave up on it" if rc == LOST else f"exit {rc}"
        tr.trial.set_user_attr("note", f"{name}: {why}; see logs/{name}.log")
        study.tell(tr.trial, state=TrialState.FAIL)
        stats["told"] += 1
        stats["failed"] += 1
        say(f"sweep: trial {tr.number} FAILED: {name} {why} (see {tr.jobs[seed].log})")

    def on_signal(signum, _frame):
        stop["n"] += 1
        say(f"sweep: got signal {signum}; " + ("asking runs to checkpoint and stop" if stop["n"] == 1 else "stopping runs now"))
        for name in executor.running():
            executor.stop(name)

    finished0 = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)))
    for ft in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        tr_obj = optuna.trial.Trial(study, ft._trial_id)
        add(tr_obj, dict(ft.params), resumed=True)
        active[ft.number].reported = set(ft.intermediate_values)
    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    last_poll = time.monotonic()
    try:
        while True:
            while not stop["n"] and len(executor.running()) < parallel:
                tr = next((t for t in sorted(active.values(), key=lambda t: t.number) if t.queued), None)
                if tr is not None:
                    seed = tr.queued.pop(0)
                    executor.submit(tr.jobs[seed])
                elif finished0 + stats["told"] + stats["elsewhere"] + sum(t.state == "running" for t in active.values()) < sw.args.trials:
                    trial = study.ask(dists)
                    add(trial, dict(trial.params), resumed=False)
                else:
                    break
            if not executor.running() and (stop["n"] or not any(t.queued for t in active.values())):
                break
            for name, rc in executor.wait(timeout=max(0.02, min(sw.args.poll, 0.5))):
                on_end(name, rc)
            for tr in list(active.values()):
                if tr.state == "running" and len(tr.codes) == len(tr.jobs) and all(c == 0 for c in tr.codes.values()):
                    finish(tr)
                    tr.state = "done"
                if tr.state != "running" and not tr.live():
                    del active[tr.number]
            if not stop["n"] and sw.args.pruner != "none" and time.monotonic() - last_poll >= sw.args.poll:
                last_poll = time.monotonic()
                for tr in [t for t in active.values() if t.state == "running" and t.live()]:
                    done = report_progress(sw, tr)
                    if done and tr.trial.should_prune():
                        step, value = done[-1]
                        tr.state = "pruned"
                        drop(tr)
                        tr.trial.set_user_attr("pruned_at", step)
                        study.tell(tr.trial, state=TrialState.PRUNED)
                        stats["told"] += 1
                        say(f"sweep: trial {tr.number} pruned at step {step:,} ({100 * step / sw.args.total_timesteps:.0f}%): "
                            f"{sw.args.objective} so far {value:.4g}")
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    stats["interrupted"] = bool(stop["n"])
    return stats


def run_sweep(sw: Sweep, executor=None, say: Callable[[str], None] | None = None) -> int:
    """Open the study, run trials on `executor` (default: the one --executor names), write the
    outputs. Returns the exit status: 0, 130 when interrupted, 1 when no trial completed and some failed."""
    from optuna.trial import TrialState

    say = say or (lambda s: print(s, file=sys.stderr, flush=True))
    t0 = time.time()
    study = open_study(sw)
    parallel = sw.args.jobs or cores()
    own = executor is None
    if own:
        if sw.args.executor == "ray":
            executor = RayExecutor(sw.args.ray_address, sw.args.gpus_per_run)
            parallel = sw.args.jobs or max(1, executor.cpus() // sw.threads)
        else:
            executor = LocalExecutor(parallel)
    try:
        if own and sw.args.executor == "ray":
            executor.check_shared(sw.out)
        stats = drive(study, sw, executor, parallel, say)
    finally:
        if own:
            executor.close()
    study.set_user_attr("wall_time", float(study.user_attrs.get("wall_time", 0.0)) + time.time() - t0)
    study.set_user_attr("sessions", int(study.user_attrs.get("sessions", 0)) + 1)
    write_outputs(sw, study)
    trials = study.get_trials(deepcopy=False, states=shown())
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    say(f"sweep: {len(trials)} trials ({len(complete)} complete); {sw.out / 'summary.md'}"
        + (f", best: trial {study.best_trial.number} ({sw.args.objective} {study.best_value:.4g}), {sw.out / 'preset.toml'}" if complete else ""))
    if stats["interrupted"]:
        say(f"sweep: interrupted; run the same command again to continue ({sw.out})")
        return 130
    return 1 if not complete and any(t.state == TrialState.FAIL for t in trials) else 0


# ----------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None, executor=None) -> int:
    import tyro

    argv = list(sys.argv[1:] if argv is None else argv)
    command = "python sweep.py " + shlex.join(argv)
    args = tyro.cli(Args, args=glue_train_args(argv), description=__doc__.split("\n\n")[0])
    try:
        sw = prepare(args, command)
        return run_sweep(sw, executor)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
