"""Diagnostic variants of MiniGrid Memory: is a failing agent unable to *remember* the cue, or
unable to *act* on it?

- ``MiniGrid-MemoryOracleS{7,9}-v0``: the cue (the object in the start room) is written into the
  corner cell of every observation. No memory is needed; an agent that fails here cannot act on
  the cue at the end of the hallway at all.
- ``MiniGrid-MemoryCueFirstS{7,9}-v0``: the cue is written into the corner cell of the first
  observation of each episode only (on top of whatever the normal view shows). The cue must be
  carried from step 0 to the end of the hallway, but the agent never has to walk back to see it:
  memory without the exploration problem of the real task.

The corner cell is the view's far-left cell (index [0, 0] of MiniGrid's egocentric image); the
cue's (object, colour, state) encoding replaces what it showed. Both take MiniGrid Memory's
arguments (size, agent_view_size, ...); the 3x3 view and movement actions apply as for the
originals.
"""

from __future__ import annotations

import gymnasium as gym
from minigrid.envs.memory import MemoryEnv


class MemoryCueShown(MemoryEnv):
    """MiniGrid Memory with the cue written into the view's corner cell: at every step
    (``every_step=True``) or at the first step of each episode only."""

    def __init__(self, every_step: bool = True, **kwargs):
        self.every_step = every_step
        super().__init__(**kwargs)

    def gen_obs(self):
        obs = super().gen_obs()
        if self.every_step or self.step_count == 0:
            cue = self.grid.get(1, self.height // 2 - 1)  # where MemoryEnv puts the start-room object
            obs["image"] = obs["image"].copy()
            obs["image"][0, 0] = cue.encode()
        return obs


PROBE_IDS = (
    "MiniGrid-MemoryOracleS7-v0",
    "MiniGrid-MemoryOracleS9-v0",
    "MiniGrid-MemoryCueFirstS7-v0",
    "MiniGrid-MemoryCueFirstS9-v0",
)


def register_probes() -> None:
    for size in (7, 9):
        for name, every in (("Oracle", True), ("CueFirst", False)):
            env_id = f"MiniGrid-Memory{name}S{size}-v0"
            if env_id not in gym.envs.registry:
                gym.register(env_id, entry_point=MemoryCueShown, kwargs={"size": size, "every_step": every})
