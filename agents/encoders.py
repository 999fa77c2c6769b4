"""Observation encoders: any supported gymnasium space -> a flat float feature vector [N, D].

Discrete and MultiDiscrete ids are one-hot encoded (an id is a name, not a magnitude); Box and
MultiBinary are flattened (uint8 scaled to [0, 1]); Dict concatenates its entries in key order and
Tuple in position order, each part encoded by these same rules, nested to any depth.

Images (a uint8 Box H x W x C, C in 1, 3, 4: ``is_image``) go through a CNN with ``cnn`` or
``auto`` (the default, which picks cnn for images and the rules above for everything else):
``NatureCNN`` (Mnih et al. 2015, the encoder of CleanRL's Atari agents and of the Memory Gym
baselines) for images of at least 36 px a side, ``SmallCNN`` below that (MiniGrid's 3x3 view at
8 px per tile is 24 x 24). Observations stay uint8 channels-last until the encoder, which scales
them once on the device (the rollout buffer stores the uint8 frames).
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
    def __init__(self, space: spaces.Box | spaces.MultiBinary):
        super().__init__()
        self.size = int(np.prod(space.shape))
        self.scale = 1.0 / 255.0 if space.dtype == np.uint8 and isinstance(space, spaces.Box) else 1.0

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


class TupleEncoder(nn.Module):
    def __init__(self, space: spaces.Tuple):
        super().__init__()
        self.parts = nn.ModuleList(make_encoder(sub) for sub in space.spaces)
        self.size = sum(p.size for p in self.parts)

    def forward(self, obs: tuple[Tensor, ...]) -> Tensor:
        return torch.cat([part(o) for part, o in zip(self.parts, obs)], dim=1)


class GridCells(nn.Module):
    """MiniGrid's compact observation (envs/minigrid_wrappers.py: V*V cells of (object, colour,
    state) ids, then the direction) -> [each cell's embedding, flattened | their mean over the
    cells | direction one-hot].

    A cell's embedding is the sum of an object, a colour and a state embedding shared by every cell
    (BabyAI's bag-of-words cell encoding). The flattened part keeps where things are; the mean says
    what is in view wherever it is, so an object seen in one cell of the view and later in another
    gives the memory the same features (with one-hot ids, "ball in the left cell" and "ball ahead"
    are unrelated inputs whose weights are learned separately)."""

    FIELDS = (11, 6, 3)  # object, colour, state ids (minigrid.core.constants)

    def __init__(self, nvec: np.ndarray, dim: int = 16):
        super().__init__()
        nvec = np.asarray(nvec).reshape(-1)
        n_cells = (len(nvec) - 1) // 3
        expected = np.append(np.tile(self.FIELDS, n_cells), 4)
        if n_cells < 1 or len(nvec) != 3 * n_cells + 1 or not np.array_equal(nvec, expected):
            raise ValueError(
                "obs encoder 'cells' needs MiniGrid's compact observation (MultiDiscrete of V*V "
                f"(object 11, colour 6, state 3) ids + direction 4), got nvec {nvec.tolist()[:7]}..."
            )
        self.n_cells, self.dim = n_cells, dim
        self.fields = nn.ModuleList(nn.Embedding(n, dim) for n in self.FIELDS)
        for table in self.fields:  # entries ~N(0, 0.25^2): inputs on the scale of the one-hot encoder's
            nn.init.normal_(table.weight, 0.0, 0.25)
        self.size = n_cells * dim + dim + 4

    def forward(self, obs: Tensor) -> Tensor:
        ids = obs.reshape(obs.shape[0], -1).long()
        cells = ids[:, :-1].view(-1, self.n_cells, 3)
        emb = sum(table(cells[..., i]) for i, table in enumerate(self.fields))  # [N, cells, dim]
        direction = torch.nn.functional.one_hot(ids[:, -1], 4).float()
        return torch.cat([emb.flatten(1), emb.mean(1), direction], dim=1)


def is_image(space: spaces.Space) -> bool:
    """A uint8 Box of shape H x W x C with C in (1, 3, 4) and H, W >= 8: what ``auto`` sends to a CNN."""
    return (isinstance(space, spaces.Box) and space.dtype == np.uint8 and len(space.shape) == 3
            and space.shape[-1] in (1, 3, 4) and min(space.shape[:2]) >= 8)


def _channels_first(obs: Tensor) -> Tensor:
    """[N, H, W, C] uint8 -> [N, C, H, W] float in [0, 1] (one scale, on obs's device)."""
    return obs.permute(0, 3, 1, 2).float().mul_(1.0 / 255.0)


class _CNN(nn.Module):
    """Convolutions (``_layers``, ReLU after each, for C input channels), flattened, then Linear to
    ``size`` and a ReLU; images enter uint8 channels-last."""

    size: int

    def __init__(self, space: spaces.Box):
        super().__init__()
        h, w, c = space.shape
        self.conv = nn.Sequential(*[m for layer in self._layers(c) for m in (layer, nn.ReLU())], nn.Flatten())
        with torch.no_grad():
            flat = self.conv(torch.zeros(1, c, h, w)).shape[1]
        self.fc = nn.Sequential(nn.Linear(flat, self.size), nn.ReLU())

    def _layers(self, c: int) -> list[nn.Module]:
        raise NotImplementedError

    def forward(self, obs: Tensor) -> Tensor:
        return self.fc(self.conv(_channels_first(obs)))


class NatureCNN(_CNN):
    """Conv 32 8x8/4 -> 64 4x4/2 -> 64 3x3/1 (ReLU each) -> Linear 512 -> ReLU: the DQN encoder
    (Mnih et al. 2015) of CleanRL's ppo_atari(_lstm) and the Memory Gym baselines, for H, W >= 36."""

    MIN_SIZE = 36
    size = 512

    def __init__(self, space: spaces.Box):
        if min(space.shape[:2]) < self.MIN_SIZE:
            raise ValueError(f"the Nature CNN needs images of at least {self.MIN_SIZE}x{self.MIN_SIZE}, "
                             f"got {space.shape[0]}x{space.shape[1]}")
        super().__init__(space)

    def _layers(self, c: int) -> list[nn.Module]:
        return [nn.Conv2d(c, 32, 8, stride=4), nn.Conv2d(32, 64, 4, stride=2), nn.Conv2d(64, 64, 3, stride=1)]


class SmallCNN(_CNN):
    """For small images (under 36 px a side): Conv 32 3x3/1 -> 64 3x3/2 -> 64 3x3/2 (padding 1,
    ReLU each) -> Linear 256 -> ReLU. A 24 x 24 MiniGrid view becomes 64 x 6 x 6."""

    size = 256

    def _layers(self, c: int) -> list[nn.Module]:
        return [nn.Conv2d(c, 32, 3, stride=1, padding=1), nn.Conv2d(32, 64, 3, stride=2, padding=1),
                nn.Conv2d(64, 64, 3, stride=2, padding=1)]


ENCODERS = ("auto", "onehot", "cells", "cnn")


def resolve_encoder(space: spaces.Space, kind: str = "auto") -> str:
    """What ``kind`` means for ``space``: auto -> cnn-nature / cnn-small for an image, onehot
    otherwise; cnn -> cnn-nature or cnn-small by the image's size; onehot, cells unchanged.
    Recorded in config.json as obs_encoder_resolved."""
    if kind not in ENCODERS:
        raise ValueError(f"unknown obs encoder {kind!r}; choose one of: {', '.join(ENCODERS)}")
    if kind == "cnn" and not is_image(space):
        raise ValueError(f"obs encoder 'cnn' needs an image observation (uint8 Box H x W x C, C in 1, 3, 4, "
                         f"H, W >= 8), got {' '.join(str(space).split())}; choose auto or onehot")
    if kind in ("auto", "cnn") and is_image(space):
        return "cnn-nature" if min(space.shape[:2]) >= NatureCNN.MIN_SIZE else "cnn-small"
    return "onehot" if kind == "auto" else kind


def make_encoder(space: spaces.Space, kind: str = "auto") -> nn.Module:
    """An encoder module with a ``size`` attribute (its output width) for ``space``. ``kind``:
    auto (cnn for images, onehot otherwise; the default), onehot (every space: ids one-hot, Box
    flattened), cells (MiniGrid's compact observation; see GridCells) or cnn (images; NatureCNN
    or SmallCNN by size)."""
    kind = resolve_encoder(space, kind)
    if kind == "cnn-nature":
        return NatureCNN(space)
    if kind == "cnn-small":
        return SmallCNN(space)
    if kind == "cells":
        if not isinstance(space, spaces.MultiDiscrete):
            raise ValueError(f"obs encoder 'cells' needs MiniGrid's compact observation (MultiDiscrete), got {space}")
        return GridCells(space.nvec)
    if isinstance(space, spaces.Discrete):
        return OneHot(np.array([space.n]), np.array([space.start]))
    if isinstance(space, spaces.MultiDiscrete):
        return OneHot(space.nvec, space.start)
    if isinstance(space, (spaces.Box, spaces.MultiBinary)):
        return Flatten(space)
    if isinstance(space, spaces.Dict):
        return DictEncoder(space)
    if isinstance(space, spaces.Tuple):
        return TupleEncoder(space)
    raise ValueError(f"unsupported observation space {space}; supported: {OBS_SPACES}")


OBS_SPACES = "Box, Discrete, MultiDiscrete, MultiBinary, and Dict or Tuple of those (nested)"


def obs_to_tensor(obs, device: torch.device):
    """A batch of observations (numpy or torch, possibly a dict or tuple of them, nested) as
    tensors on device, in the same structure."""
    if isinstance(obs, dict):
        return {k: obs_to_tensor(v, device) for k, v in obs.items()}
    if isinstance(obs, tuple):
        return tuple(obs_to_tensor(v, device) for v in obs)
    if isinstance(obs, Tensor):
        return obs.to(device, non_blocking=True)
    return torch.as_tensor(np.asarray(obs), device=device)
