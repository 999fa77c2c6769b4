"""A run's configuration and the builders that turn it into envs, an agent and an optimizer.

``Args`` is train.py's command line (tyro: one flag per field, the field's docstring as its help),
grouped by what each setting is about; the groups are base classes, so the flags and config.json
stay flat (``--learning-rate``, not ``--ppo.learning-rate``). ``validate`` holds every check that
can be made before anything is built or written; the builders (``make_env``, ``make_agent``,
``make_optimizer``, ``make_collector``) are what train.py, the rollout worker and compare.py share.
"""

from __future__ import annotations

import ast
import math
import time
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import tyro

from agents.ppo import PPOConfig


class UsageError(Exception):
    """Bad input: reported as one line on stderr with exit status 2, nothing written."""


@dataclass
class TaskArgs:
    env_id: str = "memrl/NoisyRecall-v0"
    """env id: a MiniGrid Memory id, memrl/NoisyRecall-v0, or any gymnasium id with Discrete actions ('module:EnvId' imports a package)"""
    backbone: str = "lstm"
    """memory backbone: lstm, gru, mlp, mlstm, mlstm-orth, mru, mingru, lru, ffm, ssm, trxl (memory.names())"""
    memory_options: tuple[str, ...] = ()
    """backbone options as key=value, e.g. num_heads=4 kind=ldu (python -c 'import memory; print(memory.describe("mru"))' lists them)"""
    hidden_size: int = 128
    """width of the observation embedding and of the memory output"""
    head_size: int = 0
    """width of a hidden layer (Linear+ReLU, shared by policy and value) after the memory; 0: linear heads as CleanRL"""
    obs_encoder: Literal["onehot", "cells"] = "onehot"
    """observation encoder: onehot (ids one-hot, Box flattened; any env) or cells (MiniGrid only: a shared embedding per view cell, flattened and averaged over the view; see agents/encoders.py)"""
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


def parse_args(argv: list[str]) -> tuple[Args, set[str]]:
    """train.py's command line: the flags (tyro), then the preset for fields they left alone.
    Returns the resolved Args and the fields the command line set."""
    args = tyro.cli(Args, args=argv, description=Args.__doc__)
    given = given_fields(args, argv)
    return (args if args.resume is not None else apply_preset(args, given)), given


# ----------------------------------------------------------------------------- presets

PRESETS_DIR = Path(__file__).resolve().parents[1] / "presets"
# Fields a preset may not set: what the run is (env, backbone), where it lives, how it resumes.
_NOT_IN_PRESETS = {"env_id", "backbone", "preset", "preset_applied", "resume", "runs_dir", "run_name"}


def env_label(env_id: str) -> str:
    """An env id as a file name: memrl/NoisyRecall-v0 -> memrl-NoisyRecall-v0."""
    return env_id.replace("/", "-").replace(":", "-")


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.toml"))


def _read_preset(path: Path) -> dict:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib

    try:
        return tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read preset {path} ({e})") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"preset {path} is not valid TOML ({e})") from None


