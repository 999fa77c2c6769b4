"""Observation encoders: any supported gymnasium space -> a flat float feature vector [N, D].

Discrete and MultiDiscrete ids are one-hot encoded (an id is a name, not a magnitude); Box is
flattened (uint8 scaled to [0, 1]); Dict concatenates its entries in key order.
"""

from __future__ import annotations

import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor, nn


class OneHot(nn.Module):
    """Discrete(n) or MultiDiscrete(nvec) -> concatenated one-hots [N, sum(nvec)]."""

    def __init__(self, nvec: np.ndarray, start: np.ndarray | None = None):
        super().__init__()
        nvec = np.asarray(nvec, dtype=np.int64).reshape(-1)
        start = np.zeros_like(nvec) if start is None else np.asarray(start, dtype=np.int64).reshape(-1)
        offsets = np.concatenate([[0], np.cumsum(nvec)[:-1]])
        self.register_buffer("offsets", torch.as_tensor(offsets - start), persistent=False)
        self.size = int(nvec.sum())

    def forward(self, obs: Tensor) -> Tensor:
        idx = obs.reshape(obs.shape[0], -1).long() + self.offsets  # [N, K]
        out = torch.zeros(obs.shape[0], self.size, device=obs.device)
        return out.scatter_(1, idx, 1.0)


class Flatten(nn.Module):
    def __init__(self, space: spaces.Box):
        super().__init__()
        self.size = int(np.prod(space.shape))
        self.scale = 1.0 / 255.0 if space.dtype == np.uint8 else 1.0

    def forward(self, obs: Tensor) -> Tensor:
        return obs.reshape(obs.shape[0], -1).float() * self.scale


class DictEncoder(nn.Module):
    def __init__(self, space: spaces.Dict):
        super().__init__()
        self.keys = sorted(space.spaces)
        self.parts = nn.ModuleDict({k: make_encoder(space[k]) for k in self.keys})
        self.size = sum(p.size for p in self.parts.values())

    def forward(self, obs: dict[str, Tensor]) -> Tensor:
        return torch.cat([self.parts[k](obs[k]) for k in self.keys], dim=1)


def make_encoder(space: spaces.Space) -> nn.Module:
    """An encoder module with a ``size`` attribute (its output width) for ``space``."""
    if isinstance(space, spaces.Discrete):
        return OneHot(np.array([space.n]), np.array([space.start]))
    if isinstance(space, spaces.MultiDiscrete):
        return OneHot(space.nvec, space.start)
    if isinstance(space, spaces.Box):
        return Flatten(space)
    if isinstance(space, spaces.Dict):
        return DictEncoder(space)
    raise ValueError(f"unsupported observation space {space}; supported: Box, Discrete, MultiDiscrete, Dict")


def obs_to_tensor(obs, device: torch.device) -> Tensor | dict[str, Tensor]:
    """A batch of observations (numpy or torch, possibly a dict of them) as tensors on device."""
    if isinstance(obs, dict):
        return {k: obs_to_tensor(v, device) for k, v in obs.items()}
    if isinstance(obs, Tensor):
        return obs.to(device, non_blocking=True)
    return torch.as_tensor(np.asarray(obs), device=device)
