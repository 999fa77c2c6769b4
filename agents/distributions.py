"""The policy's action distribution, one class per action space, owned by the actor-critic.

The actor's output layer produces a flat parameter vector per step (``param_size`` wide); the
distribution turns it into actions and log-probabilities. Rollouts call ``act`` (sample, or the
mode when greedy, with its log-probability), PPO's update calls ``evaluate`` (log-probability of
the stored action and the entropy), and ``to_env`` turns a stored action into what the env takes.
Nothing outside this module assumes a Discrete action space.

- ``Categorical`` (Discrete(n)): logits [..., n]; Gumbel-max sampling.
- ``MultiCategorical`` (MultiDiscrete(nvec)): one categorical per dimension over its slice of the
  logits [..., sum(nvec)]; log-probability and entropy summed over the dimensions.
- ``DiagGaussian`` (Box): the mean [..., D] from the actor and a learned log-std per dimension that
  does not depend on the state (CleanRL's ppo_continuous_action). The sample is stored as drawn
  (the ratio is taken on it); the action sent to the env is clipped to the space's bounds.

Equations: docs/design.md section 7.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor, nn


def gumbel_argmax(logits: Tensor, greedy: bool) -> Tensor:
    """A sample of the categorical over the last dim (its mode when ``greedy``). Gumbel-max is exact
    and, unlike multinomial, does not throw on NaN logits: a diverged model reaches ppo_update's
    non-finite check and stops cleanly."""
    noise = 0.0 if greedy else -torch.log(-torch.log(torch.rand_like(logits)))
    return (logits + noise).argmax(-1)


def categorical_entropy(logp_all: Tensor) -> Tensor:
    """Per-step entropy [...] of a categorical given its log-probabilities [..., A]."""
    return -(logp_all.exp() * logp_all).sum(-1)


class ActionDistribution(nn.Module):
    """The interface: ``param_size`` (the actor's output width), ``action_shape`` and
    ``action_dtype`` (one step's stored action), ``act``, ``evaluate``, ``to_env``."""

    param_size: int
    action_shape: tuple[int, ...]
    action_dtype: torch.dtype

    def act(self, params: Tensor, greedy: bool = False) -> tuple[Tensor, Tensor]:
        """params [B, P] -> (action [B, *action_shape], its log-probability [B])."""
        raise NotImplementedError

    def evaluate(self, params: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
        """params [..., P], action [..., *action_shape] -> (log-probability [...], entropy [...])."""
        raise NotImplementedError

    def to_env(self, action: Tensor) -> Tensor:
        """A stored action [B, ...] as the env's action (still a tensor; the collector converts)."""
        return action


def categorical_act(logits: Tensor, greedy: bool) -> tuple[Tensor, Tensor]:
    logp_all = torch.log_softmax(logits, -1)
    action = gumbel_argmax(logits, greedy)
    return action, logp_all.gather(-1, action[..., None]).squeeze(-1)


def categorical_evaluate(logits: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
    logp_all = torch.log_softmax(logits, -1)
    return logp_all.gather(-1, action[..., None]).squeeze(-1), categorical_entropy(logp_all)


class Categorical(ActionDistribution):
    def __init__(self, n: int, start: int = 0):
        super().__init__()
        self.param_size, self.action_shape, self.action_dtype = int(n), (), torch.long
        self.start = int(start)

    def act(self, params, greedy=False):
        return categorical_act(params, greedy)

    def evaluate(self, params, action):
        return categorical_evaluate(params, action)

    def to_env(self, action):
        return action + self.start if self.start else action


class MultiCategorical(ActionDistribution):
    def __init__(self, nvec, start=None):
        super().__init__()
        nvec = [int(n) for n in np.asarray(nvec).reshape(-1)]
        self.nvec = nvec
        self.param_size, self.action_shape, self.action_dtype = sum(nvec), (len(nvec),), torch.long
        start = np.zeros(len(nvec), np.int64) if start is None else np.asarray(start, np.int64).reshape(-1)
        self.register_buffer("start", torch.as_tensor(start), persistent=False)

    def _split(self, params: Tensor) -> tuple[Tensor, ...]:
        return params.split(self.nvec, dim=-1)

    def act(self, params, greedy=False):
        acts, logps = [], []
        for logits in self._split(params):
            a, lp = categorical_act(logits, greedy)
            acts.append(a)
            logps.append(lp)
        return torch.stack(acts, -1), torch.stack(logps, -1).sum(-1)

    def evaluate(self, params, action):
        logp, ent = [], []
        for i, logits in enumerate(self._split(params)):
            lp, e = categorical_evaluate(logits, action[..., i])
            logp.append(lp)
            ent.append(e)
        return torch.stack(logp, -1).sum(-1), torch.stack(ent, -1).sum(-1)

    def to_env(self, action):
        return action + self.start


_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


class DiagGaussian(ActionDistribution):
    """N(mean, diag(exp(log_std))^2), log_std a parameter (one per action dimension, init 0)."""

    def __init__(self, low: np.ndarray, high: np.ndarray, init_log_std: float = 0.0):
        super().__init__()
        low, high = np.asarray(low, np.float32).reshape(-1), np.asarray(high, np.float32).reshape(-1)
        self.param_size, self.action_shape, self.action_dtype = int(low.size), (int(low.size),), torch.float32
        self.log_std = nn.Parameter(torch.full((int(low.size),), float(init_log_std)))
        self.register_buffer("low", torch.as_tensor(low), persistent=False)
        self.register_buffer("high", torch.as_tensor(high), persistent=False)

    def log_prob(self, mean: Tensor, action: Tensor) -> Tensor:
        """sum_d -((a - mu)^2 / (2 sigma^2)) - log sigma - log sqrt(2 pi)."""
        z = (action - mean) * torch.exp(-self.log_std)
        return (-0.5 * z.pow(2) - self.log_std - _LOG_SQRT_2PI).sum(-1)

    def entropy(self, like: Tensor) -> Tensor:
        """sum_d 0.5 + log sqrt(2 pi) + log sigma, the same at every step (shape like[..., 0])."""
        ent = (0.5 + _LOG_SQRT_2PI + self.log_std).sum()
        return ent.expand(like.shape[:-1])

    def act(self, params, greedy=False):
        if greedy:
            action = params
        else:
            action = params + torch.exp(self.log_std) * torch.randn_like(params)
        return action, self.log_prob(params, action)

    def evaluate(self, params, action):
        return self.log_prob(params, action), self.entropy(params)

    def to_env(self, action):
        return torch.maximum(torch.minimum(action, self.high), self.low)


ACTION_SPACES = "Discrete, MultiDiscrete, Box (bounded)"


def _one_line(space: spaces.Space) -> str:
    return " ".join(str(space).split())  # numpy wraps long arrays over lines


def make_distribution(space: spaces.Space) -> ActionDistribution:
    """The distribution for a gymnasium action space; other spaces are a ValueError naming the choices."""
    if isinstance(space, spaces.Discrete):
        return Categorical(int(space.n), int(space.start))
    if isinstance(space, spaces.MultiDiscrete):
        if np.asarray(space.nvec).ndim != 1:
            raise ValueError(f"action space {_one_line(space)}: a MultiDiscrete action must be one vector (nvec 1-D)")
        return MultiCategorical(space.nvec, space.start)
    if isinstance(space, spaces.Box):
        if len(space.shape) != 1:
            raise ValueError(f"action space {_one_line(space)}: a Box action must be one vector (shape (D,)), got shape {space.shape}")
        if not (np.all(np.isfinite(space.low)) and np.all(np.isfinite(space.high))):
            raise ValueError(f"action space {_one_line(space)}: a Box action needs finite bounds (the action sent is clipped to them)")
        return DiagGaussian(space.low, space.high)
    raise ValueError(f"action space {_one_line(space)} is not supported; supported: {ACTION_SPACES}")
