"""The builders that turn a run's Args into envs, an agent and an optimizer: what train.py, the
rollout worker (agents.async_rollout), compare.py and the benchmarks share."""

from __future__ import annotations

from typing import Any

import torch

from agents.config import Args, env_options, parse_literal_kwargs


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
    """``num_envs`` envs as ``args`` describe them: the env's suite (envs.suites) builds them with
    the settings it reads. Errors (unknown id, bad keyword) are ValueErrors."""
    import envs

    # On a GPU a torch-native env (NoisyRecall) keeps the whole rollout there (no host copies).
    env_device = str(device) if device.type == "cuda" else None
    return envs.make_vec(args.env_id, num_envs, args.seed + seed_offset, device=env_device,
                         env_kwargs=parse_literal_kwargs(args.env_kwargs, "--env-kwargs"), **env_options(args))


def make_agent(args: Args, env, memory_options: dict[str, Any] | None = None):
    """The actor-critic for ``env`` as ``args`` describe it (the rollout worker builds the same).
    ``memory_options``: the typed options ``validate`` resolved (parsed here when not given)."""
    import memory
    from agents.actor_critic import ActorCritic

    if memory_options is None:
        memory_options = memory.parse_options(args.backbone, list(args.memory_options))
    backbone = memory.make(args.backbone, args.hidden_size, args.hidden_size, **memory_options)
    return ActorCritic(
        env.single_observation_space, env.single_action_space, backbone, args.head_size,
        branch_size=args.branch_size, relu_memory=args.relu_memory, actor_init_gain=args.actor_init_gain,
        obs_encoder=args.obs_encoder,
    )


def make_normalizer(args: Args, env, device: torch.device):
    """The collector's observation/reward normalization (agents.normalize) as --norm-obs and
    --norm-reward ask, or None. --norm-obs needs a float Box observation (ids are not magnitudes);
    anything else is a ValueError naming the space."""
    import numpy as np
    from gymnasium import spaces

    from agents.normalize import Normalizer

    obs_shape = None
    if args.norm_obs:
        space = env.single_observation_space
        if not (isinstance(space, spaces.Box) and np.issubdtype(space.dtype, np.floating)):
            raise ValueError(f"--norm-obs normalizes a float Box observation; env {args.env_id!r} observes {' '.join(str(space).split())}")
        obs_shape = tuple(space.shape)
    return Normalizer.create(obs_shape, env.num_envs, args.gamma, args.norm_reward, device)


def make_optimizer(args: Args, agent: torch.nn.Module, fused: bool | None = None) -> torch.optim.Adam:
    """Adam with CleanRL's eps. ``fused`` (default: on CPU and CUDA) updates every parameter in one
    kernel instead of a loop of foreach ops (benchmarks/throughput.py --adam compares them); it
    matches the foreach step to float rounding."""
    if fused is None:
        fused = all(p.device.type in ("cpu", "cuda") for p in agent.parameters())
    return torch.optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5, fused=fused or None)
