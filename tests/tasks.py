"""Tiny tasks defined for the tests."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces

CUE_RECALL_ID = "memrl_test/CueRecall-v0"
CUE_MATCH_ID = "memrl_test/CueMatch-v0"
CUE_RECALL_BOX_ID = "memrl_test/CueRecallBox-v0"
CUE_RECALL_PIXELS_ID = "memrl_test/CueRecallPixels-v0"


class CueRecall(gym.Env):
    """See a cue (0 or 1) at the first step, then ``delay`` blank steps (2), then a query (3):
    the action at the query must name the cue (reward 1), and the episode ends. Actions elsewhere
    do nothing. Without memory the best policy guesses: expected return 0.5."""

    action_space = spaces.Discrete(2)
    observation_space = spaces.Discrete(4)

    def __init__(self, delay: int = 4):
        self.delay = delay

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.cue = int(self.np_random.integers(2))
        self.t = 0
        return self.cue, {}

    def step(self, action):
        self.t += 1
        if self.t <= self.delay:
            return 2, 0.0, False, False, {}
        if self.t == self.delay + 1:
            return self._query(), 0.0, False, False, {}
        return self._query(), float(int(action) == self._answer()), True, False, {}

    def _query(self) -> int:
        return 3

    def _answer(self) -> int:
        return self.cue


class CueMatch(CueRecall):
    """MiniGrid Memory's decision in miniature: see a cue (0 or 1) at the first step, ``delay``
    blank steps (2), then a probe (3 or 4 for 0 or 1): action 1 if the probe matches the cue,
    0 if not (reward 1), and the episode ends. The answer is the XOR of what was remembered and
    what is seen now: no single linear readout of either gets above 0.5."""

    observation_space = spaces.Discrete(5)

    def reset(self, *, seed=None, options=None):
        obs, info = super().reset(seed=seed, options=options)
        self.probe = int(self.np_random.integers(2))
        return obs, info

    def _query(self) -> int:
        return 3 + self.probe

    def _answer(self) -> int:
        return int(self.probe == self.cue)


class CueRecallBox(gym.Env):
    """CueRecall with a continuous answer: observe (c, 0) with a cue c in {-1, +1} at the first
    step, then ``delay`` blank steps (0, 0), then the query (0, 1); the action a in [-1, 1] at the
    query earns 1 - |a - c| and ends the episode (actions elsewhere do nothing). Without memory
    every answer earns 0 in expectation (E|a - c| = 1 for any a in [-1, 1]); remembering earns 1."""

    action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
    observation_space = spaces.Box(-1.0, 1.0, (2,), np.float32)

    def __init__(self, delay: int = 4):
        self.delay = delay

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.cue = float(self.np_random.choice([-1.0, 1.0]))
        self.t = 0
        return np.array([self.cue, 0.0], np.float32), {}

    def step(self, action):
        self.t += 1
        blank, query = np.zeros(2, np.float32), np.array([0.0, 1.0], np.float32)
        if self.t <= self.delay:
            return blank, 0.0, False, False, {}
        if self.t == self.delay + 1:
            return query, 0.0, False, False, {}
        a = float(np.clip(np.asarray(action, np.float64).reshape(-1)[0], -1.0, 1.0))
        return query, 1.0 - abs(a - self.cue), True, False, {}


class CueRecallPixels(CueRecall):
    """CueRecall seen as 12 x 12 RGB frames (uint8): cue 0 is a red left half, cue 1 a green right
    half, the blank steps are black and the query is a grey frame. The cue is visible at the first
    step only, so without memory the best policy guesses (0.5)."""

    SIZE = 12
    observation_space = spaces.Box(0, 255, (SIZE, SIZE, 3), np.uint8)

    def _frame(self, token: int) -> np.ndarray:
        img = np.zeros((self.SIZE, self.SIZE, 3), np.uint8)
        half = self.SIZE // 2
        if token == 0:
            img[:, :half, 0] = 255
        elif token == 1:
            img[:, half:, 1] = 255
        elif token == 3:
            img[:] = 128
        return img

    def reset(self, *, seed=None, options=None):
        token, info = super().reset(seed=seed, options=options)
        return self._frame(token), info

    def step(self, action):
        token, *rest = super().step(action)
        return (self._frame(token), *rest)


def register() -> None:
    if CUE_RECALL_ID not in gym.envs.registry:
        gym.register(CUE_RECALL_ID, entry_point=CueRecall)
    if CUE_MATCH_ID not in gym.envs.registry:
        gym.register(CUE_MATCH_ID, entry_point=CueMatch)
    if CUE_RECALL_BOX_ID not in gym.envs.registry:
        gym.register(CUE_RECALL_BOX_ID, entry_point=CueRecallBox)
    if CUE_RECALL_PIXELS_ID not in gym.envs.registry:
        gym.register(CUE_RECALL_PIXELS_ID, entry_point=CueRecallPixels)


# Importing the module registers the tasks, so "tests.tasks:memrl_test/CueRecall-v0" works anywhere
# (a rollout worker process included).
register()