def apply_preset(args: Args, given: set[str]) -> Args:
    """Args with the preset's values for every field the command line did not set. A preset file
    (TOML) holds one table per backbone, e.g. ``[lstm]`` with ``update_epochs = 8``; the auto preset
    of an env is presets/<env label>.toml. Unknown names, files, fields or values are UsageErrors."""
    import dataclasses

    spec = args.preset
    if args.preset_applied is not None:  # resolved already (compare.py plans with it, then trains)
        return args
    if spec == "none":
        return dataclasses.replace(args, preset_applied=None)
    if spec == "auto":
        path = PRESETS_DIR / f"{env_label(args.env_id)}.toml"
        if not path.is_file():
            return dataclasses.replace(args, preset_applied=None)
    elif spec.endswith(".toml") or "/" in spec:
        path = Path(spec)
        if not path.is_file():
            raise UsageError(f"no preset file {spec}")
    else:
        path = PRESETS_DIR / f"{spec}.toml"
        if not path.is_file():
            raise UsageError(f"unknown preset {spec!r}; choose none, auto, a path to a .toml file, or one of: {', '.join(preset_names())}")
    tables = _read_preset(path)
    table = tables.get(args.backbone)
    if table is None:
        if spec == "auto":  # the env has presets, not for this backbone
            return dataclasses.replace(args, preset_applied=None)
        raise UsageError(f"preset {path} has no table for backbone {args.backbone!r}; it has: {', '.join(sorted(tables)) or '(none)'}")
    fields = {f.name: f for f in dataclasses.fields(Args)}
    task_keys = sorted(k for k in table if k.replace("-", "_") in _NOISY_RECALL_FIELDS)
    if task_keys and not is_noisy_recall(args.env_id):
        import envs

        raise UsageError(f"preset {path} [{args.backbone}] sets {task_keys[0]!r}, a NoisyRecall setting, but --env-id is "
                         f"{args.env_id}; use this preset with --env-id {envs.NOISY_RECALL_ID}")
    values = {}
    for key, value in table.items():
        name = key.replace("-", "_")
        if name not in fields or name in _NOT_IN_PRESETS:
            raise UsageError(f"preset {path} [{args.backbone}] sets {key!r}, which is not a train.py setting a preset may set")
        if name in given:
            continue
        values[name] = tuple(value) if isinstance(value, list) else value
    try:
        taken = ", ".join(values) or "nothing: every value was given"
        where = f"presets/{path.name}" if path.resolve().parent == PRESETS_DIR else str(path)
        out = dataclasses.replace(args, **values, preset_applied=f"{where} [{args.backbone}]: {taken}")
    except TypeError as e:
        raise UsageError(f"preset {path} [{args.backbone}]: {e}") from None
    hints = typing.get_type_hints(Args)
    for name, value in values.items():
        expected = _expected_type(hints[name])
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
            setattr(out, name, value)
        choices = typing.get_args(hints[name]) if typing.get_origin(hints[name]) is Literal else None
        ok = (value is None and _optional(hints[name])) or (
            isinstance(value, expected) and not (expected is int and isinstance(value, bool))
            and (choices is None or value in choices)
            and (expected is not tuple or all(isinstance(v, str) for v in value)))
        if not ok:
            want = f"one of {', '.join(map(repr, choices))}" if choices else f"a {expected.__name__}"
            raise UsageError(f"preset {path} [{args.backbone}] sets {name} = {value!r}; it must be {want}")
    check_ranges(args)  # a bad flag is the command line's fault; after this, a range error is the preset's
    try:
        check_ranges(out)
    except UsageError as e:
        raise UsageError(f"preset {path} [{args.backbone}]: {e}") from None
    return out


def _optional(hint) -> bool:
    return type(None) in typing.get_args(hint)


def _expected_type(hint) -> type:
    """int, float, bool, str or tuple for a field's type hint (Optional and Literal unwrapped)."""
    if typing.get_origin(hint) is Literal:
        return type(typing.get_args(hint)[0])
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is tuple or hint is tuple:
        return tuple
    if args and typing.get_origin(hint) is not Annotated:
        return _expected_type(args[0])
    if typing.get_origin(hint) is Annotated:
        return _expected_type(args[0])
    return hint


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
    if is_noisy_recall(args.env_id):
        own = set(_noisy_recall_kwargs(args)) & set(extra)
        if own:
            k = sorted(own)[0]
            raise UsageError(f"--env-kwargs {k}=... duplicates a flag: use {flag(k)}")
    return Checked(mem_opts, bptt, extra)


def is_noisy_recall(env_id: str) -> bool:
    import envs

    return env_id.split(":")[-1] == envs.NOISY_RECALL_ID


_NOISY_RECALL_FIELDS = {"vocab_size", "noise_vocab_size", "seq_len", "frac_noise"}


