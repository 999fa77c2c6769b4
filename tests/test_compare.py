"""compare.py: statistics against hand-computed cases, the job runner's signals and failures, a
tiny real grid producing every output, resume of an interrupted grid, and the CLI's errors."""

from __future__ import annotations

import csv
import json
import shutil
import signal
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
])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, extra, match):
    import re

    out = tmp_path / "out"
    code = compare.main(["--env-ids", ENV, "--backbones", "lstm", "--out", str(out), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and re.search(match, err[0]), err
    assert not out.exists()


def test_resumed_noisy_recall_accuracy_stays_a_fraction(resumed):
    out = resumed[0]
    acc = rundata.load_scalars(out / "runs" / "memrl-NoisyRecall-v0__mlp__1")[rundata.ACCURACY_TAG][1]
    assert np.all((0.0 <= acc) & (acc <= 1.0)), acc.max()
