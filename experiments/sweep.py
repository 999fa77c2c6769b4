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
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import shlex
import signal
import sys
import time
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np

from experiments.executors import LOST, RAY_MISSING, RUNNING_ELSEWHERE, Job, LocalExecutor, RayExecutor
from experiments.grid import (Backbone, UsageError, check_backbone_options, cores, default_threshold,
                              parse_backbone, parse_train_argv)
from experiments.report import save_png, write_atomic
from experiments.rundata import ACCURACY_TAG, RETURN_TAG, SPS_TAG, load_scalars
from experiments.stats import Curve, final_value, steps_to_threshold

SWEEP_MISSING = 'sweep.py needs Optuna and matplotlib: pip install -e ".[sweep]"'
STUDY_FILE, STUDY_NAME = "study.journal", "sweep"


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
    jobs: int = 0
    """runs trained at once, each with max(1, cores // jobs) torch threads; 0: one per core (with --executor ray: as many as the cluster's CPUs hold)"""
    executor: Literal["local", "ray"] = "local"
    """where runs train: local processes, or Ray tasks on a cluster (pip install -e ".[ray]")"""
    ray_address: str | None = None
    """--executor ray: the cluster to join (auto: the one this machine is part of; default: a local Ray)"""
    gpus_per_run: float = 0.0
    """--executor ray with --device cuda in --train-args: GPUs each run reserves"""
    poll: float = 5.0
    """seconds between reads of the running runs' events for pruning"""


# train.py flags sweep.py sets itself (and the flag to use instead).
OWN_FLAGS = {
    "--env-id": "--env-id", "--backbone": "--backbone", "--seed": "--seeds", "--total-timesteps": "--total-timesteps",
    "--runs-dir": "--out", "--run-name": "(derived)", "--resume": "(automatic)", "--torch-threads": "--jobs",
    "--memory-options": "--backbone NAME:key=value,...",
}
# train.py settings that are not hyperparameters: never searched, never written into preset.toml.
NOT_SEARCHED = {"env_id", "backbone", "seed", "total_timesteps", "preset", "preset_applied", "runs_dir", "run_name",
                "resume", "torch_threads", "device", "async_rollouts", "checkpoint_every", "progress", "eval_episodes",
                "memory_options"}


# ----------------------------------------------------------------------------- the search space


@dataclass
class Param:
    name: str  # the train.py field, e.g. learning_rate
    spec: str  # the distribution as given, e.g. loguniform:1e-4:3e-3
    kind: type  # float, int, bool or str: the field's type
    dist: Any  # an optuna distribution
    values: list  # the values checked against train.py's ranges: the bounds, or every choice

    def flags(self, value) -> list[str]:
        flag = "--" + self.name.replace("_", "-")
        if self.kind is bool:
            return [flag if value else "--no-" + flag[2:]]
        return [flag, repr(float(value)) if self.kind is float else str(value)]


