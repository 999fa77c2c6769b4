"""play.py: a trained run played on its own env, its returns equal to what the training collector
computes independently, its video, and its bad inputs (one line, exit 2, nothing written)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

import play
import train
from tests import tasks

tasks.register()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    args = train.Args(env_id="MiniGrid-MemoryS7-v0", backbone="gru", preset="none", total_timesteps=512, num_envs=4,
                      num_steps=64, hidden_size=16, num_minibatches=2, runs_dir=str(runs), progress=False)
    return train.train(args)


def _collector_returns(run_dir, episodes: int, seed: int):
    """The same episodes through the training rollout machinery (RolloutCollector, one env, greedy)."""
    from agents.rollout import RolloutCollector

    args, env, agent = play.load_run(run_dir, torch.device("cpu"), render=False)
    col = RolloutCollector(env, agent, 64, 64, torch.device("cpu"), seed=seed)
    rets, lens = [], []
    while len(rets) < episodes:
        _, st = col.collect(agent, greedy=True)
        rets += st.returns
        lens += st.lengths
    col.close()
    return rets[:episodes], lens[:episodes]


@pytest.mark.parametrize("greedy", [True, False])
def test_play_returns_equal_the_training_collector(run_dir, greedy):
    args, env, agent = play.load_run(run_dir, torch.device("cpu"), render=False)
    torch.manual_seed(0)
    played = play.play(env, agent, 3, greedy, seed=123)
    env.close()
    assert len(played.returns) == 3 and all(n > 0 for n in played.lengths)
    if greedy:  # sampled actions draw from torch's generator differently in the two loops
        want_r, want_n = _collector_returns(run_dir, 3, 123)
        np.testing.assert_allclose(played.returns, want_r)
        assert played.lengths == want_n


def test_video_has_a_frame_per_step_and_the_cli_reports(run_dir, tmp_path, capsys):
    from PIL import Image

    video = tmp_path / "s7.gif"
    assert play.main([str(run_dir), "--episodes", "2", "--video", str(video), "--seed", "5"]) == 0
    out = capsys.readouterr().out
    assert "return" in out and "95% bootstrap CI over 2 episodes" in out and "success" in out
    args, env, agent = play.load_run(run_dir, torch.device("cpu"), render=True)
    played = play.play(env, agent, 2, True, seed=5, video=True)
    env.close()
    assert len(played.frames) == sum(played.lengths) + 2  # each episode's first frame, then one per step
    assert played.frames[0].dtype == np.uint8 and played.frames[0].ndim == 3
    assert f"({len(played.frames)} frames)" in out
    with Image.open(video) as im:
        assert im.size == played.frames[0].shape[1::-1] and im.n_frames >= 2  # Pillow merges repeated frames
    assert not list(tmp_path.glob("*.partial*"))


def _fails(capsys, argv, match):
    assert play.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and match in err[0], err


def test_bad_inputs_are_one_line_exit_2_and_write_nothing(run_dir, tmp_path, capsys):
    _fails(capsys, [str(tmp_path / "nope")], "no run directory")
    empty = tmp_path / "empty"
    empty.mkdir()
    _fails(capsys, [str(empty)], "checkpoint")
    unfinished = tmp_path / "unfinished"
    shutil.copytree(run_dir, unfinished)
    (unfinished / "result.json").unlink()
    _fails(capsys, [str(unfinished)], "has not finished")
    exists = tmp_path / "v.gif"
    exists.write_bytes(b"keep")
    _fails(capsys, [str(run_dir), "--video", str(exists)], "exists; pick another path")
    assert exists.read_bytes() == b"keep"
    _fails(capsys, [str(run_dir), "--video", str(tmp_path / "v.avi")], "suffix must be one of .gif, .mp4")
    _fails(capsys, [str(run_dir), "--video", str(tmp_path / "no" / "v.gif")], "no directory")
    _fails(capsys, [str(run_dir), "--episodes", "0"], "--episodes must be >= 1")


def test_an_env_without_rgb_rendering_is_a_clear_error(tmp_path, capsys):
    args = train.Args(env_id=tasks.CUE_RECALL_ID, backbone="mlp", total_timesteps=64, num_envs=2, num_steps=32,
                      hidden_size=8, num_minibatches=1, runs_dir=str(tmp_path), progress=False)
    run = train.train(args)
    video = tmp_path / "v.gif"
    _fails(capsys, [str(run), "--video", str(video)], "no rgb_array rendering")
    assert not video.exists()
    assert play.main([str(run), "--episodes", "2"]) == 0  # without a video it plays
