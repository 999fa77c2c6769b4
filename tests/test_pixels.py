"""Pixel observations: the CNN encoders, --obs-encoder auto, MiniGrid from pixels, Memory Gym.

- encoders: output shapes, uint8 channels-last in (scaled once: equal to the float path by hand);
- auto's choices for every kind of space, and a cnn request on a non-image as one clear error;
- MiniGrid rgb (--minigrid-obs rgb) equals the render of the symbolic view of the same state;
- config.json records what --obs-encoder resolved to; the rollout stores uint8 frames;
- a tiny pixel memory task: lstm with the small CNN learns it, the mlp control cannot;
- Memory Gym's grid envs make, pass gymnasium's env checker and step under memrl's gymnasium.
"""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces

import envs
import train
from agents.encoders import NatureCNN, SmallCNN, make_encoder, resolve_encoder
from tests import tasks

tasks.register()


def _img(h, w, c=3):
    return spaces.Box(0, 255, (h, w, c), np.uint8)


@pytest.mark.parametrize("space, kind, want", [
    (_img(84, 84), "auto", "cnn-nature"),
    (_img(36, 40, 1), "auto", "cnn-nature"),
    (_img(24, 24), "auto", "cnn-small"),
    (_img(12, 12, 4), "cnn", "cnn-small"),
    (_img(84, 84), "onehot", "onehot"),  # asked for: flattened
    (spaces.Box(0.0, 1.0, (84, 84, 3), np.float32), "auto", "onehot"),  # float: not an image
    (spaces.Box(0, 255, (84, 84, 2), np.uint8), "auto", "onehot"),  # 2 channels: not an image
    (spaces.Box(0, 255, (4,), np.uint8), "auto", "onehot"),
    (spaces.MultiDiscrete([3, 4]), "auto", "onehot"),
    (spaces.Discrete(5), "auto", "onehot"),
    (spaces.MultiDiscrete(np.append(np.tile([11, 6, 3], 9), 4)), "cells", "cells"),
])
def test_auto_chooses_cnn_for_images_only(space, kind, want):
    assert resolve_encoder(space, kind) == want


def test_cnn_on_a_non_image_and_unknown_encoder_are_clear_errors():
    with pytest.raises(ValueError, match=r"obs encoder 'cnn' needs an image observation .* choose auto or onehot"):
        resolve_encoder(spaces.Box(0.0, 1.0, (4,), np.float32), "cnn")
    with pytest.raises(ValueError, match=r"unknown obs encoder 'resnet'; choose one of: auto, onehot, cells, cnn"):
        resolve_encoder(_img(84, 84), "resnet")


@pytest.mark.parametrize("space, cls, size", [(_img(84, 84), NatureCNN, 512), (_img(24, 24), SmallCNN, 256),
                                              (_img(12, 10, 1), SmallCNN, 256)])
def test_cnn_shapes_and_uint8_scaling(space, cls, size):
    torch.manual_seed(0)
    enc = make_encoder(space, "cnn")
    assert isinstance(enc, cls) and enc.size == size
    obs = torch.randint(0, 256, (5, *space.shape), dtype=torch.uint8)
    out = enc(obs)
    assert out.shape == (5, size) and out.dtype == torch.float32
    # The same as the convolutions applied by hand to the float image, channels first, in [0, 1].
    by_hand = enc.fc(enc.conv(obs.permute(0, 3, 1, 2).double().div(255.0).float()))
    torch.testing.assert_close(out, by_hand)
    assert obs.dtype == torch.uint8  # the input is not modified in place


def test_dict_with_an_image_entry_encodes_the_image_with_a_cnn():
    """Memory Gym's MortarMayhemB observes Dict(vector, visual): auto sends the visual entry to a CNN."""
    space = spaces.Dict({"visual": _img(84, 84), "vector": spaces.Box(0.0, 1.0, (6,), np.float32)})
    enc = make_encoder(space)
    assert isinstance(enc.parts["visual"], NatureCNN) and enc.size == 512 + 6


def _minigrid_pair(view: int):
    sym = envs.vector.make_minigrid("MiniGrid-MemoryS9-v0", view, True)
    rgb = envs.vector.make_minigrid("MiniGrid-MemoryS9-v0", view, True, obs="rgb")
    return sym, rgb


