"""``envs.make_vec``: one entry point for every env memrl trains on (docs/design.md, contract 2),
and the built-in suites it dispatches to (envs.suites): MiniGrid Memory, NoisyRecall and any other
gymnasium id. POPGym registers itself in envs/popgym.py."""

from __future__ import annotations

import importlib
from typing import Any, Callable

import gymnasium as gym
from gymnasium import spaces
from gymnasium.vector import AutoresetMode

from envs.minigrid_probes import PROBE_IDS
from envs.minigrid_wrappers import MEMORY_IDS, make_minigrid
from envs.suites import ACCURACY_TAG, Suite, all_suites, bare_id, register, suite_of

NOISY_RECALL_ID = "memrl/NoisyRecall-v0"
LEAF_OBS = (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)
OBS_SPACES = "Box, Discrete, MultiDiscrete, MultiBinary, and Dict or Tuple of those (nested)"
ACTION_SPACES = "Discrete, MultiDiscrete (one vector), Box (one vector, finite bounds)"


def is_minigrid(env_id: str) -> bool:
    return suite_of(env_id).name == "minigrid"


def known_ids() -> str:
    """Every suite's ids, for messages."""
    parts = []
    for s in all_suites():
        ids = s.ids()
        if ids:
            parts.append(", ".join(ids))
    return "; ".join(parts) + "; or any registered gymnasium id ('module:EnvId' imports a package)"


def make_vec(
    env_id: str,
    num_envs: int,
    seed: int | None = None,
    *,
    device: str | None = None,
    env_kwargs: dict[str, Any] | None = None,
    autoreset_mode: AutoresetMode = AutoresetMode.SAME_STEP,
    **options: Any,
) -> gym.vector.VectorEnv:
    """Build ``num_envs`` copies of ``env_id`` as a VectorEnv. ``seed`` seeds the action space;
    reset it with ``venv.reset(seed=seed)`` (env i gets seed + i, gymnasium's rule). ``options`` are
    the settings of the id's suite (envs.suites: ``view_size``/``movement_only`` for MiniGrid,
    ``vocab_size``... for NoisyRecall); ``env_kwargs`` go to the env's constructor. Errors (unknown
    id, unsupported spaces, bad kwargs, another suite's settings) are ValueErrors naming the
    problem and the choices.

    - MiniGrid ids get compact symbolic observations (envs.minigrid_wrappers) and, with
      ``view_size``/``movement_only``, the 3x3 view and 3 actions that memory benchmarks use.
    - memrl/NoisyRecall-v0 is the native batched env; ``device`` keeps its outputs as torch
      tensors there (None: numpy, gymnasium's convention).
    - Anything else goes through gymnasium.make; Sync vectorization with SAME_STEP autoreset
      (no wasted steps); the rollout code handles NEXT_STEP envs too.
    """
    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    suite = suite_of(env_id)
    foreign = sorted(k for k, v in options.items() if k not in suite.flags and v is not None and v is not False)
    if foreign:
        from envs.suites import flag_owners

        owners = sorted({s.title for k in foreign for s in flag_owners(k)}) or ["no"]
        raise ValueError(f"{', '.join('--' + k.replace('_', '-') for k in foreign)} appl{'ies' if len(foreign) == 1 else 'y'} to "
                         f"{' and '.join(owners)} ids only (env {env_id!r} is a {suite.title} id)")
    options = {k: v for k, v in options.items() if k in suite.flags}
    venv = suite.build(env_id, num_envs, device=device, env_kwargs=dict(env_kwargs or {}), autoreset_mode=autoreset_mode, **options)
    check_spaces(env_id, venv.single_observation_space, venv.single_action_space)
    venv.action_space.seed(seed)
    return venv


def sync_vector(env_id: str, fn: Callable[[], gym.Env], num_envs: int, autoreset_mode: AutoresetMode,
                errors: tuple[type[BaseException], ...] = ()) -> gym.vector.VectorEnv:
    """``num_envs`` copies of ``fn()`` in a SyncVectorEnv, after one probe copy has been built and
    its spaces checked (so a bad id or keyword is one clear ValueError, not a vector env's)."""
    try:
        probe = fn()
    except (gym.error.Error, ModuleNotFoundError, ImportError, *errors) as e:
        raise ValueError(f"unknown env id {env_id!r} ({type(e).__name__}: {e}); choose one of: {known_ids()}") from None
    except TypeError as e:
        raise ValueError(f"bad keyword for env {env_id!r}: {e}") from None
    check_spaces(env_id, probe.observation_space, probe.action_space)
    probe.close()
    return gym.vector.SyncVectorEnv([fn] * num_envs, autoreset_mode=autoreset_mode)


