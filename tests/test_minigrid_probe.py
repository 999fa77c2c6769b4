"""benchmarks/minigrid_probe.py: its labels are the env's layout, its linear probe separates what
is separable and only that, and it reports on a real run directory (or refuses with exit 2)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import minigrid_probe as mp  # noqa: E402

import train  # noqa: E402


def test_linear_probe_separates_linear_labels_only():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 6))
    assert mp.linear_probe(x, (x[:, 2] > 0).astype(float)) >= 0.97
    xor = ((x[:, 0] > 0) ^ (x[:, 1] > 0)).astype(float)  # not linearly separable
    assert 0.35 <= mp.linear_probe(x, xor) <= 0.65
    assert np.isnan(mp.linear_probe(x[:6], np.zeros(6)))


def _tiny_run(tmp_path, head_size: int) -> Path:
    args = train.Args(env_id="MiniGrid-MemoryCueFirstS7-v0", backbone="lstm", hidden_size=16, head_size=head_size,
                      num_envs=4, num_steps=32, total_timesteps=128, runs_dir=str(tmp_path), run_name=f"r{head_size}", progress=False)
    return train.train(args)


def test_report_on_a_run(tmp_path, capsys):
    run = _tiny_run(tmp_path, head_size=8)
    args, agent = mp.load_agent(run)
    data = mp.play(args, agent, episodes=40, seed=5)
    assert len(data["cases"]) == 40
    # MiniGrid starts the agent facing east in columns 1..width-3; from column 1 the cue (the
    # start-room object in column 1) is in its 3x3 view at once.
    starts = {x for *_, x, _ in data["cases"]}
    assert starts <= set(range(1, 5)) and 1 in starts, starts
    assert all(seen for *_, x, seen in data["cases"] if x == 1)
    # Labels come from the layout: "match" is exactly (cue == object in front).
    lab = data["labels"]
    if len(lab):
        assert np.array_equal(lab[:, 2], (lab[:, 0] == lab[:, 1]).astype(float))
        assert ((lab[:, 3] >= 0) & (lab[:, 3] <= 1)).all()
    assert mp.main([str(run), "--episodes", "12", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["episodes"] == 12 and 0.0 <= out["success"] <= 1.0
    assert "success cue=Key match=up" in out and "success start column 1" in out and 0 <= out["saw the cue"] <= 1


def test_refuses_a_missing_run_and_a_non_minigrid_run(tmp_path, capsys):
    assert mp.main([str(tmp_path / "nope")]) == 2
    assert "no checkpoint.pt" in capsys.readouterr().err
    args = train.Args(backbone="mlp", hidden_size=8, num_envs=4, num_steps=16, total_timesteps=64, runs_dir=str(tmp_path),
                      run_name="nr", progress=False)
    run = train.train(args)
    assert mp.main([str(run)]) == 2
    assert "needs a MiniGrid-Memory* env" in capsys.readouterr().err
