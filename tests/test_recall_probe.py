"""benchmarks/recall_probe.py: its data is the env's task, its loss and accuracy count scored
positions only, its model is causal, reruns reuse finished rows."""

from __future__ import annotations

import csv
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import recall_probe as rp  # noqa: E402
from envs.noisy_recall import NoisyRecallConfig, NoisyRecallEnv  # noqa: E402

CFG = NoisyRecallConfig(vocab_size=12, noise_vocab_size=4, seq_len=16, frac_noise=0.3)
TINY = rp.Job("lstm", 12, 16, 4, 0.3, 1, steps=3, batch_size=8, lr=1e-3, weight_decay=0.0, d_model=8, layers=1,
              shift=True, train_examples=0, eval_sequences=32)


def test_sequences_are_the_envs_episodes():
    """Sequence i of stream s is what the single env shows after reset(seed=i + s * 2^32), and a
    target is exactly the action the env rewards."""
    inputs, targets = rp.sequences(CFG, seed=3, first=5, count=2, episode=0)  # [L-1, 2] each
    for col in range(2):
        env = NoisyRecallEnv(12, 4, 16, 0.3)
        obs, _ = env.reset(seed=5 + col + (3 << 32))
        seen = [int(obs)]
        for t in range(CFG.seq_len - 1):
            target = int(targets[t, col])
            action = target if target >= 0 else 0
            obs, reward, term, _, _ = env.step(action)
            assert reward == (1.0 if target >= 0 else float(action == target))
            seen.append(int(obs))
        assert term
        assert seen[:-1] == inputs[:, col].tolist()


def test_held_out_sequences_are_not_training_sequences():
    ev_in, _ = rp.held_out(CFG, replace(TINY, eval_sequences=64))
    train = torch.cat([rp.train_batch(CFG, TINY, s, None, torch.Generator())[0] for s in range(20)], dim=1)
    ev = {tuple(c) for c in ev_in.T.tolist()}
    tr = {tuple(c) for c in train.T.tolist()}
    assert len(ev) == 64 and not ev & tr
    again = rp.train_batch(CFG, TINY, 7, None, torch.Generator())[0]
    assert torch.equal(again, rp.train_batch(CFG, TINY, 7, None, torch.Generator())[0])


def test_loss_and_accuracy_count_scored_positions_only():
    _, targets = rp.sequences(CFG, 1, 0, 16, 0)  # [T, B]
    T, B, C = targets.shape[0], targets.shape[1], CFG.num_keys
    logits = torch.randn(T, B, C)
    scored = targets >= 0
    # Make the scored positions confidently right; leave the others random.
    logits[scored] = 0.0
    logits[scored, targets[scored]] = 50.0
    assert rp.scored_loss(logits, targets).item() < 1e-6
    correct, n, probe_ok, probes = rp.scored_correct(logits, targets)
    assert (correct, n, probe_ok, probes) == (int(scored.sum()), int(scored.sum()), B, B)
    assert bool(scored[-1].all())  # the last target is the probe's, always scored
    # Spoil the unscored positions only: nothing changes.
    logits[~scored] = torch.randn(int((~scored).sum()), C) * 100
    assert rp.scored_correct(logits, targets)[:2] == (n, n)


@pytest.mark.parametrize("backbone", ["lstm", "mlstm"])
@pytest.mark.parametrize("shift", [True, False])
def test_probe_is_causal(backbone, shift):
    torch.manual_seed(0)
    model = rp.Probe(12, CFG.num_keys, 8, backbone, {}, layers=2, shift=shift)
    inputs, _ = rp.sequences(CFG, 1, 0, 4, 0)
    changed = inputs.clone()
    changed[9:] = (changed[9:] + 1) % 12  # a different future from step 9 on
    a, b = model(inputs), model(changed)
    assert torch.allclose(a[:9], b[:9], atol=1e-6)
    assert not torch.allclose(a[9:], b[9:])


def test_run_is_deterministic_and_rerun_reuses_rows(tmp_path, capsys):
    row1, row2 = rp.run_one(TINY), rp.run_one(TINY)
    assert row1["accuracy"] == row2["accuracy"] and 0.0 <= row1["accuracy"] <= 1.0
    assert row1["chance"] == 1 / CFG.num_keys
    out = tmp_path / "probe.csv"
    argv = ["--backbones", "lstm", "--vocab-sizes", "12", "--seq-lens", "16", "--noise-vocab-size", "4",
            "--frac-noise", "0.3", "--seeds", "1", "2", "--steps", "2", "--batch-size", "4", "--d-model", "8",
            "--eval-sequences", "8", "--out", str(out)]
    assert rp.main(argv) == 0
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 2
    capsys.readouterr()
    assert rp.main(argv + ["--seeds", "1", "2", "3"]) == 0
    captured = capsys.readouterr()
    assert "2 runs already in" in captured.err and "1 to go" in captured.err
    rows2 = list(csv.DictReader(open(out)))
    assert rows2[:2] == rows and len(rows2) == 3
    assert "| 12 | 16 | 0.3 | lstm | 3 |" in captured.out


def test_summary_hand_computed():
    rows = [{"vocab_size": 32, "seq_len": 128, "frac_noise": 0.2, "backbone": "mlstm", "accuracy": a,
             "probe_accuracy": a, "chance": 0.125, "seconds": 10.0} for a in (0.0, 1.0)]
    table = rp.summarize(rows)
    # Bootstrap of [0, 1]: the 95% percentile interval is [0, 1] (see tests/test_compare.py).
    assert "| 32 | 128 | 0.2 | mlstm | 2 | 0.500 | [0.000, 1.000] | 0.000 | 1.000 | 0.500 | 0.125 | 10 |" in table
    one = rp.summarize(rows[:1])
    assert "n=1: CI = the value" in one


def test_bad_input_is_one_line_exit_2(capsys):
    assert rp.main(["--backbones", "transformer"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: unknown backbone 'transformer'; choose one of:")
    assert rp.main(["--vocab-sizes", "16", "--noise-vocab-size", "16"]) == 2
    assert "must be even and >= 2" in capsys.readouterr().err


def test_token_shift_or_conv_lets_one_mlstm_layer_recall():
    """One mLSTM layer writes k_t v_t^T from its current input alone, so it needs to see the
    previous token to bind a key to its value: the probe's --shift or the backbone's own causal
    conv (conv_kernel, on by default) both give it that; with neither it cannot learn the easy
    setting (measured: 0.99-1.000 with either, 0.594 with neither; chance 0.25)."""
    job = rp.Job("mlstm:conv_kernel=0", 8, 16, 0, 0.0, 1, steps=150, batch_size=32, lr=3e-3, weight_decay=0.0,
                 d_model=32, layers=1, shift=True, train_examples=0, eval_sequences=256)
    with_shift = rp.run_one(job)["accuracy"]
    neither = rp.run_one(replace(job, shift=False))["accuracy"]
    conv_only = rp.run_one(replace(job, backbone="mlstm", shift=False))["accuracy"]
    assert with_shift > 0.95 and conv_only > 0.95 and neither < 0.8, (with_shift, conv_only, neither)
