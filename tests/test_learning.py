"""Learning tests: a broken recurrent agent (wrong resets, state not carried, GAE leaking across
episodes) cannot pass them; a memoryless agent cannot either."""

from __future__ import annotations

import json

import pytest

import train
from tests import tasks

tasks.register()


def _train(tmp_path, backbone: str, **kw) -> float:
    kw.setdefault("env_id", tasks.CUE_RECALL_ID)
    args = train.Args(
        backbone=backbone, total_timesteps=24_576, num_envs=16, num_steps=32,
        hidden_size=32, learning_rate=3e-3, num_minibatches=2, runs_dir=str(tmp_path), progress=False, **kw,
    )
    run = train.train(args)
    return json.loads((run / "result.json").read_text())["final_return"]


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["lstm", "gru", "mingru", "ssm"])
def test_recurrent_backbones_solve_cue_recall(tmp_path, backbone):
    assert _train(tmp_path, backbone) >= 0.9


@pytest.mark.slow
def test_bptt_chunks_still_learn(tmp_path):
    # Chunks of 8 steps are longer than an episode (6 steps) so the credit path fits in one chunk.
    assert _train(tmp_path, "gru", bptt_len=8) >= 0.9


@pytest.mark.slow
def test_async_rollouts_still_learn(tmp_path):
    # The rollout worker imports the task's module itself ("module:EnvId").
    assert _train(tmp_path, "lstm", env_id=f"tests.tasks:{tasks.CUE_RECALL_ID}", async_rollouts=True) >= 0.9


@pytest.mark.slow
def test_mlp_cannot_solve_cue_recall(tmp_path):
    assert _train(tmp_path, "mlp") <= 0.65


def _cue_match(tmp_path, head_size: int) -> float:
    args = train.Args(
        env_id=tasks.CUE_MATCH_ID, backbone="lstm", total_timesteps=36_000, num_envs=16, num_steps=32,
        hidden_size=64, head_size=head_size, learning_rate=3e-3, num_minibatches=2, runs_dir=str(tmp_path),
        progress=False,
    )
    run = train.train(args)
    return json.loads((run / "result.json").read_text())["final_return"]


@pytest.mark.slow
def test_head_layer_lets_lstm_compare_memory_with_input(tmp_path):
    # CueMatch's answer is cue XOR probe. With a hidden layer after the memory the LSTM solves it
    # (1.00 on seeds 1-5 at this budget); with CleanRL's linear heads it stays at chance (0.51-0.53
    # on seeds 1-3, 60k steps): its cell would have to compute the XOR inside its gates.
    assert _cue_match(tmp_path, head_size=64) >= 0.9
    assert _cue_match(tmp_path, head_size=0) <= 0.65


def _noisy_recall_accuracy(tmp_path, backbone: str) -> float:
    """PPO on a tiny NoisyRecall (2 keys, 2 values, no noise, 11-step episodes): chance is 0.5."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    args = train.Args(
        env_id="memrl/NoisyRecall-v0", backbone=backbone, vocab_size=4, noise_vocab_size=0, seq_len=12,
        frac_noise=0.0, total_timesteps=40_000, num_envs=32, num_steps=22, hidden_size=64,
        learning_rate=3e-3, num_minibatches=2, runs_dir=str(tmp_path), progress=False,
    )
    run = train.train(args)
    acc = EventAccumulator(str(run))
    acc.Reload()
    values = [e.value for e in acc.Scalars("charts/accuracy")]
    return sum(values[-5:]) / 5


@pytest.mark.slow
def test_lstm_learns_noisy_recall_above_chance_and_mlp_does_not(tmp_path):
    assert _noisy_recall_accuracy(tmp_path, "lstm") >= 0.68
    assert _noisy_recall_accuracy(tmp_path, "mlp") <= 0.6
