"""The registry of env suites: which family an env id belongs to and everything that depends on it.

memory/ has a registry of backbones; this is envs/' registry of suites. A ``Suite`` declares, once:

- ``matches``: its id pattern (``MiniGrid-*``, ``memrl/NoisyRecall-v0``, ``popgym-*``, ...);
- ``build``: how ``num_envs`` of its envs become one VectorEnv;
- ``flags``: the train.py settings it reads (``view_size`` for MiniGrid, ``vocab_size`` for
  NoisyRecall), passed to ``build`` as keyword options; they mean nothing to other suites;
- ``score_tag``: the TensorBoard tag that scores a run (``charts/accuracy`` for NoisyRecall, the
  episodic return elsewhere), and ``success``: whether a return counts as solved, which makes
  train.py log ``charts/success_rate`` (MiniGrid: any reward means the goal was reached);
- ``threshold``: the score that counts as solved (compare.py's steps-to-threshold);
- ``score_range``: (floor, ceiling) of the score for a run's config, which normalizes it for
  aggregates over envs (MiniGrid [0, 1], NoisyRecall [chance, 1], POPGym [-1, 1]); None: the
  report uses the lowest and highest value the runs logged;
- ``preset``: the preset file its ids use by default when an id has no file of its own
  (POPGym: presets/popgym.toml, one table per backbone for all 42 envs).

``suite_of(env_id)`` finds an id's suite (the last, ``gymnasium``, takes any other id), so no code
outside envs/ tests an id's prefix. A new family is one ``register`` call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import gymnasium as gym

RETURN_TAG = "charts/episodic_return"
ACCURACY_TAG = "charts/accuracy"

Builder = Callable[..., gym.vector.VectorEnv]


@dataclass(frozen=True)
class Suite:
    name: str
    title: str  # for messages: "MiniGrid Memory"
    matches: Callable[[str], bool]
    build: Builder  # (env_id, num_envs, *, device, env_kwargs, autoreset_mode, **options) -> VectorEnv
    ids: Callable[[], list[str]] = field(default=lambda: [])  # the ids it knows (for messages), if it can list them
    flags: tuple[str, ...] = ()
    score_tag: str = RETURN_TAG
    success: Callable[[float], bool] | None = None
    threshold: float | None = None
    score_range: Callable[[dict], tuple[float, float]] | None = None
    install: str | None = None  # how to get its package, when it comes from an extra
    preset: str | None = None  # the preset (presets/<name>.toml) its ids take by default, when an id has no file of its own


_SUITES: list[Suite] = []


def register(suite: Suite) -> None:
    """Add a suite ahead of the catch-all ``gymnasium`` suite (a name registered again replaces it)."""
    global _SUITES
    rest = [s for s in _SUITES if s.name != suite.name]
    if rest and rest[-1].name == "gymnasium" and suite.name != "gymnasium":
        rest.insert(len(rest) - 1, suite)
    else:
        rest.append(suite)
    _SUITES = rest


def all_suites() -> list[Suite]:
    return list(_SUITES)


def suite_of(env_id: str) -> Suite:
    """The suite an env id belongs to (the catch-all ``gymnasium`` suite for any other id)."""
    for s in _SUITES:
        if s.matches(env_id):
            return s
    raise ValueError(f"no suite matches env id {env_id!r}")  # unreachable once gymnasium is registered


def flag_owners(name: str) -> list[Suite]:
    """The suites that read the train.py setting ``name`` (empty: it is not an env setting)."""
    return [s for s in _SUITES if name in s.flags]


def all_flags() -> set[str]:
    return {f for s in _SUITES for f in s.flags}


def bare_id(env_id: str) -> str:
    """'module:EnvId' -> 'EnvId' (gymnasium's import form); a plain id unchanged."""
    return env_id.split(":")[-1]


def score_range(env_id: str, config: dict[str, Any]) -> tuple[float, float] | None:
    rng = suite_of(env_id).score_range
    return None if rng is None else rng(config)
