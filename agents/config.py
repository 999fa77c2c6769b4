"""A run's configuration: train.py's flags and the checks made before anything is built.

``Args`` is train.py's command line (tyro: one flag per field, the field's docstring as its help),
grouped by what each setting is about; the groups are base classes, so the flags and config.json
stay flat (``--learning-rate``, not ``--ppo.learning-rate``). ``validate`` holds every check that
can be made before anything is built or written. The rest of a run's set-up lives beside it:
agents.presets (preset files, and ``parse_args``: the flags, then the preset), agents.build (envs,
agent, optimizer) and agents.collectors (the rollout source).
"""

from __future__ import annotations

import ast
import math
import time
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import torch
import tyro

from agents.ppo import PPOConfig


class UsageError(Exception):
    """Bad input: reported as one line on stderr with exit status 2, nothing written."""


@dataclass
class TaskArgs:
    env_id: str = "memrl/NoisyRecall-v0"
    """env id: a MiniGrid Memory id, memrl/NoisyRecall-v0, a POPGym id (popgym-RepeatFirstEasy-v0; pip install -e ".[popgym]"), or any gymnasium id with Discrete, MultiDiscrete or Box actions ('module:EnvId' imports a package)"""
    backbone: str = "lstm"
    """memory backbone: lstm, gru, mlp, mlstm, mlstm-orth, mru, mingru, lru, ffm, ssm, trxl (memory.names())"""
    memory_options: tuple[str, ...] = ()
    """backbone options as key=value, e.g. num_heads=4 kind=ldu (python -c 'import memory; print(memory.describe("mru"))' lists them)"""
    hidden_size: int = 128
    """width of the observation embedding and of the memory output"""
    head_size: int = 0
    """width of a hidden layer (Linear+ReLU, shared by policy and value) after the memory; 0: linear heads as CleanRL"""
    obs_encoder: Literal["auto", "onehot", "cells", "cnn"] = "auto"
    """observation encoder: auto (cnn for image observations, uint8 H x W x C; onehot otherwise), onehot (ids one-hot, Box flattened; any env), cells (MiniGrid symbolic only: a shared embedding per view cell, flattened and averaged over the view) or cnn (the Nature CNN from 36 px a side, a small CNN below); see agents/encoders.py"""
    obs_encoder_resolved: Annotated[str | None, tyro.conf.Suppress] = None
    """(recorded in config.json) what --obs-encoder meant for this env: cnn-nature, cnn-small, onehot or cells"""
    branch_size: int = 0
    """width of a separate hidden layer (Linear+ReLU) for the policy and one for the value, after the head; 0: none"""
    relu_memory: bool = False
    """apply a ReLU to the memory output (before the head), as the public LSTM PPO baseline does"""
    actor_init_gain: float = 0.01
    """orthogonal-init gain of the policy's output layer (CleanRL: 0.01, a near-uniform first policy; the public LSTM PPO baseline: sqrt(2))"""
    seed: int = 1
    """seed of torch, numpy, python and the envs (env i gets seed + i)"""
    total_timesteps: int = 250_000
    """env steps to train for (all envs together)"""
    preset: str = "auto"
    """hyperparameters from a preset file, under its table for --backbone: auto (presets/<env>.toml when it has one for the backbone), none (the plain defaults), a name in presets/, or a path; flags given on the command line win"""
    preset_applied: Annotated[str | None, tyro.conf.Suppress] = None
    """(recorded in config.json) the preset file, table and the fields this run took from it, if any"""


