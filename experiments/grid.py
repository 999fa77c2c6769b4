"""Planning a grid: backbone specs, one Run per env x backbone x seed with its train.py flags,
what each run needs (new, resume, restart, skip), and the checks made before anything trains
(every flag, backbone option value and env, and that an existing run is the same experiment)."""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parents[1]
TRAIN_PY = ROOT / "train.py"

# Flags compare.py sets itself for every run; passing them through --train-args would fight it.
OWN_FLAGS = {
    "--env-id": "--env-ids", "--backbone": "--backbones", "--seed": "--seeds",
    "--total-timesteps": "--total-timesteps", "--runs-dir": "--out", "--run-name": "(derived)",
    "--resume": "(automatic)", "--torch-threads": "--threads-per-run", "--memory-options": "--backbones NAME:key=value,...",
}
# Config keys that may differ between the grid's intent and an existing run without making it a
# different experiment (where it lives, how many threads it used, whether it drew a progress bar,
# how its preset was asked for: what a preset set shows in the values and in preset_applied, and
# runs made before presets existed have no preset key).
CONFIG_IGNORED = {"runs_dir", "run_name", "resume", "torch_threads", "progress", "checkpoint_every", "preset"}



class UsageError(Exception):
    """Bad input: one line on stderr, exit status 2, nothing run."""


@dataclass(frozen=True)
class Backbone:
    spec: str  # as given: mru:kind=ldu,num_heads=4
    name: str  # mru
    options: tuple[str, ...]  # ("kind=ldu", "num_heads=4"): train.py --memory-options

    @property
    def display(self) -> str:
        """Canonical form for tables: mru:kind=ldu,num_heads=4 (what config.json gives back)."""
        return self.name + (":" + ",".join(self.options) if self.options else "")

    @property
    def label(self) -> str:
        """File-name form used in run names: mru+kind=ldu+num_heads=4 (no ':' or ',')."""
        return "+".join((self.name, *self.options))


def parse_backbone(spec: str) -> Backbone:
    """'mru:kind=ldu,num_heads=4' -> Backbone; unknown names/options raise UsageError."""
    import memory

    name, _, rest = spec.partition(":")
    opts = tuple(s.strip() for s in rest.split(",") if s.strip())
    if name not in memory.names():
        raise UsageError(f"unknown backbone {name!r}; choose one of: {', '.join(memory.names())}")
    try:
        memory.parse_options(name, list(opts))
    except ValueError as e:
        raise UsageError(str(e)) from None
    return Backbone(spec, name, opts)


def canonical(spec: str) -> str:
    """'mru: kind=ldu, order=8' -> 'mru:kind=ldu,order=8' (Backbone.display, without validation)."""
    name, _, rest = spec.partition(":")
    opts = [o.strip() for o in rest.split(",") if o.strip()]
    return name + (":" + ",".join(opts) if opts else "")


def env_label(env_id: str) -> str:
    """The env part of a run name, as train.py writes it."""
    return env_id.replace("/", "-").replace(":", "-")


def run_name(env_id: str, backbone: Backbone, seed: int) -> str:
    return f"{env_label(env_id)}__{backbone.label}__{seed}"


def default_threshold(env_id: str) -> float | None:
    """The score that counts as solved, as the env's suite declares it (envs.suites)."""
    import envs

    return envs.suite_of(env_id).threshold


def parse_thresholds(items: Sequence[str], env_ids: Sequence[str]) -> dict[str, float | None]:
    out = {e: default_threshold(e) for e in env_ids}
    for item in items:
        env, sep, value = item.rpartition("=")
        try:
            v = float(value)
        except ValueError:
            raise UsageError(f"--threshold {item!r} is not ENV=VALUE or VALUE (a number)") from None
        if not sep:
            out = {e: v for e in out}
        elif env in out:
            out[env] = v
        else:
            raise UsageError(f"--threshold {item!r} names env {env!r}, which is not in --env-ids ({', '.join(env_ids)})")
    return out


