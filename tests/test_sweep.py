"""sweep.py: the search space's parsing and every bad-input case, the objectives on hand-made
curves, the pruning decision from a run's events, the driver's bookkeeping on a stand-in executor
(failures, Ctrl-C, resume), and a real 4-trial sweep that persists, resumes an interrupted trial
from its checkpoint without re-running finished ones, prunes the worst trial while it trains and
writes every output (the preset loads with train.py --preset)."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import stat
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("optuna")

import optuna  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from experiments import executors  # noqa: E402
from experiments import objectives, space, study, sweep, sweep_setup  # noqa: E402
from experiments.rundata import ACCURACY_TAG, RETURN_TAG, SPS_TAG  # noqa: E402

ENV = "memrl/NoisyRecall-v0"
# vocab 8 with 4 noise tokens: 2 keys, chance accuracy 1/2; vocab 64: 30 keys, chance 1/30.
TRAIN_ARGS = "--num-envs 4 --num-steps 16 --hidden-size 8 --noise-vocab-size 4 --seq-len 16 --checkpoint-every 2 --no-progress"
TOTAL = 1024  # 16 updates of 64 steps


def read_csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def write_run(run_dir: Path, steps, values, tag: str = ACCURACY_TAG, finished: bool = True) -> None:
    """A run directory as train.py leaves it, with a hand-made score curve."""
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(str(run_dir))
    for s, v in zip(steps, values):
        w.add_scalar(tag, float(v), int(s))
        w.add_scalar(SPS_TAG, 100.0, int(s))
    w.close()
    if finished:
        (run_dir / "result.json").write_text(json.dumps({"global_step": int(steps[-1])}))


def launches(log: Path) -> list[str]:
    """The train.py command lines an executor started for a run (one '# date cmd' line each)."""
    return [ln for ln in log.read_text().splitlines() if ln.startswith("# ")] if log.exists() else []


# ----------------------------------------------------------------------------- the search space


def test_space_distributions_and_flags():
    lr = space.parse_param("learning_rate=loguniform:1e-4:3e-3")
    assert isinstance(lr.dist, optuna.distributions.FloatDistribution) and lr.dist.log
    assert (lr.dist.low, lr.dist.high) == (1e-4, 3e-3) and lr.flags(0.001) == ["--learning-rate", "0.001"]
    ep = space.parse_param("update-epochs=int:2:10:2")  # '-' as in the flag works too
    assert ep.name == "update_epochs" and (ep.dist.low, ep.dist.high, ep.dist.step) == (2, 10, 2)
    assert ep.flags(4) == ["--update-epochs", "4"]
    ent = space.parse_param("ent_coef=choice:0,0.01,0.03")
    assert ent.dist.choices == (0.0, 0.01, 0.03)  # a float field: the choices are floats
    enc = space.parse_param("obs_encoder=choice:onehot,cells")
    assert enc.dist.choices == ("onehot", "cells") and enc.flags("cells") == ["--obs-encoder", "cells"]
    norm = space.parse_param("norm_adv=choice:true,false")
    assert norm.flags(True) == ["--norm-adv"] and norm.flags(False) == ["--no-norm-adv"]
    clip = space.parse_param("clip_coef=uniform:0.1:0.3")
    assert not clip.dist.log and clip.flags(0.2) == ["--clip-coef", "0.2"]
    kl = space.parse_param("target_kl=choice:0.01,0.02")  # an optional float
    assert kl.kind is float


def test_objectives_on_hand_made_curves():
    steps = np.arange(100, 1001, 100)  # 10 points, 100 .. 1000
    ramp = (steps - 100) / 900.0  # 0 .. 1, linear
    curve = (steps, ramp)
    v = objectives.objective_value
    # auc: the mean of a straight line is its midpoint; cut at 550 it is the mean of 0 .. 0.5.
    assert v(curve, 1000, "auc", 1000) == pytest.approx(0.5)
    assert v(curve, 550, "auc", 1000) == pytest.approx(ramp[4] / 2)  # points 100 .. 500: 0 .. 4/9
    # Uneven logging counts by steps, not by points: 0 for 900 steps, then 1 for the last 100.
    assert v((np.array([0, 900, 1000]), np.array([0.0, 0.0, 1.0])), 1000, "auc", 1000) == pytest.approx(0.05)
    # final: the points in the last 10% of the horizon (> 900 of 1000: only 1000).
    assert v(curve, 1000, "final", 1000, final_frac=0.1) == pytest.approx(1.0)
    assert v(curve, 1000, "final", 1000, final_frac=0.25) == pytest.approx(np.mean(ramp[-3:]))  # > 750: 800 .. 1000
    # steps: the first step where the trailing mean of 2 points reaches 0.5; never -> 2 x total.
    first = next(s for i, s in enumerate(steps) if i and (ramp[i] + ramp[i - 1]) / 2 >= 0.5)
    assert v(curve, 1000, "steps", 1000, threshold=0.5, smooth=2) == first
    assert v(curve, 1000, "steps", 1000, threshold=2.0, smooth=2) == 2000
    assert v(curve, 50, "auc", 1000) is None and v(None, 1000, "auc", 1000) is None
    assert v((np.array([300]), np.array([0.25])), 1000, "auc", 1000) == 0.25
    assert objectives.checkpoints(1000, 10) == list(range(100, 1000, 100))
    assert objectives.score_curve({RETURN_TAG: curve, ACCURACY_TAG: curve})[0] == ACCURACY_TAG
    assert objectives.score_curve({RETURN_TAG: curve})[0] == RETURN_TAG


# ----------------------------------------------------------------------------- bad input


def base_argv(out: Path, *extra: str) -> list[str]:
    return ["--env-id", ENV, "--backbone", "lstm", "--space", "learning_rate=loguniform:1e-4:3e-3", "--trials", "2",
            "--total-timesteps", str(TOTAL), f"--train-args={TRAIN_ARGS}", "--out", str(out), *extra]


def set_flag(argv: list[str], flag: str, *values: str) -> list[str]:
    """argv with `flag`'s values replaced (or the flag added)."""
    if flag == "--train-args":
        return [a for a in argv if not a.startswith("--train-args=")] + [f"--train-args={values[0]}"]
    if flag not in argv:
        return [*argv, flag, *values]
    i = j = argv.index(flag)
    j += 1
    while j < len(argv) and not argv[j].startswith("--"):
        j += 1
    return [*argv[:i], flag, *values, *argv[j:]]


