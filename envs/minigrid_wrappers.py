"""MiniGrid wrappers for memory benchmarks: compact symbolic observations and movement actions."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces

# Ranges of MiniGrid's symbolic encoding (minigrid.core.constants): object, colour and state ids.
NUM_OBJECTS, NUM_COLORS, NUM_STATES, NUM_DIRECTIONS = 11, 6, 3, 4

MEMORY_IDS = (
    "MiniGrid-MemoryS7-v0",
    "MiniGrid-MemoryS9-v0",
    "MiniGrid-MemoryS11-v0",
    "MiniGrid-MemoryS13-v0",
    "MiniGrid-MemoryS13Random-v0",
    "MiniGrid-MemoryS17Random-v0",
)


class CompactObservation(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """Dict(image [V, V, 3] uint8, direction, mission) -> one MultiDiscrete vector.

    The vector is the V*V*3 (object, colour, state) ids in row-major order followed by the
    direction. The mission string is dropped (constant in the memory tasks). Downstream code
    one-hot encodes a MultiDiscrete, so no id is read as a magnitude."""

    def __init__(self, env: gym.Env):
        gym.utils.RecordConstructorArgs.__init__(self)
        gym.ObservationWrapper.__init__(self, env)
        image = env.observation_space["image"]
        v = image.shape[0]
        cells = np.tile(np.array([NUM_OBJECTS, NUM_COLORS, NUM_STATES], dtype=np.int64), v * v)
        self.observation_space = spaces.MultiDiscrete(np.append(cells, NUM_DIRECTIONS))

    def observation(self, obs):
        out = np.empty(self.observation_space.shape, dtype=np.int64)
        out[:-1] = obs["image"].reshape(-1)
        out[-1] = obs["direction"]
        return out


class MovementActions(gym.ActionWrapper, gym.utils.RecordConstructorArgs):
    """Keep only MiniGrid's turn left (0), turn right (1), forward (2): the memory tasks need no
    other action, and the unused ones only dilute exploration."""

    def __init__(self, env: gym.Env):
        gym.utils.RecordConstructorArgs.__init__(self)
        gym.ActionWrapper.__init__(self, env)
        self.action_space = spaces.Discrete(3)

    def action(self, action):
        return action


OBS_KINDS = ("symbolic", "rgb")
TILE_SIZE = 8  # px per tile of the rgb view (minigrid's RGBImgPartialObsWrapper default)


class RGBView(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """The agent's partial view rendered, ``tile_size`` px per tile: a (V * tile) x (V * tile) x 3
    uint8 image with the agent at the bottom centre facing up, the direction and mission dropped
    (what the public pixel baselines see). The frame is minigrid's own POV render,
    ``get_frame(tile_size, agent_pov=True)``, as its RGBImgPartialObsWrapper + ImgObsWrapper give."""

    def __init__(self, env: gym.Env, tile_size: int = TILE_SIZE):
        gym.utils.RecordConstructorArgs.__init__(self, tile_size=tile_size)
        gym.ObservationWrapper.__init__(self, env)
        self.tile_size = tile_size
        v = env.observation_space["image"].shape[0]
        self.observation_space = spaces.Box(0, 255, (v * tile_size, v * tile_size, 3), np.uint8)

    def observation(self, obs):
        return self.unwrapped.get_frame(tile_size=self.tile_size, agent_pov=True)


def make_minigrid(env_id: str, view_size: int | None, movement_only: bool, obs: str = "symbolic", **kwargs) -> gym.Env:
    import minigrid  # noqa: F401  (registers the MiniGrid ids)

    if obs not in OBS_KINDS:
        raise ValueError(f"unknown MiniGrid observation {obs!r}; choose one of: {', '.join(OBS_KINDS)}")
    if view_size is not None:
        if view_size < 3 or view_size % 2 == 0:
            raise ValueError(f"view size must be odd and >= 3 (MiniGrid's rule), got {view_size}")
        kwargs["agent_view_size"] = view_size
    env = gym.make(env_id, **kwargs)
    env = CompactObservation(env) if obs == "symbolic" else RGBView(env)
    if movement_only:
        env = MovementActions(env)
    return env
