"""POPGym (Morad et al., ICLR 2023; the ``popgym`` package, ``pip install -e ".[popgym]"``) as a suite.

Ids are POPGym's own, ``popgym-RepeatFirstEasy-v0``, bare or in gymnasium's import form
``popgym:popgym-RepeatFirstEasy-v0``; the package is imported on first use. Every POPGym env's
episodic return lies in [-1, 1] (the paper normalizes its rewards so, docs/design.md section 9),
which is the suite's score range; its score is MMER (docs/design.md section 9).

One wrapper, ``FreshInfo``: CountRecall and MultiarmedBandit return the same info dict, holding the
same numpy array (CountRecall's ``counts`` is updated in place), from every reset and step, which
gymnasium's env checker rejects (a caller that keeps an info would see it change); the wrapper
hands out a deep copy each call (a few small arrays). Nothing else is changed.
"""

from __future__ import annotations

import copy

import gymnasium as gym

from envs.suites import Suite, bare_id, register

INSTALL = 'pip install -e ".[popgym]"'
# The 14 families the package registers without optional dependencies (the two Labyrinth envs
# need mazelib), each at Easy, Medium and Hard: 42 ids.
FAMILIES = (
    "Autoencode", "Battleship", "Concentration", "CountRecall", "HigherLower", "MineSweeper",
    "MultiarmedBandit", "NoisyPositionOnlyCartPole", "NoisyPositionOnlyPendulum", "PositionOnlyCartPole",
    "PositionOnlyPendulum", "RepeatFirst", "RepeatPrevious", "VelocityOnlyCartpole",
)
DIFFICULTIES = ("Easy", "Medium", "Hard")


def popgym_id(family: str, difficulty: str) -> str:
    return f"popgym-{family}{difficulty}-v0"


def all_ids() -> list[str]:
    return [popgym_id(f, d) for d in DIFFICULTIES for f in FAMILIES]


def split_id(env_id: str) -> tuple[str, str]:
    """'popgym-RepeatFirstEasy-v0' -> ('RepeatFirst', 'Easy')."""
    name = bare_id(env_id).removeprefix("popgym-").removesuffix("-v0")
    for d in DIFFICULTIES:
        if name.endswith(d):
            return name[: -len(d)], d
    raise ValueError(f"{env_id!r} is not a POPGym id (popgym-<Env><Easy|Medium|Hard>-v0)")


class FreshInfo(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Return a new info dict from every reset and step (see the module docstring)."""

    def __init__(self, env: gym.Env):
        gym.utils.RecordConstructorArgs.__init__(self)
        gym.Wrapper.__init__(self, env)

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        return obs, copy.deepcopy(info)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, reward, terminated, truncated, copy.deepcopy(info)


def make_popgym(env_id: str, **kwargs) -> gym.Env:
    """One POPGym env with FreshInfo; ValueError when the package is missing or the id unknown."""
    try:
        import popgym  # noqa: F401  (registers the popgym-* ids)
    except ImportError:
        raise ValueError(f"env {env_id!r} is a POPGym id, but the popgym package is not installed; {INSTALL}") from None
    bare = bare_id(env_id)
    if bare not in gym.envs.registry:
        hint = " (the Labyrinth envs need the mazelib package)" if "Labyrinth" in bare else ""
        raise ValueError(f"unknown POPGym id {env_id!r}{hint}; choose one of: {', '.join(all_ids())}")
    return FreshInfo(gym.make(bare, **kwargs))


def _build(env_id, num_envs, *, device, env_kwargs, autoreset_mode):
    from envs.vector import sync_vector

    return sync_vector(env_id, lambda: make_popgym(env_id, **env_kwargs), num_envs, autoreset_mode)


register(Suite(
    "popgym", "POPGym", lambda env_id: bare_id(env_id).startswith("popgym-"), _build,
    ids=lambda: [popgym_id(f, "Easy") for f in FAMILIES] + ["... (Medium, Hard)"],
    score_range=lambda config: (-1.0, 1.0), install=INSTALL, preset="popgym",
))
