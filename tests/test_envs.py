"""envs.make_vec: MiniGrid memory ids with compact observations, any gymnasium id, errors."""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.utils.env_checker import check_env

import envs
from envs.minigrid_wrappers import make_minigrid


class _SpacesEnv(gymnasium.Env):
    """An env that only declares spaces (for the space checks)."""

    def __init__(self, observation_space, action_space):
        self.observation_space, self.action_space = observation_space, action_space

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action):
        return self.observation_space.sample(), 0.0, True, False, {}


for _id, _obs, _act in (
    ("memrl-test/TupleAction-v0", spaces.Discrete(2), spaces.Tuple((spaces.Discrete(2), spaces.Discrete(3)))),
    ("memrl-test/MatrixBox-v0", spaces.Discrete(2), spaces.Box(-1, 1, (2, 2))),
    ("memrl-test/TextObs-v0", spaces.Tuple((spaces.Discrete(2), spaces.Text(4))), spaces.Discrete(2)),
):
    if _id not in gymnasium.envs.registry:
        gymnasium.register(_id, entry_point=_SpacesEnv, kwargs={"observation_space": _obs, "action_space": _act})


@pytest.mark.parametrize("env_id", envs.MEMORY_IDS)
def test_minigrid_memory_ids_build_with_compact_obs(env_id):
    venv = envs.make_vec(env_id, 2, seed=0, view_size=3, movement_only=True)
    obs, _ = venv.reset(seed=0)
    assert isinstance(venv.single_observation_space, spaces.MultiDiscrete)
    assert venv.single_observation_space.shape == (3 * 3 * 3 + 1,)
    assert venv.single_action_space == spaces.Discrete(3)
    assert obs.shape == (2, 28) and obs.dtype == np.int64
    assert venv.single_observation_space.contains(obs[0])
    venv.close()


def test_compact_obs_matches_minigrid_encoding():
    env = make_minigrid("MiniGrid-MemoryS7-v0", view_size=5, movement_only=False)
    obs, _ = env.reset(seed=3)
    raw = env.unwrapped.gen_obs()
    np.testing.assert_array_equal(obs[:-1], raw["image"].reshape(-1))
    assert obs[-1] == raw["direction"]
    assert env.action_space == spaces.Discrete(7)
    check_env(env.unwrapped, skip_render_check=True)


def test_default_view_is_minigrids_when_not_given():
    venv = envs.make_vec("MiniGrid-MemoryS7-v0", 1, seed=0)
    assert venv.single_observation_space.shape == (7 * 7 * 3 + 1,)


@pytest.mark.filterwarnings("ignore:.*different from the unwrapped version")
def test_movement_only_wrapper_passes_checker():
    env = make_minigrid("MiniGrid-MemoryS9-v0", view_size=3, movement_only=True)
    check_env(env, skip_render_check=True)


def test_any_gymnasium_id_and_module_form():
    venv = envs.make_vec("CartPole-v1", 3, seed=0)
    obs, _ = venv.reset(seed=0)
    assert obs.shape == (3, 4)
    venv = envs.make_vec("gymnasium:CartPole-v1", 2, seed=0)
    assert venv.num_envs == 2
    # A MiniGrid env registered by an imported package keeps the MiniGrid wrappers.
    venv = envs.make_vec("minigrid:MiniGrid-MemoryS7-v0", 2, seed=0, view_size=3, movement_only=True)
    assert venv.single_action_space.n == 3 and venv.single_observation_space.shape == (3 * 3 * 3 + 1,)


@pytest.mark.parametrize(
    "env_id,match",
    [
        ("MiniGrid-MemoryS8-v0", "unknown env id 'MiniGrid-MemoryS8-v0'.*choose one of: MiniGrid-MemoryS7-v0"),
        ("NoSuchEnv-v0", "unknown env id 'NoSuchEnv-v0'"),
        ("no_such_module:Foo-v0", "unknown env id"),
        ("no_such_module:MiniGrid-Foo-v0", "cannot import 'no_such_module'"),
        ("minigrid:MiniGrid-Foo-v0", "unknown env id 'minigrid:MiniGrid-Foo-v0'"),
        ("memrl-test/TupleAction-v0", "memrl supports Discrete, MultiDiscrete .one vector., Box"),
        ("memrl-test/MatrixBox-v0", "memrl supports Discrete, MultiDiscrete .one vector., Box"),
        ("memrl-test/TextObs-v0", r"observation entry \[1\] is Text; supported: Box, Discrete"),
    ],
)
def test_bad_env_ids_raise_clear_errors(env_id, match):
    with pytest.raises(ValueError, match=match):
        envs.make_vec(env_id, 2, seed=0)


def test_bad_view_size_and_num_envs():
    with pytest.raises(ValueError, match="odd and >= 3"):
        envs.make_vec("MiniGrid-MemoryS7-v0", 2, seed=0, view_size=4)
    with pytest.raises(ValueError, match="num_envs must be >= 1"):
        envs.make_vec("MiniGrid-MemoryS7-v0", 0, seed=0)
    with pytest.raises(ValueError, match="MiniGrid ids only"):
        envs.make_vec("CartPole-v1", 2, seed=0, view_size=3)


@pytest.mark.filterwarnings("ignore:.*different from the unwrapped version")
@pytest.mark.parametrize("size", [7, 9])
@pytest.mark.parametrize("kind", ["Oracle", "CueFirst"])
def test_memory_probe_variants_show_the_cue_and_nothing_else_changes(kind, size):
    import gymnasium as gym
    import minigrid  # noqa: F401

    probe = gym.make(f"MiniGrid-Memory{kind}S{size}-v0", agent_view_size=3)
    plain = gym.make(f"MiniGrid-MemoryS{size}-v0", agent_view_size=3)
    rng = np.random.default_rng(0)
    for episode in range(5):
        a, _ = probe.reset(seed=episode)
        b, _ = plain.reset(seed=episode)
        cue = probe.unwrapped.grid.get(1, probe.unwrapped.height // 2 - 1).encode()
        assert type(probe.unwrapped.grid.get(1, size // 2 - 1)).__name__ in ("Key", "Ball")
        for t in range(30):
            shown = kind == "Oracle" or t == 0
            if shown:
                assert tuple(a["image"][0, 0]) == cue
            rest_a, rest_b = a["image"].copy(), b["image"].copy()
            if shown:
                rest_a[0, 0] = rest_b[0, 0]
            assert np.array_equal(rest_a, rest_b) and a["direction"] == b["direction"]
            action = int(rng.integers(3))
            a, ra, ta, tra, _ = probe.step(action)
            b, rb, tb, trb, _ = plain.step(action)
            assert (ra, ta, tra) == (rb, tb, trb)
            if ta or tra:
                break
    check_env(make_minigrid(f"MiniGrid-Memory{kind}S{size}-v0", view_size=3, movement_only=True), skip_render_check=True)
