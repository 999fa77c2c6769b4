"""The rollout source of a run (agents.rollout.Collector): in this process (agents.rollout) or in a
worker process (agents.async_rollout), chosen here so that neither module needs the other's."""

from __future__ import annotations

import torch

from agents.config import Args


def make_collector(args: Args, agent, env, bptt_len: int, device: torch.device):
    """The rollout source for a run (agents.rollout.Collector): this process steps ``env``, or, with
    --async-rollouts, a worker process builds its own envs (same seeds) and acts on CPU while the
    learner updates (``env`` then only served for the spaces, and is closed here). Either applies
    --norm-obs / --norm-reward (agents.build.make_normalizer)."""
    import dataclasses

    if args.async_rollouts:
        from agents.async_rollout import AsyncCollector

        env.close()
        return AsyncCollector(dataclasses.asdict(args), bptt_len, device)
    from agents.build import make_normalizer
    from agents.rollout import RolloutCollector

    return RolloutCollector(env, agent, args.num_steps, bptt_len, device, seed=args.seed,
                            normalizer=make_normalizer(args, env, device))
