"""Observation and reward normalization (train.py --norm-obs, --norm-reward), as CleanRL's
ppo_continuous_action applies them through gym's NormalizeObservation / NormalizeReward wrappers:

- observations: (o - mean) / sqrt(var + 1e-8), clipped to [-10, 10], with the running mean and
  variance of every observation seen in training (updated per batch of envs);
- rewards: r / sqrt(var(G) + 1e-8), clipped to [-10, 10], where G is each env's running discounted
  return G <- gamma G + r (zeroed when an episode ends) and var(G) its running variance.

Here they live in the rollout collector instead of the env, so that (1) the episode returns it logs
stay the env's raw returns, (2) their statistics are plain tensors in the checkpoint (collector
state), so a resumed run continues with exactly the statistics it stopped with, and (3) an
evaluation can apply the training statistics frozen. The running moments use the parallel update
of Chan et al. (gymnasium's RunningMeanStd), in float64.
"""

from __future__ import annotations

import torch
from torch import Tensor

CLIP = 10.0
EPS = 1e-8


class RunningMoments:
    """Running mean and (population) variance of batches [B, *shape]; count starts at 1e-4."""

    def __init__(self, shape: tuple[int, ...], device: torch.device):
        self.mean = torch.zeros(shape, dtype=torch.float64, device=device)
        self.var = torch.ones(shape, dtype=torch.float64, device=device)
        self.count = torch.tensor(1e-4, dtype=torch.float64, device=device)

    def update(self, x: Tensor) -> None:
        x = x.to(torch.float64)
        b_mean, b_var, b_count = x.mean(0), x.var(0, unbiased=False), x.shape[0]
        delta = b_mean - self.mean
        total = self.count + b_count
        self.mean = self.mean + delta * b_count / total
        m2 = self.var * self.count + b_var * b_count + delta.pow(2) * self.count * b_count / total
        self.var = m2 / total
        self.count = total

    def state_dict(self) -> dict[str, Tensor]:
        return {"mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, d: dict[str, Tensor]) -> None:
        self.mean, self.var, self.count = (d[k].to(self.mean.device) for k in ("mean", "var", "count"))


class Normalizer:
    """What the collector applies to what an env returns: ``obs(o, update)`` and ``reward(r, done)``;
    either is the identity when switched off."""

    def __init__(self, obs_shape: tuple[int, ...] | None, num_envs: int, gamma: float, device: torch.device):
        self.obs_rms = RunningMoments(obs_shape, device) if obs_shape is not None else None
        self.ret_rms = None
        self.gamma = gamma
        self.returns = torch.zeros(num_envs, dtype=torch.float64, device=device)
        self.frozen = False  # statistics fixed (evaluation)

    @classmethod
    def create(cls, obs_shape: tuple[int, ...] | None, num_envs: int, gamma: float, norm_reward: bool, device: torch.device) -> Normalizer | None:
        if obs_shape is None and not norm_reward:
            return None
        n = cls(obs_shape, num_envs, gamma, device)
        if norm_reward:
            n.ret_rms = RunningMoments((), device)
        return n

    def obs(self, obs: Tensor, update: bool = True) -> Tensor:
        if self.obs_rms is None:
            return obs
        if update and not self.frozen:
            self.obs_rms.update(obs)
        out = (obs.to(torch.float64) - self.obs_rms.mean) / torch.sqrt(self.obs_rms.var + EPS)
        return out.clamp(-CLIP, CLIP).to(torch.float32)

    def reward(self, reward: Tensor, done: Tensor) -> Tensor:
        """The reward to train on, for one step of every env (``done``: the episode ended here)."""
        if self.ret_rms is None:
            return reward
        self.returns = self.returns * self.gamma + reward.to(torch.float64)
        self.ret_rms.update(self.returns)
        out = (reward.to(torch.float64) / torch.sqrt(self.ret_rms.var + EPS)).clamp(-CLIP, CLIP).to(reward.dtype)
        self.returns = torch.where(done, torch.zeros_like(self.returns), self.returns)
        return out

    def frozen_obs(self) -> Normalizer | None:
        """A copy that normalizes observations with the current statistics and never updates them
        (for evaluation on fresh envs); None when observations are not normalized."""
        if self.obs_rms is None:
            return None
        n = Normalizer(None, 0, self.gamma, self.returns.device)
        n.obs_rms, n.frozen = self.obs_rms, True
        return n

    def state_dict(self) -> dict:
        return {
            "obs": None if self.obs_rms is None else self.obs_rms.state_dict(),
            "ret": None if self.ret_rms is None else self.ret_rms.state_dict(),
            "returns": self.returns,
        }

    def load_state_dict(self, d: dict) -> None:
        if (d["obs"] is None) != (self.obs_rms is None) or (d["ret"] is None) != (self.ret_rms is None):
            raise ValueError("the checkpoint's normalization statistics do not match --norm-obs / --norm-reward")
        if self.obs_rms is not None:
            self.obs_rms.load_state_dict(d["obs"])
        if self.ret_rms is not None:
            self.ret_rms.load_state_dict(d["ret"])
        self.returns = d["returns"].to(self.returns.device)