def import_module_of(env_id: str, what: str) -> str:
    """Import the package of a 'module:EnvId' id; returns the bare id."""
    if ":" not in env_id:
        return env_id
    module, _, bare = env_id.partition(":")
    try:
        importlib.import_module(module)
    except ImportError as e:
        raise ValueError(f"unknown env id {env_id!r} (cannot import {module!r}: {e}); choose one of: {what}") from None
    return bare


def check_spaces(env_id: str, obs_space: spaces.Space, act_space: spaces.Space) -> None:
    """The spaces memrl's agents take (agents.encoders, agents.distributions), or a ValueError."""
    import numpy as np

    ok_action = (isinstance(act_space, spaces.Discrete)
                 or (isinstance(act_space, spaces.MultiDiscrete) and np.asarray(act_space.nvec).ndim == 1)
                 or (isinstance(act_space, spaces.Box) and len(act_space.shape) == 1
                     and bool(np.all(np.isfinite(act_space.low)) and np.all(np.isfinite(act_space.high)))))
    if not ok_action:
        raise ValueError(f"env {env_id!r} has action space {' '.join(str(act_space).split())}; memrl supports {ACTION_SPACES}")
    _check_obs(env_id, obs_space, "")


def _check_obs(env_id: str, space: spaces.Space, where: str) -> None:
    if isinstance(space, LEAF_OBS):
        return
    if isinstance(space, spaces.Dict):
        for k, sub in space.spaces.items():
            _check_obs(env_id, sub, f"{where}[{k!r}]")
        return
    if isinstance(space, spaces.Tuple):
        for i, sub in enumerate(space.spaces):
            _check_obs(env_id, sub, f"{where}[{i}]")
        return
    part = f" entry {where}" if where else ""
    raise ValueError(f"env {env_id!r}: observation{part} is {type(space).__name__}; supported: {OBS_SPACES}")


# ----------------------------------------------------------------------------- built-in suites


def _build_minigrid(env_id, num_envs, *, device, env_kwargs, autoreset_mode, view_size=None, movement_only=False,
                    minigrid_obs="symbolic"):
    import minigrid  # noqa: F401  (registers the MiniGrid ids)

    bare = import_module_of(env_id, known_ids())  # a MiniGrid env registered by the user's package
    if bare not in gym.envs.registry:
        raise ValueError(f"unknown env id {env_id!r}; choose one of: {known_ids()}")
    return sync_vector(env_id, lambda: make_minigrid(env_id, view_size, movement_only, obs=minigrid_obs, **env_kwargs),
                       num_envs, autoreset_mode)


def _build_noisy_recall(env_id, num_envs, *, device, env_kwargs, autoreset_mode, **task):
    import envs  # noqa: F401  (registers the id)

    try:
        return gym.make_vec(NOISY_RECALL_ID, num_envs=num_envs, vectorization_mode="vector_entry_point",
                            device=device, **task, **env_kwargs)
    except TypeError as e:
        raise ValueError(f"bad NoisyRecall parameter: {e}") from None


def _build_gymnasium(env_id, num_envs, *, device, env_kwargs, autoreset_mode):
    return sync_vector(env_id, lambda: gym.make(env_id, **env_kwargs), num_envs, autoreset_mode)


def _recall_range(config: dict) -> tuple[float, float]:
    """NoisyRecall accuracy: from chance (1 / keys) to 1."""
    keys = (int(config.get("vocab_size", 8)) - int(config.get("noise_vocab_size", 2))) // 2
    return (1.0 / keys if keys > 0 else 0.0), 1.0


register(Suite(
    "gymnasium", "gymnasium", lambda env_id: True, _build_gymnasium,
))
register(Suite(
    "minigrid", "MiniGrid", lambda env_id: bare_id(env_id).startswith("MiniGrid-"), _build_minigrid,
    ids=lambda: [*MEMORY_IDS, *PROBE_IDS], flags=("view_size", "movement_only", "minigrid_obs"),
    # The goal is the only reward: any return > 0 is a success. 0.9 is the return a solved
    # MemoryS9 run holds (docs/design.md section 8).
    success=lambda ret: ret > 0, threshold=0.9, score_range=lambda config: (0.0, 1.0),
))
register(Suite(
    "noisy_recall", "NoisyRecall", lambda env_id: bare_id(env_id) == NOISY_RECALL_ID, _build_noisy_recall,
    ids=lambda: [NOISY_RECALL_ID], flags=("vocab_size", "noise_vocab_size", "seq_len", "frac_noise"),
    # 4x chance at the default vocab (8 keys): clearly remembering, yet within RL's reach on a CPU
    # in an hour; the supervised probe is where near-perfect recall is measured.
    score_tag=ACCURACY_TAG, threshold=0.5, score_range=_recall_range,
))
