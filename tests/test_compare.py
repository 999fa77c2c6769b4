"""compare.py: statistics against hand-computed cases, the job runner's signals and failures, a
tiny real grid producing every output, resume of an interrupted grid, and the CLI's errors."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import compare
from experiments import executors, rundata, stats
from experiments import grid as planning

ROOT = Path(__file__).resolve().parents[1]
ENV = "memrl/NoisyRecall-v0"
TRAIN_ARGS = "--num-envs 4 --num-steps 16 --hidden-size 16 --vocab-size 8 --noise-vocab-size 4 --seq-len 16 --eval-episodes 4 --checkpoint-every 2"
TOTAL = 512  # 8 updates of 64 steps


def grid_argv(out: Path, seeds=("1", "2"), jobs="4", *extra: str) -> list[str]:
    return ["--backbones", "lstm", "mlp", "--env-ids", ENV, "--seeds", *seeds, "--total-timesteps", str(TOTAL),
            f"--train-args={TRAIN_ARGS}", "--out", str(out), "--jobs", jobs, "--resamples", "2000", *extra]


def read_csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------------- statistics


def test_iqm_is_the_mean_of_the_middle_half():
    assert stats.iqm(range(1, 9)) == pytest.approx(np.mean([3, 4, 5, 6]))
    # trim_mean cuts int(0.25 * 5) = 1 value at each end: the outlier does not count.
    assert stats.iqm([1, 2, 3, 4, 100]) == pytest.approx(3.0)
    assert stats.iqm([7.0]) == 7.0


def test_bootstrap_ci_hand_computed_two_points():
    # Resampling [0, 1] gives means 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4: the 95% percentile
    # interval is [0, 1] and the 40% one (quantiles 0.3 and 0.7) is [0.5, 0.5].
    ci = stats.bootstrap_ci([0.0, 1.0], 0.95, 4000)
    assert (ci.low, ci.high, ci.note) == (0.0, 1.0, "")
    ci = stats.bootstrap_ci([0.0, 1.0], 0.40, 4000)
    assert (ci.low, ci.high) == (0.5, 0.5)


def test_bootstrap_ci_contains_the_mean_and_is_deterministic():
    x = np.arange(1.0, 9.0)
    a = stats.bootstrap_ci(x, 0.95, 3000, seed=3)
    b = stats.bootstrap_ci(x, 0.95, 3000, seed=3)
    assert (a.low, a.high) == (b.low, b.high)
    assert 1.0 <= a.low < x.mean() < a.high <= 8.0
    # The normal-theory half width is 1.96 * std / sqrt(n) = 1.59; the bootstrap's is close to it.
    assert (a.high - a.low) / 2 == pytest.approx(1.96 * x.std() / np.sqrt(8), rel=0.15)
    narrow = stats.bootstrap_ci(x, 0.5, 3000, seed=3)
    assert a.low < narrow.low < narrow.high < a.high


@pytest.mark.parametrize("x,note", [([0.7], "n=1"), ([0.25, 0.25, 0.25], "all seeds equal")])
def test_bootstrap_ci_degenerate_samples_give_the_value(x, note):
    ci = stats.bootstrap_ci(x)
    assert ci.low == ci.high == x[0] and ci.note.startswith(note)


def test_curve_band_over_seeds():
    rng = np.random.default_rng(0)
    curves = rng.normal(size=(5, 30))  # [seeds, G]
    mean, low, high = stats.curve_band(curves, 0.95, 500)
    assert np.allclose(mean, curves.mean(0)) and np.all(low <= mean) and np.all(mean <= high)
    one = curves[:1]
    mean1, low1, high1 = stats.curve_band(one)
    assert np.array_equal(mean1, one[0]) and np.array_equal(low1, one[0]) and np.array_equal(high1, one[0])


def test_steps_to_threshold_uses_a_trailing_mean():
    steps = np.array([10, 20, 30, 40, 50])
    values = np.array([0.0, 1.0, 0.0, 1.0, 1.0])
    assert stats.steps_to_threshold(steps, values, 0.6, window=1) == 20
    # Trailing means of 2: [-, 0.5, 0.5, 0.5, 1.0]
    assert stats.steps_to_threshold(steps, values, 0.6, window=2) == 50
    assert stats.steps_to_threshold(steps, values, 1.1, window=2) is None
    # A run with fewer points than the window uses all it has: mean of 5 = 0.6.
    assert stats.steps_to_threshold(steps, values, 0.6, window=50) == 50
    assert stats.steps_to_threshold(steps[:0], values[:0], 0.5, window=3) is None


def test_common_grid_stays_inside_every_curve():
    a = (np.array([64, 128, 192, 256]), np.array([0.0, 1.0, 2.0, 3.0]))
    b = (np.array([128, 256, 320]), np.array([5.0, 5.0, 5.0]))
    grid = stats.common_grid([a, b], points=5)
    assert grid[0] == 128 and grid[-1] == 256 and len(grid) == 5
    assert np.allclose(stats.resample(*a, grid), (grid - 64) / 64)
    assert stats.common_grid([a, (np.array([300]), np.array([1.0]))]) is None


def test_parse_backbone_and_run_names():
    bb = planning.parse_backbone("mlstm:num_heads=2, chunk_size=16")
    assert bb.options == ("num_heads=2", "chunk_size=16") and bb.display == "mlstm:num_heads=2,chunk_size=16"
    assert planning.run_name(ENV, bb, 3) == "memrl-NoisyRecall-v0__mlstm+num_heads=2+chunk_size=16__3"
    with pytest.raises(planning.UsageError, match="has no option 'bogus'"):
        planning.parse_backbone("lstm:bogus=1")


def test_thresholds():
    t = planning.parse_thresholds([], ["MiniGrid-MemoryS9-v0", ENV, "CartPole-v1"])
    assert t == {"MiniGrid-MemoryS9-v0": 0.9, ENV: 0.5, "CartPole-v1": None}
    assert planning.parse_thresholds([f"{ENV}=0.7"], [ENV, "CartPole-v1"]) == {ENV: 0.7, "CartPole-v1": None}
    assert planning.parse_thresholds(["0.3"], [ENV, "CartPole-v1"]) == {ENV: 0.3, "CartPole-v1": 0.3}
    with pytest.raises(planning.UsageError, match="not in --env-ids"):
        planning.parse_thresholds(["Other-v0=1"], [ENV])


# ----------------------------------------------------------------------------- the job runner

CHILD = textwrap.dedent("""
    import signal, sys, time, pathlib
    d = pathlib.Path(sys.argv[1])
    def on_sigint(signum, frame):
        with open(d / "signals", "a") as f:
            f.write(f"{signum}\\n")
        time.sleep(0.3)  # 'checkpointing': a second SIGINT forwarded now would show up twice
        sys.exit(130)
    signal.signal(signal.SIGINT, on_sigint)
    (d / "ready").write_text("1")
    time.sleep(30)
