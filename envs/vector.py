"""``envs.make_vec``: one entry point for every env memrl trains on (docs/design.md, contract 2)."""

from __future__ import annotations

import importlib
from typing import Any

import gymnasium as gym
from gymnasium import spaces
from gymnasium.vector import AutoresetMode

from envs.minigrid_probes import PROBE_IDS
from envs.minigrid_wrappers import MEMORY_IDS, make_minigrid

NOISY_RECALL_ID = "memrl/NoisyRecall-v0"
SUPPORTED_OBS = (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.Dict)


def is_minigrid(env_id: str) -> bool:
    return env_id.split(":")[-1].startswith("MiniGrid-")


def known_ids() -> str:
    return f"{', '.join(MEMORY_IDS)}, {NOISY_RECALL_ID}, the diagnostic variants {', '.join(PROBE_IDS)}, or any registered gymnasium id with Discrete actions ('module:EnvId' imports a package)"


def make_vec(
    env_id: str,
    num_envs: int,
    seed: int | None = None,
    *,
    view_size: int | None = None,
    movement_only: bool = False,
    device: str | None = None,
    env_kwargs: dict[str, Any] | None = None,
    autoreset_mode: AutoresetMode = AutoresetMode.SAME_STEP,
) -> gym.vector.VectorEnv:
    """Build ``num_envs`` copies of ``env_id`` as a VectorEnv. ``seed`` seeds the action space;
    reset it with ``venv.reset(seed=seed)`` (env i gets seed + i, gymnasium's rule). Errors (unknown id, unsupported spaces, bad kwargs) are
    ValueErrors naming the problem and the choices.

    - MiniGrid ids get compact symbolic observations (envs.minigrid_wrappers) and, with
      ``view_size``/``movement_only``, the 3x3 view and 3 actions that memory benchmarks use.
    - memrl/NoisyRecall-v0 is the native batched env; ``device`` keeps its outputs as torch
      tensors there (None: numpy, gymnasium's convention).
    - Anything else goes through gymnasium.make; Sync vectorization with SAME_STEP autoreset
      (no wasted steps); the rollout code handles NEXT_STEP envs too.
    """
    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    env_kwargs = dict(env_kwargs or {})
    if env_id.split(":")[-1] == NOISY_RECALL_ID:
        import envs  # noqa: F401  (registers the id)

        try:
            venv = gym.make_vec(
                NOISY_RECALL_ID, num_envs=num_envs, vectorization_mode="vector_entry_point",
                device=device, **env_kwargs,
            )
        except TypeError as e:
            raise ValueError(f"bad NoisyRecall parameter: {e}") from None
    else:
        if is_minigrid(env_id):
            import minigrid  # noqa: F401

            if ":" in env_id:  # a MiniGrid env registered by the user's package
                module, _, bare = env_id.partition(":")
                try:
                    importlib.import_module(module)
                except ImportError as e:
                    raise ValueError(f"unknown env id {env_id!r} (cannot import {module!r}: {e}); choose one of: {known_ids()}") from None
            else:
                bare = env_id
            if bare not in gym.envs.registry:
                raise ValueError(f"unknown env id {env_id!r}; choose one of: {known_ids()}")
            fn = lambda: make_minigrid(env_id, view_size, movement_only, **env_kwargs)  # noqa: E731
        else:
            if view_size is not None or movement_only:
                raise ValueError("--view-size and --movement-only apply to MiniGrid ids only")
            fn = lambda: gym.make(env_id, **env_kwargs)  # noqa: E731
        try:
            probe = fn()
        except (gym.error.Error, ModuleNotFoundError, ImportError) as e:
            raise ValueError(f"unknown env id {env_id!r} ({type(e).__name__}: {e}); choose one of: {known_ids()}") from None
        except TypeError as e:
            raise ValueError(f"bad keyword for env {env_id!r}: {e}") from None
        check_spaces(env_id, probe.observation_space, probe.action_space)
        probe.close()
        venv = gym.vector.SyncVectorEnv([fn] * num_envs, autoreset_mode=autoreset_mode)
    check_spaces(env_id, venv.single_observation_space, venv.single_action_space)
    venv.action_space.seed(seed)
    return venv


def check_spaces(env_id: str, obs_space: spaces.Space, act_space: spaces.Space) -> None:
    if not isinstance(act_space, spaces.Discrete):
        raise ValueError(f"env {env_id!r} has action space {act_space}; memrl supports Discrete actions only")
    if not isinstance(obs_space, SUPPORTED_OBS):
        raise ValueError(
            f"env {env_id!r} has observation space {type(obs_space).__name__}; supported: Box, Discrete, MultiDiscrete, Dict of those"
        )
    if isinstance(obs_space, spaces.Dict):
        for k, sub in obs_space.spaces.items():
            if isinstance(sub, spaces.Dict) or not isinstance(sub, SUPPORTED_OBS):
                raise ValueError(f"env {env_id!r}: Dict entry {k!r} is {type(sub).__name__}; supported: Box, Discrete, MultiDiscrete")