@dataclass
class Run:
    env_id: str
    backbone: Backbone
    seed: int
    name: str
    run_dir: Path
    argv: list[str]  # train.py flags for a fresh start
    config: dict  # the resolved train.Args it should have (as config.json stores it)
    action: str = "new"  # new | skip (finished) | resume | restart


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def threads_per_run(threads: int, jobs: int) -> int:
    """--threads-per-run resolved: as given, or (0) the cores shared among --jobs runs."""
    if threads < 0:
        raise UsageError(f"--threads-per-run must be >= 0 (0: cores // jobs), got {threads}")
    return threads or max(1, cores() // (jobs or cores()))


def parse_train_args(text: str) -> list[str]:
    try:
        tokens = shlex.split(text)
    except ValueError as e:
        raise UsageError(f"--train-args is not a valid shell string: {e}") from None
    for tok in tokens:
        flag = tok.split("=", 1)[0]
        if flag in OWN_FLAGS:
            raise UsageError(f"--train-args must not contain {flag}: compare.py sets it (use {OWN_FLAGS[flag]})")
    return tokens


def parse_train_argv(argv: list[str]):
    """The resolved train.Args of train.py flags, parsed as train.py parses them
    (agents.presets.parse_args: tyro, then the env's preset for the fields the flags leave alone), so
    a run's config here is the config.json train.py will write. A parse error becomes one line
    (tyro prints a boxed, multi-line message)."""
    import contextlib
    import io

    from agents.config import UsageError as TrainUsageError
    from agents.presets import parse_args

    buf = io.StringIO()
    try:
        with contextlib.redirect_stderr(buf), contextlib.redirect_stdout(buf):
            return parse_args(argv)[0]
    except TrainUsageError as e:
        raise UsageError(f"--train-args: {e}") from None
    except SystemExit:
        lines = [ln.strip(" -\u2500\u2502\u256d\u256e\u2570\u256f") for ln in buf.getvalue().splitlines()]
        lines = [ln for ln in lines if ln]
        msg = lines[1] if len(lines) > 1 else (lines[0] if lines else "could not parse")
        raise UsageError(f"--train-args: {msg}") from None


def check_backbone_options(bb: Backbone, hidden_size: int) -> None:
    """Build the backbone once with its options at the grid's width, so a bad option value
    (mru:kind=nope, a head count that does not divide the width) stops the grid before any run."""
    import memory

    try:
        with torch_quiet():
            memory.make(bb.name, hidden_size, hidden_size, **memory.parse_options(bb.name, list(bb.options)))
    except (ValueError, TypeError, AssertionError, RuntimeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UsageError(f"--backbones {bb.spec!r}: {first}") from None


def torch_quiet():
    """A context in which building a module prints nothing (warnings stay warnings)."""
    import contextlib
    import io

    return contextlib.redirect_stdout(io.StringIO())


def plan(args, remote_device: bool = False, suite=None) -> tuple[list[Run], int]:
    """Validate the grid (compare.Args) and decide what each run needs. Returns (runs, threads
    per run). ``remote_device``: the runs train on other machines (Ray), so --device cuda is not
    checked against this machine's devices. ``suite`` (experiments.suite_files.SuiteFile): its
    envs replace --env-ids, and each env's suite settings go before --train-args."""
    import torch

    from agents.config import UsageError as TrainUsageError
    from agents.build import make_env
    from agents.config import env_options, validate
    from agents.encoders import resolve_encoder

    if args.total_timesteps < 1:
        raise UsageError(f"--total-timesteps must be >= 1, got {args.total_timesteps}")
    if args.jobs < 0:
        raise UsageError(f"--jobs must be >= 0 (0: one per core), got {args.jobs}")
    env_ids = list(suite.envs) if suite is not None else list(args.env_ids)
    if not args.backbones or not env_ids or not args.seeds:
        raise UsageError("--backbones, --env-ids and --seeds each need at least one value")
    for what, values in (("--backbones", args.backbones), ("--env-ids", env_ids), ("--seeds", args.seeds)):
        if len(set(values)) != len(values):
            raise UsageError(f"{what} has duplicates: {' '.join(map(str, values))}")
    backbones = [parse_backbone(b) for b in args.backbones]
    extra = parse_train_args(args.train_args)
    threads = threads_per_run(args.threads_per_run, args.jobs)
    runs_dir = Path(args.out) / "runs"

    runs: list[Run] = []
    obs_spaces: dict[tuple, object] = {}  # (env id, env settings) -> its observation space
    checked_backbones: set[str] = set()
    for env_id in env_ids:
        from_suite = suite.train_argv(env_id) if suite is not None else []
        for bb in backbones:
            for seed in args.seeds:
                name = run_name(env_id, bb, seed)
                argv = ["--env-id", env_id, "--backbone", bb.name, "--seed", str(seed),
                        "--total-timesteps", str(args.total_timesteps), "--runs-dir", str(runs_dir.absolute()),
                        "--run-name", name, "--torch-threads", str(threads), *from_suite, *extra]
                if bb.options:
                    argv += ["--memory-options", *bb.options]
                try:
                    targs = parse_train_argv(argv)
                except UsageError as e:
                    if not from_suite:
                        raise
                    raise UsageError(f"{e} (with suite {suite.name}'s settings for {env_id}: {' '.join(from_suite)})") from None
                try:
                    local = dataclasses.replace(targs, device="cpu") if remote_device and targs.device == "cuda" else targs
                    validate(local)
                    env_key = (env_id, repr(sorted(env_options(targs).items())), tuple(targs.env_kwargs))
                    if env_key not in obs_spaces:  # an unknown id or bad env flag fails here, once
                        env = make_env(targs, 1, torch.device("cpu"))
                        obs_spaces[env_key] = env.single_observation_space
                        env.close()
                    # What --obs-encoder means for this env, as train.py records it in config.json.
                    targs = dataclasses.replace(targs, obs_encoder_resolved=resolve_encoder(obs_spaces[env_key], targs.obs_encoder))
                    if bb.spec not in checked_backbones:
                        check_backbone_options(bb, targs.hidden_size)
                        checked_backbones.add(bb.spec)
                except TrainUsageError as e:
                    raise UsageError(str(e)) from None
                except ValueError as e:
                    raise UsageError(str(e)) from None
                config = json.loads(json.dumps(dataclasses.asdict(targs)))
                runs.append(Run(env_id, bb, seed, name, runs_dir / name, argv, config))

    for run in runs:
        d = run.run_dir
        if (d / "result.json").exists() or (d / "checkpoint.pt").exists():
            check_config(run)
            run.action = "skip" if (d / "result.json").exists() else "resume"
        elif d.exists():
            run.action = "restart"  # never got past its first checkpoint (removed when it starts)
    return runs, threads


def _as_now(config: dict) -> dict:
    """A stored config.json in today's terms, so that a run made before a setting existed still
    matches the grid that would make it today: a field added since takes its default (the run
    behaved so), and the encoder is compared by what it resolved to (obs_encoder_resolved; before
    it was recorded, obs_encoder itself: onehot or cells, which --obs-encoder auto resolves to
    onehot for every non-image observation)."""
    from agents.config import Args

    defaults = {f.name: f.default for f in dataclasses.fields(Args) if f.default is not dataclasses.MISSING}
    out = dict(config)
    for k, v in defaults.items():
        if k not in out and k != "obs_encoder_resolved":
            out[k] = json.loads(json.dumps(v))
    if config.get("obs_encoder_resolved") is None:
        kind = config.get("obs_encoder", "onehot")
        # onehot and cells resolve to themselves; auto without a record (none is written before the
        # env is made) resolves as today's auto does, so it is not compared.
        out["obs_encoder_resolved"] = kind if kind in ("onehot", "cells") else _BEFORE_RESOLVED
        out["obs_encoder"] = _BEFORE_RESOLVED  # compared through the resolved value only
    return out


_BEFORE_RESOLVED = object()


def check_config(run: Run) -> None:
    """An existing run must be the experiment the grid asks for, or its numbers would mix in."""
    path = run.run_dir / "config.json"
    try:
        have = json.loads(path.read_text())
    except (OSError, ValueError):
        raise UsageError(f"{run.run_dir} has no readable config.json; move it away or use another --out") from None
    have = _as_now(have)
    diff = [k for k in sorted(set(have) | set(run.config)) if k not in CONFIG_IGNORED
            and have.get(k) is not _BEFORE_RESOLVED and have.get(k) != run.config.get(k)]
    if diff:
        k = diff[0]
        raise UsageError(
            f"{run.run_dir} was made with {k}={have.get(k)!r}, this grid asks for {run.config.get(k)!r}"
            f" ({len(diff)} setting(s) differ: {', '.join(diff)}); use another --out or remove that run"
        )


def train_command(run: Run) -> list[str]:
    if run.action == "resume":
        # The thread count is this grid's (--jobs), not the one the run started with.
        i = run.argv.index("--torch-threads")
        return [sys.executable, str(TRAIN_PY), "--resume", str(run.run_dir), *run.argv[i : i + 2]]
    return [sys.executable, str(TRAIN_PY), *run.argv]


def glue_train_args(argv: list[str]) -> list[str]:
    """`--train-args "--num-envs 8"` -> `--train-args=--num-envs 8`: the value starts with '--',
    which the parser would otherwise take for a flag. --train-args always takes exactly one value."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] == "--train-args" and i + 1 < len(argv):
            out.append(f"--train-args={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out