@pytest.mark.parametrize("change,message", [
    ({"--space": ["learning_rate=normal:0:1"]}, "unknown distribution 'normal'"),
    ({"--space": ["no_such_flag=uniform:0:1"]}, "'no_such_flag' is not a train.py flag"),
    ({"--space": ["learning_rate"]}, "is not KEY=DIST"),
    ({"--space": ["learning_rate=uniform:3e-3:1e-4"]}, "LOW must be < HIGH"),
    ({"--space": ["learning_rate=loguniform:0:1e-3"]}, "loguniform needs LOW > 0"),
    ({"--space": ["learning_rate=uniform:1e-4:abc"]}, "'abc' is not a number"),
    ({"--space": ["update_epochs=int:1:10:4"]}, "HIGH - LOW a multiple of STEP"),
    ({"--space": ["update_epochs=uniform:1:4"]}, "takes an integer"),
    ({"--space": ["ent_coef=choice:0.01"]}, "two or more different values"),
    ({"--space": ["obs_encoder=choice:onehot,pixels"]}, "'pixels' is not one of auto, onehot, cells, cnn"),
    ({"--space": ["gamma=uniform:0.5:1.5"]}, "--gamma must be in (0, 1]"),
    ({"--space": ["seed=int:1:5"]}, "does not search --seed (it sets it: use --seeds)"),
    ({"--space": ["learning_rate=uniform:1e-4:1e-3", "learning_rate=uniform:1e-4:1e-3"]}, "names a flag twice"),
    ({"--space": ["num_envs=choice:4,8"]}, "num_envs is also fixed in --train-args"),
    ({"--trials": ["0"]}, "--trials must be >= 1, got 0"),
    ({"--seeds": ["1", "1"]}, "--seeds needs one or more different seeds"),
    ({"--seeds": ["1", "-1"]}, "--seed must be in [0, 2**32 - 1 - num-envs]"),
    ({"--train-args": ["--seed 3"]}, "must not contain --seed: sweep.py sets it (use --seeds)"),
    ({"--train-args": ["--num-envs 0"]}, "--num-envs must be >= 1"),
    ({"--backbone": ["nope"]}, "unknown backbone 'nope'"),
    ({"--objective": ["steps"], "--env-id": ["CartPole-v1"]}, "--objective steps needs --threshold"),
    ({"--enqueue": ["learning_rate=1.0"]}, "outside --space learning_rate"),
    ({"--enqueue": ["gamma=0.9"]}, "KEY in --space"),
    ({"--ray-address": ["auto"]}, "need --executor ray"),
    ({"--threads-per-run": ["-2"]}, "--threads-per-run must be >= 0 (0: cores // jobs), got -2"),
])
def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path, capsys, change, message):
    argv = base_argv(tmp_path / "out")
    for flag, values in change.items():
        argv = set_flag(argv, flag, *values)
    assert sweep.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- pruning decision