@pytest.mark.parametrize("view", [3, 5])
def test_minigrid_rgb_is_the_render_of_the_symbolic_view(view):
    """Both wrappers on the same seeds and actions: the rgb frame equals minigrid's renderer applied
    to the decoded symbolic view (agent at the bottom centre, facing up), pixel for pixel."""
    from minigrid.core.grid import Grid

    sym, rgb = _minigrid_pair(view)
    assert rgb.observation_space == spaces.Box(0, 255, (view * 8, view * 8, 3), np.uint8)
    s_obs, _ = sym.reset(seed=3)
    r_obs, _ = rgb.reset(seed=3)
    rng = np.random.default_rng(0)
    for _ in range(40):
        cells = s_obs[:-1].reshape(view, view, 3).astype(np.uint8)
        grid, vis_mask = Grid.decode(cells)
        want = grid.render(8, agent_pos=(view // 2, view - 1), agent_dir=3, highlight_mask=vis_mask)
        np.testing.assert_array_equal(r_obs, want)
        a = int(rng.integers(3))
        s_obs, _, s_term, s_trunc, _ = sym.step(a)
        r_obs, _, r_term, r_trunc, _ = rgb.step(a)
        assert (s_term, s_trunc) == (r_term, r_trunc)
        if s_term or s_trunc:
            s_obs, _ = sym.reset(seed=4)
            r_obs, _ = rgb.reset(seed=4)


@pytest.mark.filterwarnings("ignore:.*is different from the unwrapped version")
def test_minigrid_rgb_passes_the_env_checker_and_a_bad_kind_is_an_error():
    from gymnasium.utils.env_checker import check_env

    _, rgb = _minigrid_pair(3)
    check_env(rgb, skip_render_check=True)  # the wrapped env: the wrapper's spaces and copies are what is checked
    with pytest.raises(ValueError, match=r"unknown MiniGrid observation 'pixels'; choose one of: symbolic, rgb"):
        envs.vector.make_minigrid("MiniGrid-MemoryS9-v0", 3, True, obs="pixels")


def test_run_records_the_resolved_encoder_and_the_rollout_stores_uint8(tmp_path):
    from agents.build import make_agent, make_env
    from agents.rollout import RolloutCollector

    args = train.Args(env_id="MiniGrid-MemoryS9-v0", minigrid_obs="rgb", backbone="gru", preset="none",
                      total_timesteps=64, num_envs=2, num_steps=32, hidden_size=16, num_minibatches=1, runs_dir=str(tmp_path),
                      progress=False)
    run = train.train(args)
    cfg = json.loads((run / "config.json").read_text())
    assert (cfg["obs_encoder"], cfg["obs_encoder_resolved"], cfg["minigrid_obs"]) == ("auto", "cnn-small", "rgb")
    env = make_env(args, 2, torch.device("cpu"))
    agent = make_agent(args, env)
    batch, _ = RolloutCollector(env, agent, 8, 8, torch.device("cpu"), seed=1).collect(agent)
    assert batch.obs.dtype == torch.uint8 and batch.obs.shape == (8, 2, 24, 24, 3)
    env.close()


@pytest.mark.slow
def test_lstm_with_a_cnn_learns_a_pixel_memory_task_the_mlp_cannot(tmp_path):
    """CueRecallPixels (tests/tasks.py): 0.98 for lstm and 0.51 for mlp at this budget (seed 1)."""

    def final(backbone):
        args = train.Args(env_id=tasks.CUE_RECALL_PIXELS_ID, backbone=backbone, total_timesteps=24_576, num_envs=16,
                          num_steps=32, hidden_size=32, learning_rate=3e-3, num_minibatches=2, runs_dir=str(tmp_path),
                          progress=False)
        run = train.train(args)
        assert json.loads((run / "config.json").read_text())["obs_encoder_resolved"] == "cnn-small"
        return json.loads((run / "result.json").read_text())["final_return"]

    assert final("lstm") >= 0.9
    assert final("mlp") <= 0.65


MEMORY_GYM_GRID = ["MysteryPath-Grid-v0", "MortarMayhem-Grid-v0"]


@pytest.mark.parametrize("env_id", MEMORY_GYM_GRID)
def test_memory_gym_grid_envs_step_under_memrls_gymnasium(env_id, monkeypatch):
    """Installed by .ci/run as the README says (pygame, then memory-gym with --no-deps, so that its
    gymnasium==0.29 pin does not downgrade gymnasium)."""
    monkeypatch.setenv("SDL_AUDIODRIVER", "dummy")
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    pytest.importorskip("memory_gym")
    from gymnasium.utils.env_checker import check_env

    assert int(gym.__version__.split(".")[0]) >= 1
    env = gym.make(env_id)
    assert env.observation_space == _img(84, 84) and env.action_space == spaces.Discrete(4)
    check_env(env.unwrapped, skip_render_check=True)
    env.close()
    vec = envs.make_vec(f"memory_gym:{env_id}", 2, 0)
    obs, _ = vec.reset(seed=0)
    for _ in range(20):
        obs, reward, term, trunc, _ = vec.step(vec.action_space.sample())
    assert obs.shape == (2, 84, 84, 3) and obs.dtype == np.uint8
    assert resolve_encoder(vec.single_observation_space) == "cnn-nature"
    vec.close()