def _field_kind(hint) -> tuple[type | None, tuple | None]:
    """(int/float/bool/str, the Literal's choices or None) of a train.Args field; (None, None) for
    tuples and anything else a sweep cannot set."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        choices = typing.get_args(hint)
        return type(choices[0]), choices
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        return _field_kind(inner[0]) if len(inner) == 1 else (None, None)
    return (hint, None) if hint in (int, float, bool, str) else (None, None)


def _number(text: str, what: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise UsageError(f"{what}: {text!r} is not a number") from None
    if not math.isfinite(v):
        raise UsageError(f"{what}: {text!r} is not finite")
    return v


def _value(text: str, kind: type, choices: tuple | None, what: str):
    """One choice or enqueued value, typed as the field."""
    t = text.strip()
    if kind is bool:
        if t.lower() not in ("true", "false"):
            raise UsageError(f"{what}: {t!r} is not true or false")
        return t.lower() == "true"
    if kind is int:
        try:
            return int(t)
        except ValueError:
            raise UsageError(f"{what}: {t!r} is not an integer") from None
    if kind is float:
        return _number(t, what)
    if choices is not None and t not in choices:
        raise UsageError(f"{what}: {t!r} is not one of {', '.join(map(str, choices))}")
    return t


def parse_param(item: str) -> Param:
    """'learning_rate=loguniform:1e-4:3e-3' -> Param (checked against train.Args' field types)."""
    import optuna.distributions as D

    from agents.config import Args as TrainArgs

    key, sep, spec = item.partition("=")
    name = key.strip().replace("-", "_")
    if not sep or not name or not spec.strip():
        raise UsageError(f"--space entry {item!r} is not KEY=DIST (e.g. learning_rate=loguniform:1e-4:3e-3)")
    hints = typing.get_type_hints(TrainArgs)
    if name not in hints:
        raise UsageError(f"--space {key.strip()!r} is not a train.py flag (python train.py --help lists them)")
    kind, choices = _field_kind(hints[name])
    if name in NOT_SEARCHED or kind is None:
        raise UsageError(f"--space {name}: sweep.py does not search --{name.replace('_', '-')}"
                         + (f" (it sets it: use {OWN_FLAGS['--' + name.replace('_', '-')]})" if "--" + name.replace("_", "-") in OWN_FLAGS else ""))
    spec = spec.strip()
    dist_kind, _, rest = spec.partition(":")
    what = f"--space {name}={spec}"
    parts = rest.split(":") if rest else []
    if dist_kind in ("uniform", "loguniform"):
        if kind is not float:
            raise UsageError(f"{what}: --{name.replace('_', '-')} takes {'an integer: use int:A:B' if kind is int else 'one of a list: use choice:A,B'}")
        if len(parts) != 2:
            raise UsageError(f"{what}: write {dist_kind}:LOW:HIGH")
        lo, hi = (_number(p, what) for p in parts)
        if not lo < hi:
            raise UsageError(f"{what}: LOW must be < HIGH")
        if dist_kind == "loguniform" and lo <= 0:
            raise UsageError(f"{what}: loguniform needs LOW > 0")
        return Param(name, spec, float, D.FloatDistribution(lo, hi, log=dist_kind == "loguniform"), [lo, hi])
    if dist_kind == "int":
        if kind not in (int, float):
            raise UsageError(f"{what}: --{name.replace('_', '-')} is not a number; use choice:A,B")
        if len(parts) not in (2, 3):
            raise UsageError(f"{what}: write int:LOW:HIGH or int:LOW:HIGH:STEP")
        lo, hi, step = (int(_value(p, int, None, what)) for p in (*parts, "1")[:3])
        if not lo < hi or step < 1 or (hi - lo) % step:
            raise UsageError(f"{what}: needs LOW < HIGH, STEP >= 1 and HIGH - LOW a multiple of STEP")
        return Param(name, spec, kind, D.IntDistribution(lo, hi, step=step), [lo, hi])
    if dist_kind == "choice":
        vals = [_value(v, kind, choices, what) for v in rest.split(",") if v.strip()]
        if len(vals) < 2 or len(set(vals)) != len(vals):
            raise UsageError(f"{what}: choice needs two or more different values (a fixed value goes in --train-args)")
        return Param(name, spec, kind, D.CategoricalDistribution(vals), vals)
    raise UsageError(f"{what}: unknown distribution {dist_kind!r}; use uniform:A:B, loguniform:A:B, int:A:B[:STEP] or choice:V1,V2,...")


# ----------------------------------------------------------------------------- objective


def score_curve(curves: dict[str, Curve]) -> tuple[str, Curve | None]:
    """The run's score: charts/accuracy where the env logs it (NoisyRecall), else the return."""
    tag = ACCURACY_TAG if ACCURACY_TAG in curves else RETURN_TAG
    return tag, curves.get(tag)


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


# ----------------------------------------------------------------------------- validation


@dataclass
class Sweep:
    """A validated sweep: what every run gets and how trials are judged."""

    args: Args
    out: Path
    backbone: Backbone
    params: list[Param]
    train_args: list[str]
    threads: int
    threshold: float | None
    enqueued: list[dict]
    definition: dict  # what makes two commands the same study (stored in it, checked on continue)
    command: str

    @property
    def direction(self) -> str:
        return "minimize" if self.args.objective == "steps" else "maximize"

    def run_name(self, number: int, seed: int) -> str:
        return f"trial{number}__seed{seed}"

    def argv(self, number: int, seed: int, params: dict) -> list[str]:
        a = self.args
        argv = ["--env-id", a.env_id, "--backbone", self.backbone.name, "--seed", str(seed),
                "--total-timesteps", str(a.total_timesteps), "--runs-dir", str((self.out / "runs").absolute()),
                "--run-name", self.run_name(number, seed), "--torch-threads", str(self.threads)]
        if not any(t == "--preset" or t.startswith("--preset=") for t in self.train_args):
            argv += ["--preset", "none"]
        argv += self.train_args
        for p in self.params:
            if p.name in params:
                argv += p.flags(params[p.name])
        if self.backbone.options:
            argv += ["--memory-options", *self.backbone.options]
        return argv

    def value(self, curves: dict[str, Curve], horizon: int) -> float | None:
        a = self.args
        return objective_value(score_curve(curves)[1], horizon, a.objective, a.total_timesteps, a.final_frac, self.threshold, a.smooth)


def prepare(args: Args, command: str = "") -> Sweep:
    """Every check that can be made before anything is written; UsageError on bad input."""
    try:
        import matplotlib  # noqa: F401
        import optuna  # noqa: F401
    except ImportError:
        raise UsageError(SWEEP_MISSING) from None
    import torch

    from agents.config import UsageError as TrainUsageError
    from agents.config import make_env, validate

    if args.trials < 1:
        raise UsageError(f"--trials must be >= 1, got {args.trials}")
    if args.total_timesteps < 1:
        raise UsageError(f"--total-timesteps must be >= 1, got {args.total_timesteps}")
    if not args.seeds or len(set(args.seeds)) != len(args.seeds):
        raise UsageError("--seeds needs one or more different seeds")
    if args.jobs < 0 or args.poll <= 0 or args.prune_points < 2 or args.prune_startup < 0 or args.smooth < 1 or not 0 < args.final_frac <= 1:
        raise UsageError("--jobs must be >= 0, --poll > 0, --prune-points >= 2, --prune-startup >= 0, --smooth >= 1, --final-frac in (0, 1]")
    if args.executor != "ray" and (args.ray_address is not None or args.gpus_per_run):
        raise UsageError("--ray-address and --gpus-per-run need --executor ray")
    if args.gpus_per_run < 0:
        raise UsageError(f"--gpus-per-run must be >= 0, got {args.gpus_per_run}")
    if args.executor == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise UsageError(RAY_MISSING) from None
    if not args.space:
        raise UsageError("--space needs one or more KEY=DIST, e.g. --space learning_rate=loguniform:1e-4:3e-3")
    try:
        backbone = parse_backbone(args.backbone)
    except UsageError as e:
        raise UsageError(f"--backbone: {e}") from None
    try:
        train_args = shlex.split(args.train_args)
    except ValueError as e:
        raise UsageError(f"--train-args is not a valid shell string: {e}") from None
    for tok in train_args:
        if tok.split("=", 1)[0] in OWN_FLAGS:
            raise UsageError(f"--train-args must not contain {tok.split('=', 1)[0]}: sweep.py sets it (use {OWN_FLAGS[tok.split('=', 1)[0]]})")
    params = [parse_param(item) for item in args.space]
    names = [p.name for p in params]
    if len(set(names)) != len(names):
        raise UsageError(f"--space names a flag twice: {' '.join(names)}")
    fixed = {t[2:].split("=", 1)[0].replace("-", "_").removeprefix("no_") for t in train_args if t.startswith("--")}
    both = sorted(set(names) & fixed)
    if both:
        raise UsageError(f"--space {both[0]} is also fixed in --train-args; give it in one place")

    jobs = args.jobs or cores()
    threads = max(1, cores() // jobs)
    sw = Sweep(args, Path(args.out), backbone, params, train_args, threads, None, [], {}, command)
    base = parse_train_argv(sw.argv(0, args.seeds[0], {}))
    try:
        local = dataclasses.replace(base, device="cpu") if args.executor == "ray" and base.device == "cuda" else base
        for seed in args.seeds:
            validate(dataclasses.replace(local, seed=seed))
        make_env(base, 1, torch.device("cpu")).close()
        for p in params:  # every bound and choice within train.py's ranges, the other flags as fixed
            for v in p.values:
                try:
                    validate(dataclasses.replace(local, **{p.name: v}))
                except TrainUsageError as e:
                    raise UsageError(f"--space {p.name}={p.spec}: {e}") from None
    except (TrainUsageError, ValueError) as e:
        raise UsageError(str(e)) from None
    try:
        check_backbone_options(backbone, base.hidden_size)
    except UsageError as e:
        raise UsageError(str(e).replace("--backbones", "--backbone", 1)) from None
    if args.executor == "ray" and base.device == "cuda" and not args.gpus_per_run:
        raise UsageError("--device cuda with --executor ray needs --gpus-per-run F (the GPUs each run reserves)")
    if args.gpus_per_run and base.device != "cuda":
        raise UsageError("--gpus-per-run needs --device cuda in --train-args")
    sw.threshold = args.threshold if args.threshold is not None else default_threshold(args.env_id)
    if args.objective == "steps" and sw.threshold is None:
        raise UsageError(f"--objective steps needs --threshold (no default for {args.env_id})")
    sw.enqueued = [parse_enqueue(item, params) for item in args.enqueue]
    sw.definition = {
        "env_id": args.env_id, "backbone": backbone.display, "space": {p.name: p.spec for p in params},
        "seeds": list(args.seeds), "total_timesteps": args.total_timesteps, "train_args": train_args,
        "objective": args.objective, "threshold": sw.threshold if args.objective == "steps" else None,
        "final_frac": args.final_frac if args.objective == "final" else None,
        "smooth": args.smooth if args.objective == "steps" else None,
    }
    journal = sw.out / STUDY_FILE
    if journal.exists():
        try:
            have = load_study(sw.out).user_attrs.get("definition", {})
        except Exception as e:  # noqa: BLE001 (not a study this tool wrote, or a damaged file)
            raise UsageError(f"cannot read the study in {journal} ({type(e).__name__}: {e}); use another --out") from None
        diff = [k for k in sw.definition if have.get(k) != sw.definition[k]]
        if diff:
            k = diff[0]
            raise UsageError(f"{journal} is a study with {k}={have.get(k)!r}, this command asks for {sw.definition[k]!r}; "
                             f"use another --out to start a new study")
    return sw


def parse_enqueue(item: str, params: list[Param]) -> dict:
    by_name = {p.name: p for p in params}
    out = {}
    for kv in item.split(","):
        k, sep, v = kv.partition("=")
        k = k.strip().replace("-", "_")
        if not sep or k not in by_name:
            raise UsageError(f"--enqueue {item!r}: {kv!r} is not KEY=VALUE with KEY in --space ({', '.join(by_name)})")
        p = by_name[k]
        val = _value(v, p.kind, None, f"--enqueue {k}")
        try:
            inside = p.dist._contains(p.dist.to_internal_repr(val))
        except (ValueError, TypeError):
            inside = False
        if not inside:
            raise UsageError(f"--enqueue {k}={v.strip()} is outside --space {k}={p.spec}")
        out[k] = val
    return out


# ----------------------------------------------------------------------------- the study


def storage(out: Path):
    import optuna

    backend = optuna.storages.journal.JournalFileBackend(str(out / STUDY_FILE))
    return optuna.storages.JournalStorage(backend)


def load_study(out: Path, sampler=None, pruner=None):
    import optuna

    return optuna.load_study(study_name=STUDY_NAME, storage=storage(out), sampler=sampler, pruner=pruner)


def shown() -> tuple:
    """The trial states the outputs list (enqueued trials not yet started are only counted)."""
    from optuna.trial import TrialState

    return (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)


def make_pruner(sw: Sweep):
    import optuna

    if sw.args.pruner == "none":
        return optuna.pruners.NopPruner()
    if sw.args.pruner == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=checkpoints(sw.args.total_timesteps, sw.args.prune_points)[0])
    return optuna.pruners.MedianPruner(n_startup_trials=sw.args.prune_startup, n_warmup_steps=0)


def open_study(sw: Sweep):
    """Create the study (first run) or load it; the sampler is seeded with --sampler-seed and the
    number of trials already there, so a continued study does not redraw the first session's
    random start-up points."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sw.out.mkdir(parents=True, exist_ok=True)
    if not (sw.out / STUDY_FILE).exists():
        study = optuna.create_study(study_name=STUDY_NAME, storage=storage(sw.out), direction=sw.direction)
        study.set_user_attr("definition", sw.definition)
    n = len(load_study(sw.out).trials)
    sampler = optuna.samplers.TPESampler(seed=sw.args.sampler_seed * 100_003 + n, constant_liar=True,
                                         n_startup_trials=max(2, min(10, sw.args.trials // 3)))
    study = load_study(sw.out, sampler, make_pruner(sw))
    study.set_user_attr("command", sw.command)
    for params in sw.enqueued:
        study.enqueue_trial(params, skip_if_exists=True)
    return study


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
        sps = curves[seed].get(SPS_TAG)
        reached.append(int(sps[0][-1]) if sps is not None and len(sps[0]) else 0)
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


# ----------------------------------------------------------------------------- outputs


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
    total = 0
    for seed in sw.args.seeds:
        d = sw.out / "runs" / sw.run_name(t.number, seed)
        try:
            total += int(json.loads((d / "result.json").read_text())["global_step"])
            continue
        except (OSError, ValueError, KeyError):
            pass
        sps = load_scalars(d).get(SPS_TAG) if d.is_dir() else None
        total += int(sps[0][-1]) if sps is not None and len(sps[0]) else 0
    return total


def _duration(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else (f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s")


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


# ----------------------------------------------------------------------------- command line


def glue_flag_values(argv: list[str]) -> list[str]:
    """`--train-args "--num-envs 8"` -> `--train-args=--num-envs 8` (the value starts with '--')."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] == "--train-args" and i + 1 < len(argv):
            out.append(f"--train-args={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def main(argv: list[str] | None = None, executor=None) -> int:
    import tyro

    argv = list(sys.argv[1:] if argv is None else argv)
    command = "python sweep.py " + shlex.join(argv)
    args = tyro.cli(Args, args=glue_flag_values(argv), description=__doc__.split("\n\n")[0])
    try:
        sw = prepare(args, command)
        return run_sweep(sw, executor)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