def test_pruning_decision_from_events(tmp_path):
    """Checkpoints are reported only when every seed has passed them, as the mean over seeds of
    the objective of the curves cut there; the median pruner stops a trial below the completed ones."""
    sw = sweep_setup.prepare(sweep.Args(env_id=ENV, space=("learning_rate=loguniform:1e-4:3e-3",), trials=3, seeds=(1, 2),
                                        total_timesteps=1000, train_args=TRAIN_ARGS, out=str(tmp_path), prune_startup=1))
    opt = optuna.create_study(direction="maximize", pruner=study.make_pruner(sw))
    steps = np.arange(100, 1001, 100)

    def trial_runs(values_by_seed: dict[int, float], upto: dict[int, int]):
        trial = opt.ask(sweep_dists(sw))
        jobs = {}
        for seed, value in values_by_seed.items():
            d = tmp_path / "runs" / sw.run_name(trial.number, seed)
            keep = steps <= upto[seed]
            write_run(d, steps[keep], np.full(keep.sum(), value), finished=upto[seed] == 1000)
            jobs[seed] = executors.Job(d.name, [], tmp_path / f"{d.name}.log", d)
        return sweep.TrialRuns(trial, dict(trial.params), jobs, queued=[])

    good = trial_runs({1: 0.8, 2: 0.6}, {1: 1000, 2: 1000})
    reported = sweep.report_progress(sw, good)
    assert [s for s, _ in reported] == objectives.checkpoints(1000, 10) and all(v == pytest.approx(0.7) for _, v in reported)
    opt.tell(good.trial, 0.7)

    # Seed 2 has only reached step 300: nothing past it is reported yet.
    bad = trial_runs({1: 0.2, 2: 0.4}, {1: 700, 2: 300})
    assert [s for s, _ in sweep.report_progress(sw, bad)] == [100, 200, 300]
    assert bad.trial.should_prune()  # 0.3 < the completed trial's 0.7 at step 300

    better = trial_runs({1: 0.9, 2: 0.9}, {1: 500, 2: 600})
    assert [s for s, _ in sweep.report_progress(sw, better)] == [100, 200, 300, 400, 500]
    assert not better.trial.should_prune()
    assert sweep.report_progress(sw, better) == []  # nothing new: nothing reported twice


def sweep_dists(sw):
    return {p.name: p.dist for p in sw.params}


# ----------------------------------------------------------------------------- the driver on a stand-in executor