def _noisy_recall_kwargs(args: Args) -> dict[str, Any]:
    return dict(vocab_size=args.vocab_size, noise_vocab_size=args.noise_vocab_size, seq_len=args.seq_len, frac_noise=args.frac_noise)


# ----------------------------------------------------------------------------- builders


def tune_malloc() -> None:
    """Keep glibc from mapping and unmapping each large temporary afresh: batched matrix work
    (Newton-Schulz on [8192, 32, 32]) runs much faster with these thresholds on small CPU machines
    (benchmarks/ops.py --malloc-compare measures it). The same as setting MALLOC_MMAP_THRESHOLD_ and
    MALLOC_TRIM_THRESHOLD_ before start; a no-op off glibc."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 64 * 2**20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 2**30)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def resolve_device(args: Args) -> torch.device:
    if args.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(args.device)


def make_env(args: Args, num_envs: int, device: torch.device, seed_offset: int = 0):
    """``num_envs`` envs as ``args`` describe them; errors (unknown id, bad keyword) are ValueErrors."""
    import envs

    extra = parse_literal_kwargs(args.env_kwargs, "--env-kwargs")
    seed = args.seed + seed_offset
    if is_noisy_recall(args.env_id):
        # On a GPU the env keeps the whole rollout there (no host copies).
        env_device = str(device) if device.type == "cuda" else None
        return envs.make_vec(args.env_id, num_envs, seed, device=env_device, env_kwargs={**_noisy_recall_kwargs(args), **extra})
    if envs.is_minigrid(args.env_id):
        return envs.make_vec(args.env_id, num_envs, seed, view_size=args.view_size, movement_only=args.movement_only, env_kwargs=extra)
    return envs.make_vec(args.env_id, num_envs, seed, env_kwargs=extra)


def make_agent(args: Args, env, memory_options: dict[str, Any] | None = None):
    """The actor-critic for ``env`` as ``args`` describe it (the rollout worker builds the same).
    ``memory_options``: the typed options ``validate`` resolved (parsed here when not given)."""
    import memory
    from agents.actor_critic import ActorCritic

    if memory_options is None:
        memory_options = memory.parse_options(args.backbone, list(args.memory_options))
    backbone = memory.make(args.backbone, args.hidden_size, args.hidden_size, **memory_options)
    return ActorCritic(
        env.single_observation_space, int(env.single_action_space.n), backbone, args.head_size,
        branch_size=args.branch_size, relu_memory=args.relu_memory, actor_init_gain=args.actor_init_gain,
        obs_encoder=args.obs_encoder,
    )


def make_optimizer(args: Args, agent: torch.nn.Module, fused: bool | None = None) -> torch.optim.Adam:
    """Adam with CleanRL's eps. ``fused`` (default: on CPU and CUDA) updates every parameter in one
    kernel instead of a loop of foreach ops (benchmarks/throughput.py --adam compares them); it
    matches the foreach step to float rounding."""
    if fused is None:
        fused = all(p.device.type in ("cpu", "cuda") for p in agent.parameters())
    return torch.optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5, fused=fused or None)


def run_dir_name(args: Args) -> str:
    return f"{env_label(args.env_id)}__{args.backbone}__{args.seed}__{int(time.time())}"


def make_collector(args: Args, agent, env, bptt_len: int, device: torch.device):
    """The rollout source for a run (agents.rollout.Collector): this process steps ``env``, or, with
    --async-rollouts, a worker process builds its own envs (same seeds) and acts on CPU while the
    learner updates (``env`` then only served for the spaces, and is closed here)."""
    import dataclasses

    if args.async_rollouts:
        from agents.async_rollout import AsyncCollector

        env.close()
        return AsyncCollector(dataclasses.asdict(args), bptt_len, device)
    from agents.rollout import RolloutCollector

    return RolloutCollector(env, agent, args.num_steps, bptt_len, device, seed=args.seed)


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