@dataclass
class EnvArgs:
    num_envs: int = 16
    """parallel envs"""
    num_steps: int = 128
    """steps per env per rollout"""
    view_size: int = 3
    """MiniGrid only: the agent's view (odd, >= 3; MiniGrid's own default is 7, memory benchmarks use 3)"""
    movement_only: bool = True
    """MiniGrid only: keep the 3 movement actions (left, right, forward), as memory benchmarks do"""
    minigrid_obs: Literal["symbolic", "rgb"] = "symbolic"
    """MiniGrid only: symbolic (the view's (object, colour, state) ids and the direction) or rgb (the view rendered, 8 px per tile: view_size*8 square, uint8; minigrid's RGBImgPartialObsWrapper)"""
    vocab_size: int = 8
    """NoisyRecall only: vocabulary size (keys, values and noise tokens); a quick setting by default, MAD's baseline is 32"""
    noise_vocab_size: int = 2
    """NoisyRecall only: how many tokens are noise (MAD's baseline: 16)"""
    seq_len: int = 32
    """NoisyRecall only: sequence length, an episode is seq_len - 1 steps (MAD's baseline: 128)"""
    frac_noise: float = 0.2
    """NoisyRecall only: probability that a slot is a noise pair"""
    env_kwargs: tuple[str, ...] = ()
    """extra keyword arguments for the env's constructor as key=value (values parsed as Python literals); every env takes them"""
    norm_obs: bool = False
    """normalize Box observations by a running mean and variance, clipped to [-10, 10] (CleanRL's continuous-action PPO); the statistics are checkpointed"""
    norm_reward: bool = False
    """scale rewards by the running std of the discounted return, clipped to [-10, 10] (CleanRL's continuous-action PPO); logged returns stay raw"""


@dataclass
class RunArgs:
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto picks cuda when available"""
    torch_threads: int = 1
    """torch intra-op threads (1 is fastest on small CPU machines; see README)"""
    async_rollouts: bool = False
    """collect the next rollout in a worker process while the learner updates (the rollouts then lag the policy by one update; see agents/async_rollout.py)"""
    runs_dir: str = "runs"
    """where run directories are created"""
    run_name: str | None = None
    """run directory name (default <env>__<backbone>__<seed>__<unix time>); never overwritten"""
    resume: str | None = None
    """continue the run in this directory from its checkpoint, with its stored config; only --total-timesteps (larger: extends the run), --torch-threads, --progress and --checkpoint-every may be given with it"""
    checkpoint_every: int = 50
    """write a checkpoint every this many updates (also at the end and on SIGINT/SIGTERM)"""
    eval_episodes: int = 0
    """after training, evaluate the greedy policy on this many fresh episodes (one per env)"""
    progress: bool = True
    """show a progress line on stderr"""


# Field order (and so --help and config.json order): task, envs, PPO, running.
@dataclass
class Args(RunArgs, PPOConfig, EnvArgs, TaskArgs):
    """Train one PPO agent with a memory backbone."""


# Flags that --resume takes from the command line instead of the checkpoint's config.
RUNTIME_FIELDS = ("torch_threads", "progress", "checkpoint_every")


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


# ----------------------------------------------------------------------------- validation

# Numeric ranges, checked in one place: (field, lowest, lowest allowed itself?, what it means).
_INT_AT_LEAST = {
    "total_timesteps": 1, "num_envs": 1, "num_steps": 1, "hidden_size": 1, "num_minibatches": 1,
    "update_epochs": 1, "torch_threads": 1, "checkpoint_every": 1, "head_size": 0, "branch_size": 0,
    "eval_episodes": 0, "vocab_size": 1, "noise_vocab_size": 0, "seq_len": 1,
}
_INT_NOTES = {"head_size": " (0: linear heads)", "branch_size": " (0: no branch layers)"}
# float fields: (low, low inclusive, high, high inclusive)
_FLOAT_RANGES = {
    "learning_rate": (0.0, False, math.inf, False),
    "gamma": (0.0, False, 1.0, True),
    "gae_lambda": (0.0, True, 1.0, True),
    "clip_coef": (0.0, False, math.inf, False),
    "ent_coef": (0.0, True, math.inf, False),
    "vf_coef": (0.0, True, math.inf, False),
    "max_grad_norm": (0.0, False, math.inf, False),
    "target_kl": (0.0, False, math.inf, False),
    "actor_init_gain": (0.0, False, math.inf, False),
    "frac_noise": (0.0, True, 1.0, True),
}


def _interval(lo: float, lo_in: bool, hi: float, hi_in: bool) -> str:
    if hi == math.inf:
        return f"{'>=' if lo_in else '>'} {lo:g}"
    return f"in {'[' if lo_in else '('}{lo:g}, {hi:g}{']' if hi_in else ')'}"


def check_ranges(args: Args) -> None:
    """Every numeric flag in its range; a non-finite float is never valid."""
    for name, low in _INT_AT_LEAST.items():
        v = getattr(args, name)
        if v < low:
            raise UsageError(f"{flag(name)} must be >= {low}{_INT_NOTES.get(name, '')}, got {v}")
    for name, (lo, lo_in, hi, hi_in) in _FLOAT_RANGES.items():
        v = getattr(args, name)
        if v is None:  # target_kl: off
            continue
        ok = math.isfinite(v) and (v >= lo if lo_in else v > lo) and (v <= hi if hi_in else v < hi)
        if not ok:
            raise UsageError(f"{flag(name)} must be {_interval(lo, lo_in, hi, hi_in)} and finite, got {v}")
    if not 0 <= args.seed <= 2**32 - 1 - args.num_envs:
        raise UsageError(f"--seed must be in [0, 2**32 - 1 - num-envs] (env i gets seed + i), got {args.seed}")


@dataclass(frozen=True)
class Checked:
    """What validation resolves, so nothing is parsed twice: the backbone's typed options, the BPTT
    chunk length and the env's extra keyword arguments."""

    memory_options: dict[str, Any]
    bptt_len: int
    env_kwargs: dict[str, Any]