class InstantExecutor(executors.Executor):
    """Runs "train" instantly: each writes a flat accuracy curve equal to 100 x its learning rate
    plus its seed / 1000 (so a trial's mean over seeds is known exactly). Runs named in `fail`
    exit 1; after `interrupt_after` finished runs this process gets SIGINT (a Ctrl-C)."""

    def __init__(self, fail=(), interrupt_after=None):
        self.fail, self.interrupt_after = set(fail), interrupt_after
        self.live: list[executors.Job] = []
        self.ended: list[tuple[str, int]] = []
        self.started: list[str] = []
        self.stopped: list[str] = []
        self.finished = 0

    def submit(self, job):
        self.started.append(job.name)
        self.live.append(job)

    def wait(self, timeout=None):
        if self.interrupt_after is not None and self.finished == self.interrupt_after:
            self.interrupt_after = None
            os.kill(os.getpid(), signal.SIGINT)  # handled before the next line runs
        if self.live and not self.ended:
            job = self.live.pop(0)
            lr = float(job.argv[job.argv.index("--learning-rate") + 1])
            seed = int(job.argv[job.argv.index("--seed") + 1])
            if job.name in self.fail:
                self.ended.append((job.name, 1))
            else:
                write_run(job.run_dir, [256, 512, 768, 1024], [100 * lr + seed / 1000] * 4)
                self.ended.append((job.name, 0))
            self.finished += 1
        out, self.ended = self.ended, []
        return out

    def stop(self, name):
        self.stopped.append(name)
        for job in list(self.live):
            if job.name == name:
                self.live.remove(job)
                self.ended.append((name, 130))

    def running(self):
        return [j.name for j in self.live] + [n for n, _ in self.ended]


def test_driver_fails_interrupts_and_resumes(tmp_path, capsys):
    argv = set_flag(base_argv(tmp_path, "--seeds", "1", "2", "--jobs", "2", "--pruner", "none", "--enqueue",
                              "learning_rate=0.001", "learning_rate=0.002", "learning_rate=0.003"), "--trials", "3")
    # Session 1, two slots: trial 0 completes; trial 1's seed 1 fails, so the trial fails and its
    # seed 2 is stopped; Ctrl-C while trial 2's seed 1 runs: it is stopped (its seed 2 never
    # started) and the trial stays unfinished.
    ex = InstantExecutor(fail={"trial1__seed1"}, interrupt_after=3)
    assert sweep.main(argv, executor=ex) == 130
    assert ex.started == ["trial0__seed1", "trial0__seed2", "trial1__seed1", "trial1__seed2", "trial2__seed1"]
    assert set(ex.stopped) == {"trial1__seed2", "trial2__seed1"}
    rows = read_csv(tmp_path / "trials.csv")
    assert [r["state"] for r in rows] == ["COMPLETE", "FAIL", "RUNNING"]
    assert float(rows[0]["auc"]) == pytest.approx(0.1 + 0.0015) and float(rows[0]["seed2"]) == pytest.approx(0.102)
    assert "trial1__seed1: exit 1" in rows[1]["note"]
    # Session 2, the same command: only the unfinished trial runs, under its own number.
    ex = InstantExecutor()
    assert sweep.main(argv, executor=ex) == 0
    assert ex.started == ["trial2__seed1", "trial2__seed2"]
    rows = read_csv(tmp_path / "trials.csv")
    assert [r["state"] for r in rows] == ["COMPLETE", "FAIL", "COMPLETE"]
    best = json.loads((tmp_path / "best.json").read_text())
    assert best["number"] == 2 and best["value"] == pytest.approx(0.3015) and best["params"] == {"learning_rate": 0.003}
    assert best["trials"] == {"COMPLETE": 2, "PRUNED": 0, "FAIL": 1, "RUNNING": 0}
    # A larger --trials adds one; a different space is a different study (exit 2, nothing touched).
    ex = InstantExecutor()
    assert sweep.main(set_flag(argv, "--trials", "4"), executor=ex) == 0
    assert ex.started == ["trial3__seed1", "trial3__seed2"]
    journal = (tmp_path / "study.journal").stat()
    capsys.readouterr()
    other = [a.replace("3e-3", "1e-2") for a in argv]
    assert sweep.main(other, executor=InstantExecutor()) == 2
    assert "is a study with space=" in capsys.readouterr().err
    assert (tmp_path / "study.journal").stat().st_mtime_ns == journal.st_mtime_ns