""")


def test_run_jobs_forwards_one_sigint_and_starts_nothing_after(tmp_path):
    dirs = [tmp_path / "a", tmp_path / "b"]
    for d in dirs:
        d.mkdir()
    runner = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from pathlib import Path
        from experiments import executors
        jobs = [executors.Job(n, [d], Path(d) / "log", Path({str(tmp_path)!r}) / "runs" / n,
                              program=[sys.executable, "-c", {CHILD!r}])
                for n, d in (("a", {str(dirs[0])!r}), ("b", {str(dirs[1])!r}))]
        codes, interrupted = executors.run_jobs(executors.LocalExecutor(1), jobs, parallel=1, poll=0.02)
        print(codes, interrupted)
    """)
    proc = subprocess.Popen([sys.executable, "-c", runner], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 20
    while not (dirs[0] / "ready").exists():
        assert time.time() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert out.strip() == "{'a': 130} True"
    assert (dirs[0] / "signals").read_text() == f"{int(signal.SIGINT)}\n"  # exactly one, no double
    assert not (dirs[1] / "ready").exists(), "no job may start after a signal"


def test_run_jobs_failure_does_not_stop_the_others(tmp_path):
    py = [sys.executable, "-c"]
    jobs = [executors.Job("bad", ["import sys; sys.exit(3)"], tmp_path / "bad.log", tmp_path / "runs" / "bad", program=py),
            executors.Job("good", ["print('hello')"], tmp_path / "good.log", tmp_path / "runs" / "good", program=py)]
    said = []
    codes, interrupted = executors.run_jobs(executors.LocalExecutor(1), jobs, parallel=1, say=said.append, poll=0.01)
    assert codes == {"bad": 3, "good": 0} and not interrupted
    assert "hello" in (tmp_path / "good.log").read_text()
    assert any("bad: FAILED (exit 3" in s for s in said)


# ----------------------------------------------------------------------------- a real tiny grid


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    out = tmp_path_factory.mktemp("grid")
    code = compare.main(grid_argv(out))
    assert code == 0
    return out


def test_tiny_grid_produces_every_output(grid):
    rows = read_csv(grid / "results.csv")
    assert [(r["backbone"], r["seed"], r["status"]) for r in rows] == [
        ("lstm", "1", "finished"), ("lstm", "2", "finished"), ("mlp", "1", "finished"), ("mlp", "2", "finished")]
    for r in rows:
        result = json.loads((Path(r["run_dir"]) / "result.json").read_text())
        assert int(r["steps"]) == result["global_step"] == TOTAL
        # train.py's own record of its eval and its clock, beside the numbers compare read from events.
        assert float(r["eval_accuracy"]) == pytest.approx(result["eval_accuracy"], abs=1e-4)
        assert float(r["eval_return"]) == pytest.approx(result["eval_return"], abs=1e-4)
        assert float(r["wall_time_s"]) == pytest.approx(result["wall_time"], rel=0.2, abs=1.0)
        assert 0.0 <= float(r["final_accuracy"]) <= 1.0 and float(r["final_return"]) >= 0
        assert r["score_metric"] == "accuracy" and r["threshold"] == "0.5"
        assert Path(r["run_dir"]).name == f"memrl-NoisyRecall-v0__{r['backbone']}__{r['seed']}"
    summary = (grid / "summary.md").read_text()
    assert "## memrl/NoisyRecall-v0" in summary
    for bb in ("lstm", "mlp"):
        line = next(ln for ln in summary.splitlines() if ln.startswith(f"| {bb} |"))
        accs = [float(r["final_accuracy"]) for r in rows if r["backbone"] == bb]
        assert f"| {bb} | 2/2 | {np.mean(accs):.3f} |" in line
    for png in ("curves_memrl-NoisyRecall-v0.png", "curves_aggregate.png"):
        data = (grid / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert sorted(p.name for p in (grid / "logs").iterdir()) == [f"memrl-NoisyRecall-v0__{b}__{s}.log" for b in ("lstm", "mlp") for s in (1, 2)]


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_written_files_get_the_mode_the_umask_gives(tmp_path, umask, mode):
    """write_atomic (results.csv, summary.md, the plots, a sweep's outputs) leaves 0666 less the
    umask, as open() does for a new file, not mkstemp's 0600; a file it replaces gets it too."""
    from experiments import report

    old = tmp_path / "summary.md"
    old.write_text("before")
    old.chmod(0o600)
    saved = os.umask(umask)
    try:
        report.write_atomic(tmp_path / "results.csv", b"env,backbone\n")
        report.write_atomic(old, b"after")
    finally:
        os.umask(saved)
    for name in ("results.csv", "summary.md"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name
    assert old.read_text() == "after" and sorted(p.name for p in tmp_path.iterdir()) == ["results.csv", "summary.md"]


def test_tiny_grid_outputs_get_the_umask_mode(grid):
    umask = os.umask(0o022)
    os.umask(umask)
    for name in ("results.csv", "summary.md", "curves_memrl-NoisyRecall-v0.png", "curves_aggregate.png"):
        assert stat.S_IMODE((grid / name).stat().st_mode) == 0o666 & ~umask, name


def test_report_only_rebuilds_the_same_outputs(grid, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(grid / "runs", out / "runs")
    # --backbones only orders the tables here (the default order puts mlp first).
    assert compare.main(["--out", str(out), "--report-only", "--resamples", "2000"]) == 0
    assert [r["backbone"] for r in read_csv(out / "results.csv")] == ["mlp", "mlp", "lstm", "lstm"]
    assert compare.main(["--out", str(out), "--report-only", "--resamples", "2000", "--backbones", "lstm", "mlp"]) == 0
    strip = lambda rows: [{k: v for k, v in r.items() if k != "run_dir"} for r in rows]  # noqa: E731
    assert strip(read_csv(out / "results.csv")) == strip(read_csv(grid / "results.csv"))
    assert (out / "summary.md").read_text() == (grid / "summary.md").read_text()


def test_a_different_config_in_the_same_out_is_refused(grid, capsys):
    before = {p: p.stat().st_mtime_ns for p in grid.rglob("*")}
    code = compare.main(grid_argv(grid, ("1", "2"), "4", "--total-timesteps", "1024"))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "total_timesteps=512" in err[0] and "1024" in err[0], err
    assert {p: p.stat().st_mtime_ns for p in grid.rglob("*")} == before


def test_runs_made_before_a_setting_existed_still_match(grid, tmp_path, capsys):
    """A config.json from before --minigrid-obs and obs_encoder_resolved existed (obs_encoder
    'onehot', then the default) is the run today's --obs-encoder auto would make on this env; one
    that used another encoder is not."""
    out = tmp_path / "old"
    shutil.copytree(grid, out)
    cfg_path = next((out / "runs").glob("*__lstm__1")) / "config.json"
    cfg = json.loads(cfg_path.read_text())
    assert (cfg["obs_encoder"], cfg["obs_encoder_resolved"]) == ("auto", "onehot")
    for k in ("minigrid_obs", "obs_encoder_resolved"):
        del cfg[k]
    cfg["obs_encoder"] = "onehot"
    cfg_path.write_text(json.dumps(cfg))
    assert compare.main(grid_argv(out, ("1", "2"), "4", "--dry-run")) == 0
    capsys.readouterr()
    cfg["obs_encoder"] = "cells"
    cfg_path.write_text(json.dumps(cfg))
    assert compare.main(grid_argv(out, ("1", "2"), "4", "--dry-run")) == 2
    err = capsys.readouterr().err
    assert "obs_encoder_resolved='cells'" in err and "'onehot'" in err


@pytest.fixture(scope="module")
def resumed(grid, tmp_path_factory):
    """Seeds 1-3: lstm 1, 2 finished (copied); lstm 3 missing; mlp 1 stopped after 2 updates
    (checkpoint, no result); mlp 2 a corrupt checkpoint (fails, the rest go on); mlp 3 a directory
    that never reached a checkpoint (removed and restarted). Returns (out, code, facts before)."""
    import train

    out = tmp_path_factory.mktemp("resumed") / "out"
    name = lambda bb, s: f"memrl-NoisyRecall-v0__{bb}__{s}"  # noqa: E731
    for s in (1, 2):
        shutil.copytree(grid / "runs" / name("lstm", s), out / "runs" / name("lstm", s))
    runs, _ = planning.plan(compare.Args(backbones=("lstm", "mlp"), env_ids=(ENV,), seeds=(1, 2, 3), total_timesteps=TOTAL,
                                        train_args=TRAIN_ARGS, out=str(out)))
    by_name = {r.name: r for r in runs}
    targs = planning.parse_train_argv(by_name[name("mlp", 1)].argv)
    targs.progress = False
    train.train(targs, on_update=lambda u: u >= 2)  # what a Ctrl-C after update 2 leaves
    partial = out / "runs" / name("mlp", 1)
    first_events = sorted(partial.glob("events.out.tfevents.*"))
    assert len(first_events) == 1 and not (partial / "result.json").exists()
    corrupt = out / "runs" / name("mlp", 2)
    corrupt.mkdir()
    (corrupt / "config.json").write_text(json.dumps(by_name[name("mlp", 2)].config))
    (corrupt / "checkpoint.pt").write_bytes(b"garbage")
    stale = out / "runs" / name("mlp", 3)
    stale.mkdir()
    (stale / "config.json").write_text("{}")

    finished = {p: p.stat().st_mtime_ns for s in (1, 2) for p in (out / "runs" / name("lstm", s)).iterdir()}
    first_mtime = first_events[0].stat().st_mtime_ns
    code = compare.main(grid_argv(out, ("1", "2", "3")))
    return out, code, finished, first_events, first_mtime


def test_interrupted_grid_resumes_only_what_is_missing(resumed):
    out, code, finished, first_events, first_mtime = resumed
    name = lambda bb, s: f"memrl-NoisyRecall-v0__{bb}__{s}"  # noqa: E731
    partial, stale = out / "runs" / name("mlp", 1), out / "runs" / name("mlp", 3)
    assert code == 1  # the corrupt run failed; the others went on

    # Only the four runs that needed it were started (one log each); the finished ones untouched.
    assert sorted(p.name for p in (out / "logs").iterdir()) == sorted(
        f"{name(b, s)}.log" for b, s in (("lstm", 3), ("mlp", 1), ("mlp", 2), ("mlp", 3)))
    assert {p: p.stat().st_mtime_ns for p in finished} == finished
    # mlp 1 was resumed (its first session's events kept, a second session added), not restarted.
    assert "--resume" in (out / "logs" / f"{name('mlp', 1)}.log").read_text().splitlines()[0]
    events = sorted(partial.glob("events.out.tfevents.*"))
    assert len(events) == 2 and events[0] == first_events[0] and events[0].stat().st_mtime_ns == first_mtime
    rows = {(r["backbone"], r["seed"]): r for r in read_csv(out / "results.csv")}
    assert rows[("mlp", "1")]["status"] == "finished" and int(rows[("mlp", "1")]["steps"]) == TOTAL
    result = json.loads((partial / "result.json").read_text())
    # Wall time summed over the two sessions, as train.py's own clock does (the >= 5 s between
    # them, a new process importing torch, is not counted).
    assert float(rows[("mlp", "1")]["wall_time_s"]) == pytest.approx(result["wall_time"], rel=0.2, abs=1.0)
    assert (rows[("mlp", "2")]["status"], rows[("mlp", "2")]["exit_code"]) == ("failed", "2")
    assert rows[("mlp", "3")]["status"] == "finished" and json.loads((stale / "config.json").read_text())["seed"] == 3
    assert rows[("lstm", "3")]["status"] == "finished"
    summary = (out / "summary.md").read_text()
    assert f"- {name('mlp', 2)}: failed, exit 2" in summary and "| mlp | 2/3 |" in summary


# ----------------------------------------------------------------------------- the command line


@pytest.mark.parametrize("extra,match", [
    (["--backbones", "transformer"], r"^error: unknown backbone 'transformer'; choose one of: .*lstm"),
    (["--train-args=--seed 3"], r"^error: --train-args must not contain --seed: compare.py sets it"),
    (["--train-args", "--view-size 5 --seed 3"], r"^error: --train-args must not contain --seed: compare.py sets it"),
    (["--train-args=--num-envs many"], r"^error: --train-args: Error parsing --num-envs"),
    (["--env-ids", "NoSuch-v0"], r"^error: unknown env id 'NoSuch-v0'"),
    (["--threshold", "x=y"], r"^error: --threshold 'x=y' is not ENV=VALUE"),
    # Option values, not only names, are checked before anything trains (the backbone is built once).
    (["--backbones", "mru:kind=nope"], r"^error: --backbones 'mru:kind=nope': unknown MRU kind 'nope'; choose one of: .*ldu"),
    (["--backbones", "lstm", "mlstm:num_heads=3"], r"^error: --backbones 'mlstm:num_heads=3': .*not divisible by num_heads 3"),
    (["--train-args=--learning-rate -1"], r"^error: --learning-rate must be > 0"),
    (["--threads-per-run", "-1"], r"^error: --threads-per-run must be >= 0 \(0: cores // jobs\), got -1"),
    (["--train-args=--torch-threads 2"], r"^error: --train-args must not contain --torch-threads: .*--threads-per-run"),
    (["--reference", "gru"], r"^error: --reference 'gru' is not a backbone of this grid; choose one of: lstm$"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, extra, match):
    import re

    out = tmp_path / "out"
    code = compare.main(["--env-ids", ENV, "--backbones", "lstm", "--out", str(out), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and re.search(match, err[0]), err
    assert not out.exists()


def test_threads_per_run(tmp_path, capsys, monkeypatch):
    """One torch thread per run unless --threads-per-run says otherwise; 0 shares the cores among --jobs."""
    import experiments.grid

    monkeypatch.setattr(experiments.grid, "cores", lambda: 4)
    for extra, threads in ((["--jobs", "1"], 1), (["--jobs", "1", "--threads-per-run", "3"], 3),
                           (["--jobs", "1", "--threads-per-run", "0"], 4), (["--jobs", "2", "--threads-per-run", "0"], 2)):
        argv = ["--env-ids", ENV, "--backbones", "lstm", "--seeds", "1", "--out", str(tmp_path / "o"), "--dry-run"]
        assert compare.main([*argv, *extra]) == 0
        out, err = capsys.readouterr()
        assert f"--torch-threads {threads}\n" in out and f"{threads} torch thread(s) each" in err, (extra, out, err)


def test_resumed_noisy_recall_accuracy_stays_a_fraction(resumed):
    out = resumed[0]
    acc = rundata.load_scalars(out / "runs" / "memrl-NoisyRecall-v0__mlp__1")[rundata.ACCURACY_TAG][1]
    assert np.all((0.0 <= acc) & (acc <= 1.0)), acc.max()


# ----------------------------------------------------------------------------- two compare.py on one --out


def test_a_run_claimed_elsewhere_is_skipped_and_reported_as_running(tmp_path, capsys):
    out = tmp_path / "out"
    held = out / "runs" / "memrl-NoisyRecall-v0__mlp__1"
    fd = executors.claim(held)  # what another compare.py training that run holds
    try:
        code = compare.main(grid_argv(out, ("1",), "2"))
        err = capsys.readouterr().err
        assert code == 0, err
        assert "memrl-NoisyRecall-v0__mlp__1: running elsewhere" in err and "FAILED" not in err
        rows = {r["backbone"]: r for r in read_csv(out / "results.csv")}
        assert rows["mlp"]["status"] == "running" and rows["lstm"]["status"] == "finished"
        assert not held.exists() and not (out / "logs" / f"{held.name}.log").exists()
        assert f"- {held.name}: running" in (out / "summary.md").read_text()
    finally:
        os.close(fd)
    # Released: the next command trains it (and leaves the finished one alone).
    assert compare.main(grid_argv(out, ("1",), "2")) == 0
    assert [r["status"] for r in read_csv(out / "results.csv")] == ["finished", "finished"]


def test_two_compares_on_one_out_share_the_grid(tmp_path):
    """Today's race: both plan the same runs and start them; every run is trained by exactly one
    of them (one command in its log, one events file), neither reports a failure, and the report
    counts a run the other process finished as finished."""
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "compare.py"), *grid_argv(out, ("1", "2"), "1")]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT) for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    errs = [e for _, e in results]
    assert [p.returncode for p in procs] == [0, 0], errs
    assert not any("FAILED" in e or "Traceback" in e for e in errs), errs
    names = [f"memrl-NoisyRecall-v0__{b}__{s}" for b in ("lstm", "mlp") for s in (1, 2)]
    for name in names:
        log = (out / "logs" / f"{name}.log").read_text()
        assert sum(ln.startswith("# ") for ln in log.splitlines()) == 1 and "Error" not in log, log
        assert len(list((out / "runs" / name).glob("events.out.tfevents.*"))) == 1
        assert (out / "runs" / name / "result.json").exists()
    assert compare.main(["--out", str(out), "--report-only", "--resamples", "2000"]) == 0
    assert [r["status"] for r in read_csv(out / "results.csv")] == ["finished"] * 4


# ----------------------------------------------------------------------------- every cell of summary.md, recomputed

FRAC, SMOOTH, RESAMPLES = 0.1, 10, 2000


RLIABLE = "Aggregate over runs and envs (rliable)"


def table_rows(summary: str) -> dict[tuple[str, str], list[str]]:
    """{(section, backbone): cells} for every table row of summary.md."""
    rows, section = {}, None
    for line in summary.splitlines():
        if line.startswith("## "):
            section = line[3:]
        elif section == RLIABLE:  # checked by tests/test_rliable_report.py
            continue
        elif line.startswith("| ") and not line.startswith("| backbone |"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[(section, cells[0])] = cells[1:]
    return rows


def final_of(steps: np.ndarray, values: np.ndarray, total: int) -> float:
    sel = values[steps > total * (1 - FRAC)]
    return float(sel.mean()) if sel.size else float(values[-1])


def first_reach(steps: np.ndarray, values: np.ndarray, thr: float) -> float:
    w = min(SMOOTH, len(values))
    for i in range(w - 1, len(values)):
        if np.mean(values[i - w + 1 : i + 1]) >= thr:
            return float(steps[i])
    return math.inf


def interquartile_mean(x) -> float:
    x = np.sort(np.asarray(x, dtype=float))
    k = int(0.25 * len(x))
    return float(x[k : len(x) - k].mean())


def percentile_ci(x) -> tuple[float, float]:
    from scipy.stats import bootstrap

    r = bootstrap((np.asarray(x, dtype=float),), np.mean, confidence_level=0.95, n_resamples=RESAMPLES, method="percentile",
                  rng=np.random.default_rng(0))
    return float(r.confidence_interval.low), float(r.confidence_interval.high)


def check_summary(summary: str, rows: list[dict], curves: dict[tuple[str, str, int], dict], score_lo: dict[str, float]) -> dict:
    """Recompute each cell of summary.md: finals from the events (`curves`: (env, backbone, seed) ->
    {tag: (steps, values)}), checked against results.csv; mean, IQM, 95% CI, steps to threshold
    (median over finished seeds, never = infinity) and reached counts; the aggregate over envs.
    Returns {(env, backbone): finals} for the caller's own checks."""
    table = table_rows(summary)
    seen, finals_by = set(), {}
    norm: dict[str, dict[int, list[float]]] = {}
    envs = list(dict.fromkeys(r["env"] for r in rows))
    for env in envs:
        env_rows = [r for r in rows if r["env"] == env]
        tag = "charts/accuracy" if any("charts/accuracy" in curves.get((env, r["backbone"], int(r["seed"])), {}) for r in env_rows) else "charts/episodic_return"
        thr = float(env_rows[0]["threshold"])
        for bb in dict.fromkeys(r["backbone"] for r in env_rows):
            group = [r for r in env_rows if r["backbone"] == bb]
            done = [r for r in group if r["status"] == "finished"]
            finals, returns, reach = [], [], []
            for r in done:
                c = curves[(env, bb, int(r["seed"]))]
                total = int(r["steps"])
                v = final_of(*c[tag], total)
                col = "final_accuracy" if tag == "charts/accuracy" else "final_return"
                assert float(r[col]) == pytest.approx(v, abs=1e-4), (env, bb, r["seed"])
                finals.append(v)
                returns.append(final_of(*c["charts/episodic_return"], total))
                reach.append(first_reach(*c[tag], thr))
                step_cell = "" if math.isinf(reach[-1]) else str(int(reach[-1]))
                assert r["steps_to_threshold"] == step_cell
                norm.setdefault(bb, {}).setdefault(int(r["seed"]), []).append((v - score_lo[env]) / (1 - score_lo[env]))
            finals_by[(env, bb)] = finals
            cells = table[(env, bb)]
            seen.add((env, bb))
            lo, hi = percentile_ci(finals)
            med = float(np.median(reach))
            want = [f"{len(done)}/{len(group)}", f"{np.mean(finals):.3f}", f"{interquartile_mean(finals):.3f}",
                    f"[{lo:.3f}, {hi:.3f}]", f"{int(med):,}" if math.isfinite(med) else "not reached",
                    f"{sum(math.isfinite(x) for x in reach)}/{len(done)}"]
            if tag == "charts/accuracy":
                want.append(f"{np.mean(returns):.3f}")
            assert cells == want, (env, bb, cells, want)
    if len(envs) > 1:
        for bb, per_seed in norm.items():
            seed_means = [float(np.mean(v)) for v in per_seed.values() if len(v) == len(envs)]
            lo, hi = percentile_ci(seed_means)
            every = [x for v in per_seed.values() for x in v]
            want = [str(len(seed_means)), f"{np.mean(seed_means):.3f}", f"[{lo:.3f}, {hi:.3f}]", f"{interquartile_mean(every):.3f}"]
            assert table[("Aggregate over envs", bb)] == want, (bb, table[("Aggregate over envs", bb)], want)
            seen.add(("Aggregate over envs", bb))
    assert seen == set(table), set(table) - seen  # no row left unchecked
    return finals_by


def events_curves(run_dir: Path) -> dict:
    """Every scalar of a run, read with TensorBoard's own reader (not compare's)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    out = {}
    for tag in acc.Tags()["scalars"]:
        ev = sorted(acc.Scalars(tag), key=lambda e: e.step)
        out[tag] = (np.array([e.step for e in ev]), np.array([e.value for e in ev], dtype=float))
    return out


def test_tiny_grid_summary_every_cell(grid):
    rows = read_csv(grid / "results.csv")
    curves = {(r["env"], r["backbone"], int(r["seed"])): events_curves(Path(r["run_dir"])) for r in rows}
    check_summary((grid / "summary.md").read_text(), rows, curves, {ENV: 1 / 3})


def synthetic_runs() -> list:
    """2 envs x 2 backbones x 5 seeds of logged curves (100 points each) whose final scores differ
    per seed, with an outlier seed so the IQM is not the mean; one run failed."""
    rng = np.random.default_rng(7)
    steps = np.arange(1, 101) * 64
    plateau = {"good": [0.95, 0.9, 0.97, 0.4, 0.92], "weak": [0.3, 0.55, 0.6, 0.35, 0.62]}
    runs = []
    for env in (ENV, "MiniGrid-MemoryS9-v0"):
        for bb, levels in plateau.items():
            for seed, p in enumerate(levels, start=1):
                rise = np.clip(steps / (2000 + 900 * seed), 0, 1)
                score = np.clip(p * rise + rng.normal(0, 0.03, steps.size), 0, 1)
                curves = {"charts/episodic_return": (steps, score * 0.9 + 0.05), "charts/SPS": (steps, np.full(steps.size, 500.0))}
                if env == ENV:
                    curves["charts/accuracy"] = (steps, score)
                failed = env == ENV and bb == "weak" and seed == 5
                runs.append(rundata.RunData(f"{env}__{bb}__{seed}", env, bb, seed, None, "failed" if failed else "finished",
                                            1 if failed else None, {"vocab_size": 8, "noise_vocab_size": 2}, curves,
                                            int(steps[-1]), 10.0, 640.0))
    return runs


def test_synthetic_summary_every_cell_iqm_and_ci(tmp_path):
    from types import SimpleNamespace

    from experiments import report

    runs = synthetic_runs()
    settings = SimpleNamespace(final_frac=FRAC, smooth=SMOOTH, confidence=0.95, resamples=RESAMPLES)
    thresholds = {ENV: 0.5, "MiniGrid-MemoryS9-v0": 0.9}
    report.build_report(tmp_path, runs, thresholds, settings, ["good", "weak"])
    rows = read_csv(tmp_path / "results.csv")
    curves = {(r.env_id, r.backbone, r.seed): r.curves for r in runs}
    summary = (tmp_path / "summary.md").read_text()
    finals = check_summary(summary, rows, curves, {ENV: 1 / 3, "MiniGrid-MemoryS9-v0": 0.0})
    # The grid is one where the checks bite: IQM and mean differ in the table's digits, and a CI
    # over every logged point (not one final per seed) would be a different interval.
    for (env, bb), x in finals.items():
        assert len(x) >= 4 and f"{interquartile_mean(x):.3f}" != f"{np.mean(x):.3f}", (env, bb)
        logged = np.concatenate([r.curves["charts/accuracy" if env == ENV else "charts/episodic_return"][1]
                                 for r in runs if r.env_id == env and r.backbone == bb and r.status == "finished"])
        assert [f"{v:.3f}" for v in percentile_ci(logged)] != [f"{v:.3f}" for v in percentile_ci(x)]
    assert "- memrl/NoisyRecall-v0__weak__5: failed, exit 1" in summary
