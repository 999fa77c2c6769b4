"""Rollout collection: the one place where vector-env autoreset semantics are handled.

Every step stores what the PPO update needs, with three flags that encode episode boundaries:

- ``reset[t]``: obs[t] is the first observation of an episode; the memory restarts before it.
- ``valid[t]``: step t is a real transition. Gymnasium's NEXT_STEP autoreset spends one step after
  each episode end on the reset itself (action ignored, reward 0): that step is invalid, masked
  out of GAE and the loss, and the episode start is the observation it returns.
- ``next_value[t]``: the value to bootstrap from after step t: V of the next observation while the
  episode goes on; V(final observation, pre-reset memory state) after a time-limit truncation;
  0 after a termination (applied in GAE through ``terminated``).

NEXT_STEP: after a truncation at t, step t+1 (invalid) acts on the final observation with the
pre-reset state, so its value *is* the truncation bootstrap: next_value[t] = value[t+1] always.
SAME_STEP: the env returns the reset observation at once (reset[t+1] = done[t]) and the final one
in info["final_obs"]; truncated envs get one extra forward on it to bootstrap.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import concatenate, create_empty_array
from torch import Tensor

from agents.actor_critic import ActorCritic
from agents.encoders import obs_to_tensor
from agents.nested import tree_map
from agents.normalize import Normalizer
from memory import State


def autoreset_mode(env: VectorEnv) -> AutoresetMode:
    mode = env.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP)
    mode = AutoresetMode(mode) if not isinstance(mode, AutoresetMode) else mode
    if mode not in (AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP):
        raise ValueError(f"autoreset mode {mode.value} is not supported; use NextStep or SameStep")
    return mode


@dataclass
class Rollout:
    """Tensors [T, N] (obs [T, N, ...] or a dict of them) of one rollout, plus the memory states
    at the start of each BPTT chunk: start_states[i] [K, N, ...] for chunks at t = k * L."""

    obs: Tensor | dict[str, Tensor]
    reset: Tensor
    actions: Tensor
    logprobs: Tensor
    values: Tensor
    rewards: Tensor
    terminated: Tensor
    dones: Tensor
    valid: Tensor
    next_values: Tensor
    start_states: State


@dataclass
class EpisodeStats:
    returns: list[float] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    env_ids: list[int] = field(default_factory=list)  # which env each finished episode ran in


def normalizer_state(source_state: dict) -> dict | None:
    """The normalization statistics in a rollout source's state (Collector.state_dict(), either
    layout: this process's collector, or the async worker's), None when there are none."""
    if not source_state:
        return None
    if source_state.get("async") is not None:
        return source_state["async"]["worker"]["collector"].get("norm")
    return source_state["collector"].get("norm")


def _to_bool(x, device) -> Tensor:
    return torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x, device=device).bool()


class Collector(Protocol):
    """What train.py needs from a rollout source; RolloutCollector (in this process) and
    agents.async_rollout.AsyncCollector (in a worker process) both implement it.

    ``state_dict()`` returns the checkpoint's collector entries, one layout for both:
    ``{"collector": tensors carried between rollouts, "env": the pickled envs or None,
    "async": the worker's state and the rollout in flight, or None}``."""

    def collect(self, agent: ActorCritic, greedy: bool = False, prefetch: bool = True) -> tuple[Rollout, EpisodeStats]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, d: dict) -> None: ...

    def close(self) -> None: ...