def test_steps_objective_is_minimized(tmp_path):
    """--objective steps: a run reaching the threshold scores the step it did (the trailing mean of
    --smooth points), one that never does 2 x the budget; the best trial is the lowest."""
    argv = set_flag(base_argv(tmp_path, "--pruner", "none", "--objective", "steps", "--threshold", "0.15", "--smooth", "2",
                              "--enqueue", "learning_rate=0.001", "learning_rate=0.002"), "--total-timesteps", "1024")
    assert sweep.main(argv, executor=InstantExecutor()) == 0
    rows = read_csv(tmp_path / "trials.csv")
    assert [float(r["steps"]) for r in rows] == [2048.0, 512.0]  # 0.101 never reaches 0.15; 0.201 from the 2nd point
    best = json.loads((tmp_path / "best.json").read_text())
    assert (best["direction"], best["number"], best["value"]) == ("minimize", 1, 512.0)


# ----------------------------------------------------------------------------- a real sweep


def test_real_sweep_persists_resumes_prunes_and_writes_everything(tmp_path, capsys):
    """4 trials of train.py on a tiny NoisyRecall, every trial enqueued, two at a time (one seed:
    the mean over seeds is the stand-in executor's test; real runs cost seconds each here). Trials
    0 and 1 (2 keys) run in a first session; trial 2 is then left as a Ctrl-C leaves one
    (checkpointed at update 2, no result.json); the second session resumes it alongside trial 3:
    30 keys (chance 1/30 against 1/2) and 40 epochs per update (slow), which the median pruner
    stops. The pruner waits for 3 completed trials, so it never judges trials 0-2 (at most 2 had
    completed while each ran) and judges trial 3 at every checkpoint after trial 2 completes, which
    is early in trial 3's slow run. A third session starts nothing."""
    import agents.presets
    import train

    out = tmp_path / "sw"
    dists = ["learning_rate=loguniform:1e-4:3e-3", "update_epochs=int:1:40", "vocab_size=choice:8,64"]
    argv = ["--env-id", ENV, "--backbone", "lstm", "--space", *dists, "--seeds", "1", "--total-timesteps", str(TOTAL),
            f"--train-args={TRAIN_ARGS}", "--out", str(out), "--jobs", "2", "--poll", "0.1", "--prune-startup", "3",
            "--enqueue", "learning_rate=1e-3,update_epochs=2,vocab_size=8", "learning_rate=2e-3,update_epochs=2,vocab_size=8",
            "learning_rate=1.5e-3,update_epochs=3,vocab_size=8", "learning_rate=3e-4,update_epochs=40,vocab_size=64"]

    def with_trials(n):
        i = argv.index("--seeds")
        return argv[:i] + ["--trials", str(n)] + argv[i:]

    assert sweep.main(with_trials(2)) == 0
    rows = read_csv(out / "trials.csv")
    assert [r["state"] for r in rows] == ["COMPLETE", "COMPLETE"]
    logs = out / "logs"
    first = {n: (out / "runs" / n / "result.json").stat().st_mtime_ns for n in ("trial0__seed1", "trial1__seed1")}

    # Trial 2 as an interruption leaves it: RUNNING in the study, seed 1 checkpointed, no result.json.
    sw = sweep_setup.prepare(sweep.Args(env_id=ENV, space=tuple(dists), trials=4, total_timesteps=TOTAL,
                                        train_args=TRAIN_ARGS, out=str(out), jobs=2))
    trial = study.load_study(out).ask(sweep_dists(sw))  # the third enqueued trial
    assert trial.number == 2 and trial.params["learning_rate"] == 1.5e-3
    targs, given = agents.presets.parse_args(sw.argv(2, 1, trial.params))
    train.run(targs, on_update=lambda u: u == 2, given=given)
    part = out / "runs" / "trial2__seed1"
    assert (part / "checkpoint.pt").exists() and not (part / "result.json").exists()

    capsys.readouterr()
    assert sweep.main(with_trials(4)) == 0
    err = capsys.readouterr().err
    assert "trial 2 resumed" in err and "trial 3 pruned at step" in err
    rows = {r["number"]: r for r in read_csv(out / "trials.csv")}
    assert [rows[k]["state"] for k in "0123"] == ["COMPLETE", "COMPLETE", "COMPLETE", "PRUNED"]
    # Finished trials were not run again: one launch each, result.json untouched.
    for name, mtime in first.items():
        assert len(launches(logs / f"{name}.log")) == 1 and (out / "runs" / name / "result.json").stat().st_mtime_ns == mtime
    # The interrupted run resumed from its checkpoint and finished.
    (resumed,) = launches(logs / "trial2__seed1.log")
    assert f"--resume {part}" in resumed
    assert json.loads((part / "result.json").read_text())["global_step"] == TOTAL
    # The pruned trial's runs stopped early with a checkpoint (exit 130), well before the end.
    assert 0 < int(rows["3"]["pruned_at_step"]) < TOTAL
    d = out / "runs" / "trial3__seed1"
    assert (d / "checkpoint.pt").exists() and not (d / "result.json").exists()
    assert "stopped by signal 2: checkpoint saved" in (logs / "trial3__seed1.log").read_text()
    # Every run got --preset none, the fixed flags, then the trial's.
    for k in "012":
        assert float(rows[k]["auc"]) == float(rows[k]["seed1"]) > 0.3
    cmd = launches(logs / "trial0__seed1.log")[0]
    assert "--preset none --num-envs 4" in cmd and "--learning-rate 0.001 --update-epochs 2 --vocab-size 8" in cmd

    # Every output.
    best = json.loads((out / "best.json").read_text())
    top = max("012", key=lambda k: float(rows[k]["auc"]))
    assert best["number"] == int(top) and best["value"] == pytest.approx(float(rows[top]["auc"]))
    assert best["score_tag"] == ACCURACY_TAG and best["trials"]["PRUNED"] == 1
    for name in ("summary.md", "optimization_history.png", "intermediate_values.png", "param_importances.png"):
        assert (out / name).stat().st_size > 0, name
    umask = os.umask(0o022)
    os.umask(umask)
    for name in ("trials.csv", "best.json", "preset.toml", "summary.md", "optimization_history.png"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o666 & ~umask, name  # not mkstemp's 0600
    summary = (out / "summary.md").read_text()
    assert f"## Best: trial {top}" in summary and "1 pruned" in summary and "--trials 4" in summary

    # preset.toml: the best configuration in the presets/ format, accepted by train.py --preset.
    preset = out / "preset.toml"
    text = preset.read_text()
    assert text.startswith("# Found by a sweep") and "python sweep.py" in text and "[lstm]" in text
    targs, _ = agents.presets.parse_args(["--env-id", ENV, "--backbone", "lstm", "--preset", str(preset)])
    for k, v in best["params"].items():
        assert getattr(targs, k) == v
    assert (targs.num_envs, targs.num_steps, targs.hidden_size, targs.noise_vocab_size) == (4, 16, 8, 4)
    assert train.main(["--env-id", ENV, "--backbone", "lstm", "--preset", str(preset), "--total-timesteps", "64",
                       "--runs-dir", str(tmp_path / "check"), "--no-progress"]) == 0

    # The same command again: nothing to train, nothing launched, the outputs rebuilt.
    before = {p.name: len(launches(p)) for p in logs.glob("*.log")}
    assert sweep.main(with_trials(4)) == 0
    assert {p.name: len(launches(p)) for p in logs.glob("*.log")} == before
    assert len(read_csv(out / "trials.csv")) == 4 and not math.isnan(json.loads((out / "best.json").read_text())["value"])