def parse_literal_kwargs(items: tuple[str, ...], what: str) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise UsageError(f"{what} entry {item!r} is not key=value")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = ast.literal_eval(v.strip())
        except (ValueError, SyntaxError):
            out[k.strip()] = v.strip()
    return out


def validate(args: Args) -> Checked:
    """Check everything that can be checked before building anything."""
    import memory

    check_ranges(args)
    if args.backbone not in memory.names():
        raise UsageError(f"unknown backbone {args.backbone!r}; choose one of: {', '.join(memory.names())}")
    try:
        mem_opts = memory.parse_options(args.backbone, list(args.memory_options))
    except ValueError as e:
        raise UsageError(str(e)) from None
    bptt = args.num_steps if args.bptt_len is None else args.bptt_len
    if bptt < 1 or args.num_steps % bptt:
        raise UsageError(f"--num-steps ({args.num_steps}) must be a multiple of --bptt-len ({bptt})")
    n_seq = args.num_envs * (args.num_steps // bptt)
    if args.num_minibatches > n_seq:
        raise UsageError(f"--num-minibatches ({args.num_minibatches}) exceeds the number of sequences per rollout ({n_seq} = num-envs x num-steps / bptt-len)")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda but no CUDA device is available; use --device cpu or auto")
    extra = parse_literal_kwargs(args.env_kwargs, "--env-kwargs")
    own = set(env_options(args)) & set(extra)
    if own:
        k = sorted(own)[0]
        raise UsageError(f"--env-kwargs {k}=... duplicates a flag: use {flag(k)}")
    return Checked(mem_opts, bptt, extra)


def env_options(args: Args) -> dict[str, Any]:
    """The settings of the env's suite (envs.suites: view_size for MiniGrid, vocab_size for
    NoisyRecall...) as ``args`` hold them."""
    import envs

    return {f: getattr(args, f) for f in envs.suite_of(args.env_id).flags}


def env_label(env_id: str) -> str:
    """An env id as a file name: memrl/NoisyRecall-v0 -> memrl-NoisyRecall-v0."""
    return env_id.replace("/", "-").replace(":", "-")


def run_dir_name(args: Args) -> str:
    return f"{env_label(args.env_id)}__{args.backbone}__{args.seed}__{int(time.time())}"



def given_fields(args: Args, argv: list[str] | None = None) -> set[str]:
    """The fields a command line set: those that differ from their default, plus those whose flag
    appears in ``argv`` (so a flag given at its default value counts too)."""
    default = Args()
    out = {f for f in vars(default) if getattr(args, f) != getattr(default, f)}
    for tok in argv or ():
        if tok.startswith("--"):
            name = tok[2:].split("=", 1)[0].replace("-", "_")
            if name.startswith("no_") and hasattr(default, name[3:]):
                name = name[3:]
            if hasattr(default, name):
                out.add(name)
    return out
