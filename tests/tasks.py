"""Tiny tasks defined for the tests."""

from __future__ import annotations

import gymnasium as gym
from gymnasium import spaces

CUE_RECALL_ID = "memrl_test/CueRecall-v0"
CUE_MATCH_ID = "memrl_test/CueMatch-v0"


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


def register() -> None:
    if CUE_RECALL_ID not in gym.envs.registry:
        gym.register(CUE_RECALL_ID, entry_point=CueRecall)
    if CUE_MATCH_ID not in gym.envs.registry:
        gym.register(CUE_MATCH_ID, entry_point=CueMatch)


# Importing the module registers the tasks, so "tests.tasks:memrl_test/CueRecall-v0" works anywhere
# (a rollout worker process included).
register()