class RolloutCollector:
    """Steps a VectorEnv with the agent and keeps what carries over between rollouts: the next
    observation, the next reset flags, the memory state and the episode accumulators."""

    def __init__(self, env: VectorEnv, agent: ActorCritic, num_steps: int, bptt_len: int, device: torch.device,
                 seed: int | None, normalizer: Normalizer | None = None):
        self.env, self.num_steps, self.bptt_len, self.device = env, num_steps, bptt_len, device
        self.norm = normalizer  # --norm-obs / --norm-reward (agents.normalize); None: off
        self.mode = autoreset_mode(env)
        self.num_envs = env.num_envs
        obs, _ = env.reset(seed=seed)
        # A torch-native env (NoisyRecall given a device) takes and returns tensors: no host copies.
        self.torch_env = isinstance(obs, Tensor)
        self.next_obs = self._obs(obs)
        self.next_reset = torch.ones(self.num_envs, dtype=torch.bool, device=device)
        self.next_valid = torch.ones(self.num_envs, dtype=torch.bool, device=device)
        self.state = agent.initial_state(self.num_envs, device)
        self.ep_return = torch.zeros(self.num_envs, dtype=torch.float64, device=device)
        self.ep_length = torch.zeros(self.num_envs, dtype=torch.long, device=device)

    def _obs(self, obs, update: bool = True):
        """An env's observations as tensors on the device, normalized when --norm-obs is on."""
        obs = obs_to_tensor(obs, self.device)
        return obs if self.norm is None else self.norm.obs(obs, update)

    # -- checkpointing: everything needed to continue exactly where a rollout ended
    _CARRIED = ("next_obs", "next_reset", "next_valid", "state", "ep_return", "ep_length")

    def state_dict(self) -> dict:
        """The carried tensors, the normalization statistics and the envs (pickled with cloudpickle;
        None for an env that cannot be pickled, which then restarts from a reset on resume)."""
        import cloudpickle

        try:
            env_blob = cloudpickle.dumps(self.env)
        except Exception:  # noqa: BLE001 - an unpicklable env resumes from a reset instead
            env_blob = None
        carried = {k: getattr(self, k) for k in self._CARRIED}
        if self.norm is not None:
            carried["norm"] = self.norm.state_dict()
        return {"collector": carried, "env": env_blob, "async": None}

    def load_state_dict(self, d: dict) -> None:
        for k, v in d["collector"].items():
            v = tree_map(lambda x: x.to(self.device), v)
            if k == "norm":
                self.norm.load_state_dict(v)
            else:
                setattr(self, k, v)
        if d.get("env") is not None:
            import cloudpickle

            self.env.close()
            self.env = cloudpickle.loads(d["env"])
        else:
            print("note: this checkpoint holds no env state; envs restart from a reset", file=sys.stderr)

    def close(self) -> None:
        self.env.close()

    @torch.no_grad()
    def collect(self, agent: ActorCritic, greedy: bool = False, prefetch: bool = True) -> tuple[Rollout, EpisodeStats]:
        """Run num_steps steps of every env; returns the rollout and the episodes that ended in it.
        ``greedy`` takes the argmax action (evaluation); ``prefetch`` is for asynchronous
        collectors (nothing to start ahead here)."""
        T, N, L, dev = self.num_steps, self.num_envs, self.bptt_len, self.device
        stats = EpisodeStats()
        obs_buf = tree_map(lambda o: torch.empty((T, *o.shape), dtype=o.dtype, device=o.device), self.next_obs)
        reset = torch.empty(T, N, dtype=torch.bool, device=dev)
        valid = torch.empty_like(reset)
        dones = torch.empty_like(reset)
        terminated = torch.empty_like(reset)
        actions = torch.empty(T, N, *agent.dist.action_shape, dtype=agent.dist.action_dtype, device=dev)
        logprobs = torch.empty(T, N, device=dev)
        values = torch.empty(T, N, device=dev)
        rewards = torch.empty(T, N, device=dev)
        next_values = torch.empty(T, N, device=dev)
        bootstrap = {}  # t -> (env indices, bootstrap values) for SAME_STEP truncations
        start_states = []

        for t in range(T):
            if t % L == 0:
                start_states.append(tuple(s.clone() for s in self.state))
            tree_map(lambda buf, o: buf.__setitem__(t, o), obs_buf, self.next_obs)
            reset[t], valid[t] = self.next_reset, self.next_valid
            params, value, self.state = agent.step(self.next_obs, self.state, self.next_reset)
            action, logprobs[t] = agent.dist.act(params, greedy)
            actions[t], values[t] = action, value

            env_action = agent.dist.to_env(action)
            obs, reward, term, trunc, info = self.env.step(env_action if self.torch_env else env_action.cpu().numpy())
            self.next_obs = self._obs(obs)
            reward = torch.as_tensor(reward, device=dev, dtype=torch.float32)
            term, trunc = _to_bool(term, dev), _to_bool(trunc, dev)
            terminated[t], dones[t] = term, term | trunc
            rewards[t] = reward if self.norm is None else self.norm.reward(reward * valid[t], dones[t])
            self._track_episodes(stats, reward, valid[t], dones[t], info)  # the env's own rewards

            if self.mode is AutoresetMode.NEXT_STEP:
                # The step after a done resets the env: invalid; the one after that starts anew.
                self.next_reset = ~valid[t]
                self.next_valid = ~dones[t]
            else:
                self.next_reset = dones[t].clone()
                cut = trunc & ~term
                if cut.any():
                    bootstrap[t] = self._bootstrap_values(agent, info, cut)

        # V of the observation after the last step (the truncation bootstrap in NEXT_STEP mode).
        _, last_value, _ = agent.step(self.next_obs, self.state, self.next_reset)
        next_values[:-1] = values[1:]
        next_values[-1] = last_value
        for t, (idx, v) in bootstrap.items():
            next_values[t, idx] = v
        states = tuple(torch.stack(parts) for parts in zip(*start_states)) if start_states[0] else ()
        return Rollout(obs_buf, reset, actions, logprobs, values, rewards, terminated, dones, valid, next_values, states), stats

    def _bootstrap_values(self, agent: ActorCritic, info: dict, cut: Tensor) -> tuple[Tensor, Tensor]:
        """V(final observation) with the pre-reset memory state, for envs truncated this step."""
        idx = cut.nonzero().flatten()
        final = info["final_obs"]
        if isinstance(final, Tensor):
            final_obs = final[idx]
        else:
            space = self.env.single_observation_space
            items = [final[i] for i in idx.tolist()]
            final_obs = concatenate(space, items, create_empty_array(space, len(items)))
        state = tuple(s[idx] for s in self.state)
        # self.state already consumed obs[t]; the final observation follows it (no reset).
        no_reset = torch.zeros(len(idx), dtype=torch.bool, device=self.device)
        _, v, _ = agent.step(self._obs(final_obs, update=False), state, no_reset)
        return idx, v

    def _track_episodes(self, stats: EpisodeStats, reward: Tensor, valid: Tensor, done: Tensor, info: dict) -> None:
        self.ep_return += reward * valid
        self.ep_length += valid.long()
        if not done.any():
            return
        idx = done.nonzero().flatten()
        stats.returns.extend(self.ep_return[idx].tolist())
        stats.lengths.extend(self.ep_length[idx].tolist())
        stats.env_ids.extend(idx.tolist())
        self.ep_return[idx] = 0
        self.ep_length[idx] = 0
        src = info if "accuracy" in info else info.get("final_info", {})
        if "accuracy" in src:
            acc, mask = src["accuracy"], src.get("_accuracy")
            acc = torch.as_tensor(np.asarray(acc) if not isinstance(acc, Tensor) else acc)
            mask = torch.ones_like(acc, dtype=torch.bool) if mask is None else _to_bool(mask, acc.device)
            stats.accuracy.extend(acc[mask].double().tolist())

