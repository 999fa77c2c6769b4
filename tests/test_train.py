"""train.py: the command line's error paths, checkpoints, resume equality, signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import train

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--num-envs", "4", "--num-steps", "16", "--hidden-size", "16", "--no-progress"]


def _main(argv, capsys):
    code = train.main(argv)
    err = capsys.readouterr().err
    return code, err


@pytest.mark.parametrize(
    "argv,match",
    [
        (["--env-id", "NoSuch-v0"], "unknown env id 'NoSuch-v0'"),
        (["--backbone", "transformer"], "unknown backbone 'transformer'; choose one of: .*gru.*lstm.*mlp"),
        (["--num-steps", "16", "--bptt-len", "5"], r"--num-steps \(16\) must be a multiple of --bptt-len \(5\)"),
        (["--num-minibatches", "99"], "exceeds the number of sequences"),
        (["--memory-options", "bogus=1"], "has no option 'bogus'; its options are: num_layers, impl, remember_bias, init_gain"),
        (["--memory-options", "init_gain=0"], "init_gain must be > 0"),
        (["--num-envs", "0"], "--num-envs must be >= 1"),
        (["--head-size", "-1"], "--head-size must be >= 0"),
        (["--branch-size", "-2"], "--branch-size must be >= 0"),
        (["--obs-encoder", "cells"], "obs encoder 'cells' needs MiniGrid's compact observation"),
        (["--actor-init-gain", "0"], "--actor-init-gain must be > 0"),
        (["--env-id", "MiniGrid-MemoryS7-v0", "--view-size", "4"], "odd and >= 3"),
        # issue 13: every numeric flag in its range, non-finite values refused
        (["--learning-rate", "-1"], r"--learning-rate must be > 0 and finite, got -1.0"),
        (["--learning-rate", "nan"], r"--learning-rate must be > 0 and finite, got nan"),
        (["--learning-rate", "inf"], r"--learning-rate must be > 0 and finite, got inf"),
        (["--max-grad-norm", "-1"], r"--max-grad-norm must be > 0 and finite"),
        (["--clip-coef", "nan"], r"--clip-coef must be > 0 and finite"),
        (["--ent-coef", "-0.1"], r"--ent-coef must be >= 0 and finite"),
        (["--vf-coef", "inf"], r"--vf-coef must be >= 0 and finite"),
        (["--target-kl", "0"], r"--target-kl must be > 0 and finite"),
        (["--gamma", "1.5"], r"--gamma must be in \(0, 1\] and finite"),
        (["--gae-lambda", "nan"], r"--gae-lambda must be in \[0, 1\] and finite"),
        (["--frac-noise", "1.2"], r"--frac-noise must be in \[0, 1\] and finite"),
        (["--vocab-size", "0"], r"--vocab-size must be >= 1"),
        (["--seq-len", "-3"], r"--seq-len must be >= 1"),
        (["--seed", "-1"], r"--seed must be in \[0, 2\*\*32 - 1 - num-envs\]"),
        (["--eval-episodes", "-1"], r"--eval-episodes must be >= 0"),
        (["--noise-vocab-size", "7"], r"vocab_size - noise_vocab_size \(keys \+ values\) must be even"),  # the env's own check
        # --env-kwargs reaches every env, NoisyRecall included (it used to be ignored there)
        (["--env-kwargs", "foo=1"], r"bad NoisyRecall parameter: .*foo"),
        (["--env-kwargs", "vocab_size=4"], r"--env-kwargs vocab_size=\.\.\. duplicates a flag: use --vocab-size"),
        (["--env-id", "CartPole-v1", "--env-kwargs", "foo=1"], r"bad keyword for env 'CartPole-v1'"),
        (["--env-id", "MiniGrid-MemoryS7-v0", "--env-kwargs", "foo=1"], r"bad keyword for env 'MiniGrid-MemoryS7-v0'"),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, argv, match):
    code, err = _main([*SMALL, "--runs-dir", str(tmp_path), *argv], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert __import__("re").search(match, lines[0]), lines[0]
    assert not any(tmp_path.iterdir()), "a failed start must leave nothing behind"


def test_missing_and_corrupt_checkpoint(tmp_path, capsys):
    code, err = _main(["--resume", str(tmp_path / "nope")], capsys)
    assert code == 2 and "no checkpoint at" in err
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"not a checkpoint")
    code, err = _main(["--resume", str(run)], capsys)
    assert code == 2 and err.startswith("error: corrupt checkpoint") and len(err.strip().splitlines()) == 1
    assert (run / "checkpoint.pt").read_bytes() == b"not a checkpoint"


def test_existing_run_dir_is_not_overwritten(tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("x")
    code, err = _main([*SMALL, "--runs-dir", str(tmp_path), "--run-name", "taken"], capsys)
    assert code == 2 and "already exists" in err
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["keep.txt"]


def _args(tmp_path, name, **kw):
    return train.Args(**{
        "env_id": "MiniGrid-MemoryS7-v0", "total_timesteps": 6 * 64, "num_envs": 4, "num_steps": 16, "hidden_size": 16,
        "runs_dir": str(tmp_path), "run_name": name, "progress": False, "checkpoint_every": 100, **kw,
    })


def _params(run_dir):
    return torch.load(Path(run_dir) / "checkpoint.pt", weights_only=False)["model"]


@pytest.mark.parametrize("bptt_len", [None, 8])
def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path, bptt_len):
    full = train.train(_args(tmp_path, "full", bptt_len=bptt_len))
    part = train.train(_args(tmp_path, "part", bptt_len=bptt_len), on_update=lambda u: u == 2)
    ck = torch.load(part / "checkpoint.pt", weights_only=False)
    assert ck["update"] == 2 and not (part / "result.json").exists()
    resumed = train.train(train.Args(resume=str(part), progress=False))
    assert resumed == part
    a, b = _params(full), _params(resumed)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    assert json.loads((part / "result.json").read_text())["global_step"] == 6 * 64


def test_run_dir_contents_and_tensorboard_tags(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = train.train(_args(tmp_path, "tags", eval_episodes=2))
    assert json.loads((run / "config.json").read_text())["env_id"] == "MiniGrid-MemoryS7-v0"
    result = json.loads((run / "result.json").read_text())
    assert result["eval_episodes"] == 2 and "eval_return" in result
    acc = EventAccumulator(str(run))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for tag in ("charts/episodic_return", "charts/episodic_length", "charts/SPS", "charts/learning_rate",
                "losses/value_loss", "losses/policy_loss", "losses/entropy", "losses/approx_kl",
                "losses/clipfrac", "losses/explained_variance", "eval/episodic_return"):
        assert tag in tags, tag
    assert acc.Tags()["tensors"] or acc.Tags().get("text"), "config is logged as text"


def test_sigterm_checkpoints_and_exits(tmp_path):
    cmd = [sys.executable, str(ROOT / "train.py"), *SMALL, "--total-timesteps", "10000000",
           "--runs-dir", str(tmp_path), "--run-name", "sig", "--checkpoint-every", "100000"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    p = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True, env=env)
    events = tmp_path / "sig"
    deadline = time.time() + 60
    while time.time() < deadline and not any(events.glob("events.*")):
        time.sleep(0.2)
    time.sleep(1.0)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 128 + signal.SIGTERM, err
    assert "checkpoint saved" in err and "--resume" in err
    ck = torch.load(events / "checkpoint.pt", weights_only=False)
    assert ck["update"] >= 1
    assert not list(events.glob("*.tmp"))


@pytest.mark.parametrize("checkpoint_every", [100, 1])
def test_non_finite_stops_the_run_without_saving(tmp_path, capsys, checkpoint_every):
    def poison(update):
        with torch.no_grad():
            next(iter(poison.agent_params)).fill_(float("nan"))
        return False

    import agents.actor_critic as ac

    orig_init = ac.ActorCritic.__init__

    def spy_init(self, *a, **k):
        orig_init(self, *a, **k)
        poison.agent_params = list(self.memory.parameters())

    ac.ActorCritic.__init__ = spy_init
    try:
        with pytest.raises(SystemExit) as exc:
            train.train(_args(tmp_path, "nan", checkpoint_every=checkpoint_every), on_update=poison)
    finally:
        ac.ActorCritic.__init__ = orig_init
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert "non-finite" in err and "update 2" in err
    ckpt = tmp_path / "nan" / "checkpoint.pt"
    if checkpoint_every == 1:  # the checkpoint of update 1 was written before the poison: kept
        assert "the last good checkpoint" in err and "(update 1) is kept" in err
        assert torch.load(ckpt, weights_only=False)["update"] == 1
    else:  # the message must not promise a checkpoint that does not exist
        assert "last good checkpoint" not in err and "no checkpoint had been written yet" in err
        assert not ckpt.exists()


def test_resume_keeps_every_logged_point(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    part = train.train(_args(tmp_path, "p"), on_update=lambda u: u == 2)
    # Events files are read in name order: events.out.tfevents.<second>.<host>.<pid>.<counter>. In one
    # process within one second the counter decides, and "...10" sorts before "...9"; separate
    # processes (a real resume) always differ in pid or second. Start the resume in a later second.
    time.sleep(1.05)
    train.train(train.Args(resume=str(part), progress=False))
    acc = EventAccumulator(str(part))
    acc.Reload()
    steps = [e.step for e in acc.Scalars("charts/SPS")]
    assert steps == [64 * i for i in range(1, 7)], steps
    assert "charts/success_rate" in acc.Tags()["scalars"]


def test_resume_takes_threads_from_the_command_line(tmp_path):
    part = train.train(_args(tmp_path, "t", torch_threads=2), on_update=lambda u: u == 1)
    seen = {}
    train.train(train.Args(resume=str(part), progress=False, torch_threads=1),
                on_update=lambda u: seen.setdefault("threads", torch.get_num_threads()) and False)
    assert seen["threads"] == 1
    assert json.loads((part / "config.json").read_text())["torch_threads"] == 2


# ------------------------------------------------------------------------------ --async-rollouts


def test_async_interrupted_and_resumed_run_equals_uninterrupted(tmp_path):
    """The rollout in flight and the worker's envs and RNG are part of the checkpoint: resuming
    (and checkpointing mid-run) changes nothing."""
    full = train.train(_args(tmp_path, "full", async_rollouts=True))
    ckpts = train.train(_args(tmp_path, "ckpts", async_rollouts=True, checkpoint_every=2))
    part = train.train(_args(tmp_path, "part", async_rollouts=True), on_update=lambda u: u == 3)
    ck = torch.load(part / "checkpoint.pt", weights_only=False)
    assert ck["update"] == 3 and ck["async"]["pending"] is not None
    resumed = train.train(train.Args(resume=str(part), progress=False))
    a = _params(full)
    for other in (_params(ckpts), _params(resumed)):
        for k in a:
            torch.testing.assert_close(a[k], other[k], rtol=0, atol=0, msg=k)
    assert json.loads((part / "result.json").read_text())["global_step"] == 6 * 64


def test_async_rollouts_lag_the_policy_by_exactly_one_update(tmp_path):
    """Rebuild the async schedule in one process: rollouts 1 and 2 with theta_0, rollout u + 1 with
    theta_{u-1}; the worker's RNG (action sampling) and the learner's (minibatch order) kept apart.
    The async run ends with exactly these parameters."""
    import numpy as np

    from agents.ppo import PPOConfig, ppo_update
    from agents.rollout import RolloutCollector

    args = _args(tmp_path, "async", async_rollouts=True)
    run = train.train(args)
    cpu = torch.device("cpu")
    # The worker's side, as agents/async_rollout.py builds it.
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    env = train.make_env(args, args.num_envs, cpu)
    actor = train.make_agent(args, env).eval()
    collector = RolloutCollector(env, actor, args.num_steps, args.num_steps, cpu, seed=args.seed)
    worker_rng = torch.get_rng_state()
    # The learner's side, as train.py builds it.
    torch.manual_seed(args.seed)
    agent = train.make_agent(args, env)
    opt = train.make_optimizer(args, agent)
    learner_rng = torch.get_rng_state()
    cfg = PPOConfig(**{f: getattr(args, f) for f in PPOConfig.__dataclass_fields__})
    n = args.total_timesteps // (args.num_envs * args.num_steps)

    def collect(params):
        nonlocal worker_rng
        actor.load_state_dict(params)
        torch.set_rng_state(worker_rng)
        ro, _ = collector.collect(actor)
        worker_rng = torch.get_rng_state()
        return ro

    snapshot = lambda: {k: v.clone() for k, v in agent.state_dict().items()}  # noqa: E731
    rollout = collect(snapshot())
    for u in range(1, n + 1):
        behaviour = snapshot()  # theta_{u-1}: what the next rollout is collected with
        opt.param_groups[0]["lr"] = args.learning_rate * (1.0 - (u - 1.0) / n)
        torch.set_rng_state(learner_rng)
        ppo_update(agent, opt, rollout, cfg, args.num_steps, update_index=u)
        learner_rng = torch.get_rng_state()
        if u < n:
            rollout = collect(behaviour)
    env.close()
    got = _params(run)
    for k, v in agent.state_dict().items():
        torch.testing.assert_close(got[k], v, rtol=0, atol=0, msg=k)


# ------------------------------------------------------------------------------ issue 13: run safety


def test_unwritable_runs_dir_is_one_line(capsys):
    code, err = _main([*SMALL, "--runs-dir", "/proc/memrl-x"], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: cannot create run directory /proc/memrl-x/"), err


def test_env_kwargs_reach_noisy_recall(tmp_path, capsys):
    """NoisyRecall takes --env-kwargs like every env: a keyword it knows is passed on (render_mode,
    the one it has beyond the four flags), one it does not know is an error (the bad-input table)."""
    run = train.train(_args(tmp_path, "kw", env_id="memrl/NoisyRecall-v0", env_kwargs=("render_mode=None",), total_timesteps=64))
    assert json.loads((run / "config.json").read_text())["env_kwargs"] == ["render_mode=None"]
    code, err = _main([*SMALL, "--runs-dir", str(tmp_path), "--env-kwargs", "render_mode='human'"], capsys)
    assert code == 2 and "has no render modes, got 'human'" in err


def _snapshot(d: Path) -> dict:
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(d.iterdir()) if p.is_file()}


def test_resume_of_a_finished_run_changes_nothing(tmp_path, capsys):
    run = train.train(_args(tmp_path, "done", total_timesteps=128))
    before = _snapshot(run)
    code, err = _main(["--resume", str(run)], capsys)
    assert code == 0 and "has finished" in err and "--total-timesteps N" in err
    assert _snapshot(run) == before


def test_resume_refuses_run_defining_flags(tmp_path, capsys):
    part = train.train(_args(tmp_path, "p"), on_update=lambda u: u == 1)
    capsys.readouterr()
    before = _snapshot(part)
    for argv, name in ((["--backbone", "gru"], "--backbone"), (["--learning-rate", "0.1"], "--learning-rate"),
                       (["--seed", "1"], "--seed"), (["--runs-dir", str(tmp_path)], "--runs-dir")):
        code, err = _main(["--resume", str(part), *argv], capsys)
        assert code == 2 and err.startswith(f"error: {name} cannot be given with --resume"), err
        assert len(err.strip().splitlines()) == 1
    code, err = _main(["--resume", str(part), "--total-timesteps", "64"], capsys)
    assert code == 2 and "is below the run's 384" in err
    assert _snapshot(part) == before


def test_resume_detects_an_edited_config_and_mismatched_weights(tmp_path, capsys):
    part = train.train(_args(tmp_path, "p"), on_update=lambda u: u == 1)
    capsys.readouterr()
    cfg_path = part / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps({**cfg, "backbone": "gru"}))
    code, err = _main(["--resume", str(part)], capsys)
    assert code == 2 and "config.json says backbone='gru' but the checkpoint was trained with backbone='lstm'" in err
    cfg_path.write_text(json.dumps(cfg))
    # A checkpoint whose stored arguments do not match its weights (hidden size changed in both).
    ck = torch.load(part / "checkpoint.pt", weights_only=False)
    ck["args"]["hidden_size"] = 32
    torch.save(ck, part / "checkpoint.pt")
    cfg_path.write_text(json.dumps({**cfg, "hidden_size": 32}))
    code, err = _main(["--resume", str(part)], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "its weights do not fit the arguments stored with it" in lines[0], err
    assert not (part / "result.json").exists()


def test_resume_extends_a_run_and_cleans_partial_writes(tmp_path, capsys):
    full = train.train(_args(tmp_path, "full", total_timesteps=8 * 64))
    short = train.train(_args(tmp_path, "short"))  # 6 updates, finished
    time.sleep(1.05)  # the extension's events file must sort after the first (see above)
    (short / "checkpoint.pt.abc123.tmp").write_bytes(b"half")
    first_result = json.loads((short / "result.json").read_text())
    code, err = _main(["--resume", str(short), "--total-timesteps", str(8 * 64)], capsys)
    assert code == 0 and "extending" in err
    assert not list(short.glob("*.tmp"))
    assert json.loads((short / "result_384.json").read_text()) == first_result  # the first finish is kept
    res = json.loads((short / "result.json").read_text())
    assert res["global_step"] == 8 * 64 and json.loads((short / "config.json").read_text())["total_timesteps"] == 8 * 64
    ck = torch.load(short / "checkpoint.pt", weights_only=False)
    assert ck["update"] == 8 and ck["args"]["total_timesteps"] == 8 * 64
    # The learning rate follows the new total's schedule from the resume point on.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(short))
    acc.Reload()
    lr = {e.step: e.value for e in acc.Scalars("charts/learning_rate")}
    assert lr[7 * 64] == pytest.approx(1e-3 * (1 - 6 / 8)) and lr[6 * 64] == pytest.approx(1e-3 * (1 - 5 / 6))
    assert full.exists()
