"""A validated sweep (Sweep): what every trial's runs get (train.py flags: --preset none, the
fixed --train-args, the sampled params) and how a run is scored; ``prepare`` makes every check
that can be made before anything is written (the flags, each bound and choice of the space within
train.py's ranges, the env, the backbone's options, that an existing study is the same one)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from experiments.executors import check_executor
from experiments.grid import (Backbone, UsageError, check_backbone_options, default_threshold, threads_per_run,
                              parse_backbone, parse_train_argv)
from experiments.objectives import objective_value, score_curve
from experiments.space import Param, fixed_fields, fixed_train_args, parse_enqueue, parse_param
from experiments.stats import Curve
from experiments.study import STUDY_FILE, load_study

if TYPE_CHECKING:
    from experiments.sweep import Args

SWEEP_MISSING = 'sweep.py needs Optuna and matplotlib: pip install -e ".[sweep]"'


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
    from agents.build import make_env
    from agents.config import validate

    if args.trials < 1:
        raise UsageError(f"--trials must be >= 1, got {args.trials}")
    if args.total_timesteps < 1:
        raise UsageError(f"--total-timesteps must be >= 1, got {args.total_timesteps}")
    if not args.seeds or len(set(args.seeds)) != len(args.seeds):
        raise UsageError("--seeds needs one or more different seeds")
    if args.jobs < 0 or args.poll <= 0 or args.prune_points < 2 or args.prune_startup < 0 or args.smooth < 1 or not 0 < args.final_frac <= 1:
        raise UsageError("--jobs must be >= 0, --poll > 0, --prune-points >= 2, --prune-startup >= 0, --smooth >= 1, --final-frac in (0, 1]")
    check_executor(args)
    if not args.space:
        raise UsageError("--space needs one or more KEY=DIST, e.g. --space learning_rate=loguniform:1e-4:3e-3")
    try:
        backbone = parse_backbone(args.backbone)
    except UsageError as e:
        raise UsageError(f"--backbone: {e}") from None
    train_args = fixed_train_args(args.train_args)
    params = [parse_param(item) for item in args.space]
    names = [p.name for p in params]
    if len(set(names)) != len(names):
        raise UsageError(f"--space names a flag twice: {' '.join(names)}")
    both = sorted(set(names) & fixed_fields(train_args))
    if both:
        raise UsageError(f"--space {both[0]} is also fixed in --train-args; give it in one place")

    threads = threads_per_run(args.threads_per_run, args.jobs)
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
