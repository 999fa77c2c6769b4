"""Compare memory backbones: a grid of train.py runs (envs x backbones x seeds) -> table, summary, plots.

    python compare.py --backbones lstm gru mlp --env-ids MiniGrid-MemoryS9-v0 --seeds 1 2 3 --jobs 2
    python compare.py --backbones mlstm mlstm-orth 'mru:kind=ldu' --env-ids memrl/NoisyRecall-v0 \\
        --train-args "--seq-len 64 --num-envs 32" --out compare_out/recall
    python compare.py --out compare_out/recall --report-only      # rebuild the outputs, no training

Each run is an ordinary train.py run directory, DIR/runs/<env>__<backbone>__<seed>, so
`tensorboard --logdir DIR/runs` shows them side by side and an interrupted grid resumes: running
the same command again skips finished runs (result.json), resumes unfinished ones from their
checkpoint (train.py --resume) and restarts runs that never reached a first checkpoint. Ctrl-C
forwards one SIGINT to every child (each checkpoints after its current update); a second Ctrl-C
stops them at once.

Outputs in DIR: results.csv (one row per run), summary.md (per env x backbone: mean, IQM and a
95% bootstrap CI over seeds, steps to a threshold), curves_<env>.png (mean and CI band per
backbone) and curves_aggregate.png (normalized scores averaged over envs). Every number is read
from the runs' TensorBoard events; child output goes to DIR/logs/<run>.log.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parent
TRAIN_PY = ROOT / "train.py"

# Flags compare.py sets itself for every run; passing them through --train-args would fight it.
OWN_FLAGS = {
    "--env-id": "--env-ids", "--backbone": "--backbones", "--seed": "--seeds",
    "--total-timesteps": "--total-timesteps", "--runs-dir": "--out", "--run-name": "(derived)",
    "--resume": "(automatic)", "--torch-threads": "--jobs", "--memory-options": "--backbones NAME:key=value,...",
}
# Config keys that may differ between the grid's intent and an existing run without making it a
# different experiment (where it lives, how many threads it used, whether it drew a progress bar).
CONFIG_IGNORED = {"runs_dir", "run_name", "resume", "torch_threads", "progress"}

RETURN_TAG = "charts/episodic_return"
ACCURACY_TAG = "charts/accuracy"
SPS_TAG = "charts/SPS"
EVAL_RETURN_TAG = "eval/episodic_return"
EVAL_ACCURACY_TAG = "eval/accuracy"


@dataclass
class Args:
    backbones: tuple[str, ...] = ("mlp", "gru", "lstm", "mlstm", "mlstm-orth", "mru")
    """backbones to compare: NAME or NAME:key=value,key=value (its --memory-options), e.g. mru:kind=ldu,num_heads=4"""
    env_ids: tuple[str, ...] = ("MiniGrid-MemoryS9-v0",)
    """env ids (anything train.py --env-id accepts)"""
    seeds: tuple[int, ...] = (1, 2, 3)
    """seeds: one run per env x backbone x seed"""
    total_timesteps: int = 300_000
    """env steps per run"""
    train_args: str = ""
    """any other train.py flags for every run, as one quoted string: --train-args "--num-envs 8 --seq-len 64" (python train.py --help lists them)"""
    out: str = "compare_out"
    """output directory: runs/, logs/, results.csv, summary.md, curves_*.png"""
    jobs: int = 0
    """runs trained at once, each a train.py process with max(1, cores // jobs) torch threads; 0: one per core"""
    threshold: tuple[str, ...] = ()
    """steps-to-threshold levels as ENV=VALUE (or one VALUE for every env); defaults: MiniGrid 0.9 return, NoisyRecall 0.5 accuracy, other envs none"""
    report_only: bool = False
    """rebuild the outputs from every run already in --out, training nothing (--backbones then only orders the tables)"""
    dry_run: bool = False
    """print what would run (new, resume, restart, skip) and the commands, then stop"""
    final_frac: float = 0.1
    """'final' return/accuracy = mean of the values logged in the last final_frac of each run's steps"""
    smooth: int = 10
    """steps to threshold: first logged point where the trailing mean of this many logged points reaches it"""
    confidence: float = 0.95
    """confidence level of the bootstrap intervals"""
    resamples: int = 10_000
    """bootstrap resamples for the summary's intervals (curves use min(this, 1000) per grid point)"""


class UsageError(Exception):
    """Bad input: one line on stderr, exit status 2, nothing run."""


# ----------------------------------------------------------------------------- statistics


def iqm(x: Sequence[float]) -> float:
    """Interquartile mean: the mean of the middle 50% (scipy.stats.trim_mean(x, 0.25))."""
    from scipy import stats

    return float(stats.trim_mean(np.asarray(x, dtype=float), 0.25))


@dataclass
class Interval:
    low: float
    high: float
    note: str = ""  # why the interval is degenerate, when it is


def bootstrap_ci(x: Sequence[float], confidence: float = 0.95, n_resamples: int = 10_000, seed: int = 0) -> Interval:
    """Percentile bootstrap CI of the mean over seeds (scipy.stats.bootstrap).

    Percentile, not scipy's default BCa: with 3-10 seeds BCa's acceleration estimate is unstable
    and undefined on ties (rliable uses percentile intervals too). n = 1 or all-equal samples
    have no spread to resample: the interval is the value itself, and ``note`` says so.
    """
    from scipy import stats

    a = np.asarray(x, dtype=float)
    if a.size == 0:
        return Interval(math.nan, math.nan, "no runs")
    if a.size == 1:
        return Interval(float(a[0]), float(a[0]), "n=1: CI = the value")
    if np.all(a == a[0]):
        return Interval(float(a[0]), float(a[0]), "all seeds equal: CI = the value")
    res = stats.bootstrap((a,), np.mean, confidence_level=confidence, n_resamples=n_resamples,
                          method="percentile", rng=np.random.default_rng(seed))
    return Interval(float(res.confidence_interval.low), float(res.confidence_interval.high))


def curve_band(curves: np.ndarray, confidence: float = 0.95, n_resamples: int = 1000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and percentile-bootstrap CI band over seeds of resampled curves [n_seeds, G]."""
    from scipy import stats

    mean = curves.mean(axis=0)  # [G]
    if curves.shape[0] < 2:
        return mean, mean.copy(), mean.copy()
    res = stats.bootstrap((curves,), np.mean, axis=0, confidence_level=confidence, n_resamples=n_resamples,
                          method="percentile", vectorized=True, rng=np.random.default_rng(seed))
    return mean, res.confidence_interval.low, res.confidence_interval.high


def trailing_mean(values: np.ndarray, window: int) -> np.ndarray:
    """m[i] = mean(values[i-window+1 : i+1]); NaN where fewer than `window` points exist yet."""
    v = np.asarray(values, dtype=float)
    out = np.full(v.shape, np.nan)
    if window < 1 or v.size < window:
        return out
    c = np.concatenate([[0.0], np.cumsum(v)])
    out[window - 1 :] = (c[window:] - c[:-window]) / window
    return out


def steps_to_threshold(steps: np.ndarray, values: np.ndarray, threshold: float, window: int) -> float | None:
    """First logged step at which the trailing mean of `window` points (fewer if the run logged
    fewer) reaches `threshold`; None if it never does."""
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return None
    m = trailing_mean(v, min(window, v.size))
    hit = np.nonzero(m >= threshold)[0]
    return float(steps[hit[0]]) if hit.size else None


def resample(steps: np.ndarray, values: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """A curve logged at its own steps, linearly interpolated onto a common step grid (inside its
    range; callers choose the grid inside every curve's range, so nothing is extrapolated)."""
    return np.interp(grid, steps, values)


def common_grid(curves: Sequence[tuple[np.ndarray, np.ndarray]], points: int = 200) -> np.ndarray | None:
    """A step grid inside every curve's logged range: [max of first steps, min of last steps]."""
    if not curves or any(len(s) == 0 for s, _ in curves):
        return None
    lo = max(float(s[0]) for s, _ in curves)
    hi = min(float(s[-1]) for s, _ in curves)
    if hi < lo:
        return None
    if hi == lo:
        return np.array([lo])
    return np.linspace(lo, hi, points)


# ----------------------------------------------------------------------------- the grid


@dataclass(frozen=True)
class Backbone:
    spec: str  # as given: mru:kind=ldu,num_heads=4
    name: str  # mru
    options: tuple[str, ...]  # ("kind=ldu", "num_heads=4"): train.py --memory-options

    @property
    def display(self) -> str:
        """Canonical form for tables: mru:kind=ldu,num_heads=4 (what config.json gives back)."""
        return self.name + (":" + ",".join(self.options) if self.options else "")

    @property
    def label(self) -> str:
        """File-name form used in run names: mru+kind=ldu+num_heads=4 (no ':' or ',')."""
        return "+".join((self.name, *self.options))


def parse_backbone(spec: str) -> Backbone:
    """'mru:kind=ldu,num_heads=4' -> Backbone; unknown names/options raise UsageError."""
    import memory

    name, _, rest = spec.partition(":")
    opts = tuple(s.strip() for s in rest.split(",") if s.strip())
    if name not in memory.names():
        raise UsageError(f"unknown backbone {name!r}; choose one of: {', '.join(memory.names())}")
    try:
        memory.parse_options(name, list(opts))
    except ValueError as e:
        raise UsageError(str(e)) from None
    return Backbone(spec, name, opts)


def canonical(spec: str) -> str:
    """'mru: kind=ldu, order=8' -> 'mru:kind=ldu,order=8' (Backbone.display, without validation)."""
    name, _, rest = spec.partition(":")
    opts = [o.strip() for o in rest.split(",") if o.strip()]
    return name + (":" + ",".join(opts) if opts else "")


def env_label(env_id: str) -> str:
    """The env part of a run name, as train.py writes it."""
    return env_id.replace("/", "-").replace(":", "-")


def run_name(env_id: str, backbone: Backbone, seed: int) -> str:
    return f"{env_label(env_id)}__{backbone.label}__{seed}"


def default_threshold(env_id: str) -> float | None:
    base = env_id.split(":")[-1]
    if base.startswith("MiniGrid-Memory"):
        return 0.9  # REFERENCES.md section 8: the return a solved MemoryS9 run holds
    if base == "memrl/NoisyRecall-v0":
        # 4x chance at the default vocab (8 keys): clearly remembering, yet within RL's reach on a
        # CPU in an hour; the supervised probe is where near-perfect recall is measured.
        return 0.5
    return None


def parse_thresholds(items: Sequence[str], env_ids: Sequence[str]) -> dict[str, float | None]:
    out = {e: default_threshold(e) for e in env_ids}
    for item in items:
        env, sep, value = item.rpartition("=")
        try:
            v = float(value)
        except ValueError:
            raise UsageError(f"--threshold {item!r} is not ENV=VALUE or VALUE (a number)") from None
        if not sep:
            out = {e: v for e in out}
        elif env in out:
            out[env] = v
        else:
            raise UsageError(f"--threshold {item!r} names env {env!r}, which is not in --env-ids ({', '.join(env_ids)})")
    return out


@dataclass
class Run:
    env_id: str
    backbone: Backbone
    seed: int
    name: str
    run_dir: Path
    argv: list[str]  # train.py flags for a fresh start
    config: dict  # the resolved train.Args it should have (as config.json stores it)
    action: str = "new"  # new | skip (finished) | resume | restart


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def parse_train_args(text: str) -> list[str]:
    try:
        tokens = shlex.split(text)
    except ValueError as e:
        raise UsageError(f"--train-args is not a valid shell string: {e}") from None
    for tok in tokens:
        flag = tok.split("=", 1)[0]
        if flag in OWN_FLAGS:
            raise UsageError(f"--train-args must not contain {flag}: compare.py sets it (use {OWN_FLAGS[flag]})")
    return tokens


def parse_train_argv(argv: list[str]):
    """train.Args from train.py flags via train.py's own tyro parser; a parse error becomes one
    line (tyro prints a boxed, multi-line message)."""
    import contextlib
    import io

    import tyro

    import train

    buf = io.StringIO()
    try:
        with contextlib.redirect_stderr(buf), contextlib.redirect_stdout(buf):
            return tyro.cli(train.Args, args=argv)
    except SystemExit:
        lines = [ln.strip(" -\u2500\u2502\u256d\u256e\u2570\u256f") for ln in buf.getvalue().splitlines()]
        lines = [ln for ln in lines if ln]
        msg = lines[1] if len(lines) > 1 else (lines[0] if lines else "could not parse")
        raise UsageError(f"--train-args: {msg}") from None


def plan(args: Args) -> tuple[list[Run], int]:
    """Validate the grid and decide what each run needs. Returns (runs, threads per run)."""
    import torch

    import train

    if args.total_timesteps < 1:
        raise UsageError(f"--total-timesteps must be >= 1, got {args.total_timesteps}")
    if args.jobs < 0:
        raise UsageError(f"--jobs must be >= 0 (0: one per core), got {args.jobs}")
    if not args.backbones or not args.env_ids or not args.seeds:
        raise UsageError("--backbones, --env-ids and --seeds each need at least one value")
    for what, values in (("--backbones", args.backbones), ("--env-ids", args.env_ids), ("--seeds", args.seeds)):
        if len(set(values)) != len(values):
            raise UsageError(f"{what} has duplicates: {' '.join(map(str, values))}")
    backbones = [parse_backbone(b) for b in args.backbones]
    extra = parse_train_args(args.train_args)
    jobs = args.jobs or cores()
    threads = max(1, cores() // jobs)
    runs_dir = Path(args.out) / "runs"

    runs: list[Run] = []
    checked_envs: set[str] = set()
    for env_id in args.env_ids:
        for bb in backbones:
            for seed in args.seeds:
                name = run_name(env_id, bb, seed)
                argv = ["--env-id", env_id, "--backbone", bb.name, "--seed", str(seed),
                        "--total-timesteps", str(args.total_timesteps), "--runs-dir", str(runs_dir),
                        "--run-name", name, "--torch-threads", str(threads), *extra]
                if bb.options:
                    argv += ["--memory-options", *bb.options]
                targs = parse_train_argv(argv)
                try:
                    train.validate(targs)
                    if env_id not in checked_envs:  # an unknown id or bad env flag fails here, once
                        train.make_env(targs, 1, torch.device("cpu")).close()
                        checked_envs.add(env_id)
                except train.UsageError as e:
                    raise UsageError(str(e)) from None
                except ValueError as e:
                    raise UsageError(str(e)) from None
                config = json.loads(json.dumps(dataclasses.asdict(targs)))
                runs.append(Run(env_id, bb, seed, name, runs_dir / name, argv, config))

    for run in runs:
        d = run.run_dir
        if (d / "result.json").exists() or (d / "checkpoint.pt").exists():
            check_config(run)
            run.action = "skip" if (d / "result.json").exists() else "resume"
        elif d.exists():
            run.action = "restart"  # never got past its first checkpoint: nothing to keep
    return runs, threads


def check_config(run: Run) -> None:
    """An existing run must be the experiment the grid asks for, or its numbers would mix in."""
    path = run.run_dir / "config.json"
    try:
        have = json.loads(path.read_text())
    except (OSError, ValueError):
        raise UsageError(f"{run.run_dir} has no readable config.json; move it away or use another --out") from None
    diff = [k for k in sorted(set(have) | set(run.config)) if k not in CONFIG_IGNORED and have.get(k) != run.config.get(k)]
    if diff:
        k = diff[0]
        raise UsageError(
            f"{run.run_dir} was made with {k}={have.get(k)!r}, this grid asks for {run.config.get(k)!r}"
            f" ({len(diff)} setting(s) differ: {', '.join(diff)}); use another --out or remove that run"
        )


# ----------------------------------------------------------------------------- running


@dataclass
class Job:
    name: str
    argv: list[str]  # the whole command
    log: Path
    env: dict[str, str] | None = None


def run_jobs(jobs: list[Job], parallel: int, say: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True), poll: float = 0.2) -> tuple[dict[str, int], bool]:
    """Run the jobs, at most `parallel` at once. Returns ({name: exit status} for those that ran,
    interrupted). A failing job doesn't stop the others.

    Children get their own session, so a terminal's Ctrl-C reaches only this process, which
    forwards exactly one SIGINT per signal it gets: train.py checkpoints on the first and exits at
    once on the second (a child sharing our process group would get the terminal's SIGINT *and*
    ours, i.e. two). After a signal no new job starts."""
    pending = list(jobs)
    running: dict[str, tuple[subprocess.Popen, object, float]] = {}
    codes: dict[str, int] = {}
    signals = {"count": 0}

    def forward(signum, _frame):
        signals["count"] += 1
        say(f"compare: got signal {signum}; " + ("asking runs to checkpoint and stop" if signals["count"] == 1 else "stopping runs now"))
        for proc, _, _ in list(running.values()):
            try:
                proc.send_signal(signal.SIGINT)
            except ProcessLookupError:
                pass

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    total, started = len(jobs), 0
    try:
        while pending or running:
            while pending and len(running) < parallel and not signals["count"]:
                job = pending.pop(0)
                job.log.parent.mkdir(parents=True, exist_ok=True)
                fh = open(job.log, "a")
                fh.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(job.argv)}\n")
                fh.flush()
                proc = subprocess.Popen(job.argv, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
                                        env=job.env, start_new_session=True, cwd=ROOT)
                started += 1
                running[job.name] = (proc, fh, time.time())
                say(f"[{started}/{total}] started {job.name}")
            if signals["count"] and not running:
                break
            for name, (proc, fh, t0) in list(running.items()):
                rc = proc.poll()
                if rc is None:
                    continue
                fh.close()
                del running[name]
                codes[name] = rc
                if rc == 0:
                    status = "done"
                elif signals["count"]:
                    status = f"stopped (exit {rc}; train.py checkpoints on the first signal)"
                else:
                    status = f"FAILED (exit {rc}; see {jobs_log(jobs, name)})"
                say(f"  {name}: {status} in {time.time() - t0:.0f} s")
            time.sleep(poll)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return codes, bool(signals["count"])


def jobs_log(jobs: list[Job], name: str) -> Path | None:
    return next((j.log for j in jobs if j.name == name), None)


def train_command(run: Run) -> list[str]:
    if run.action == "resume":
        # The thread count is this grid's (--jobs), not the one the run started with.
        i = run.argv.index("--torch-threads")
        return [sys.executable, str(TRAIN_PY), "--resume", str(run.run_dir), *run.argv[i : i + 2]]
    return [sys.executable, str(TRAIN_PY), *run.argv]


# ----------------------------------------------------------------------------- reading runs


Curve = tuple[np.ndarray, np.ndarray]  # (steps [N], values [N])


@dataclass
class RunData:
    """One run, as its directory and TensorBoard events tell it."""

    name: str
    env_id: str
    backbone: str  # the spec label, e.g. lstm or mru:kind=ldu
    seed: int
    run_dir: Path | None
    status: str  # finished | unfinished | failed | interrupted | missing
    returncode: int | None = None
    config: dict = field(default_factory=dict)
    curves: dict[str, Curve] = field(default_factory=dict)
    steps: int | None = None
    wall_time: float | None = None
    sps: float | None = None


def load_scalars(path: Path) -> dict[str, Curve]:
    """Every scalar tag of an events file or run directory, all points (size_guidance 0: the
    default keeps a 10,000-point reservoir sample). A resumed run's events are merged by
    TensorBoard's own purge logic."""
    import logging

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # A resumed run's purge of its pre-checkpoint tail is expected, not worth a warning per read.
    logging.getLogger("tensorboard").setLevel(logging.ERROR)
    acc = EventAccumulator(str(path), size_guidance={"scalars": 0})
    acc.Reload()
    out = {}
    for tag in acc.Tags().get("scalars", []):
        ev = acc.Scalars(tag)
        steps = np.array([e.step for e in ev], dtype=np.int64)
        vals = np.array([e.value for e in ev], dtype=float)
        order = np.argsort(steps, kind="stable")
        out[tag] = (steps[order], vals[order])
    return out


def training_wall_time(run_dir: Path, batch: int) -> float | None:
    """Training seconds summed over the run's sessions (one events file per train.py process).

    charts/SPS is cumulative within a session, (step - session start step) / seconds, and a
    session's first update logs at start + batch, so a session trained (last step - first step +
    batch) / last SPS seconds. Summing sessions leaves out the time a run sat interrupted."""
    total, any_session = 0.0, False
    for f in sorted(run_dir.glob("events.out.tfevents.*")):
        sps = load_scalars(f).get(SPS_TAG)
        if sps is None or len(sps[0]) == 0 or sps[1][-1] <= 0:
            continue
        steps, vals = sps
        total += (float(steps[-1]) - float(steps[0]) + batch) / float(vals[-1])
        any_session = True
    return total if any_session else None


def read_run(run_dir: Path, name: str, env_id: str, backbone: str, seed: int, status: str | None = None, returncode: int | None = None) -> RunData:
    data = RunData(name, env_id, backbone, seed, run_dir, status or "missing", returncode)
    if not run_dir.is_dir():
        return data
    if status is None:
        data.status = "finished" if (run_dir / "result.json").exists() else "unfinished"
    try:
        data.config = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError):
        data.config = {}
    data.curves = load_scalars(run_dir)
    sps = data.curves.get(SPS_TAG)
    if sps is not None and len(sps[0]):
        data.steps = int(sps[0][-1])
        batch = int(data.config.get("num_envs", 0)) * int(data.config.get("num_steps", 0))
        if batch > 0:
            data.wall_time = training_wall_time(run_dir, batch)
            if data.wall_time:
                data.sps = data.steps / data.wall_time
    return data


def backbone_label_from_config(config: dict) -> str:
    opts = config.get("memory_options") or []
    return config.get("backbone", "?") + (":" + ",".join(opts) if opts else "")


def discover(out: Path) -> list[RunData]:
    """Every run directory under out/runs (for --report-only)."""
    runs = []
    for d in sorted((out / "runs").glob("*")):
        if not d.is_dir():
            continue
        try:
            cfg = json.loads((d / "config.json").read_text())
        except (OSError, ValueError):
            continue
        runs.append(read_run(d, d.name, cfg["env_id"], backbone_label_from_config(cfg), int(cfg["seed"])))
    return runs


# ----------------------------------------------------------------------------- tables and plots


def final_value(curve: Curve | None, total_steps: int | None, frac: float) -> float | None:
    """Mean of the points logged in the last `frac` of the run's steps (at least the last one)."""
    if curve is None or len(curve[0]) == 0:
        return None
    steps, vals = curve
    end = total_steps if total_steps is not None else int(steps[-1])
    sel = vals[steps > end * (1.0 - frac)]
    return float(sel.mean()) if sel.size else float(vals[-1])


def score_tag(runs: Sequence[RunData]) -> str:
    """The metric that says how well an env is solved: accuracy where the env logs it
    (NoisyRecall), else the episodic return."""
    return ACCURACY_TAG if any(ACCURACY_TAG in r.curves for r in runs) else RETURN_TAG


def score_range(env_id: str, runs: Sequence[RunData], tag: str) -> tuple[float, float]:
    """(chance-or-floor, ceiling) used to normalize an env's score to [0, 1] for the aggregate.
    MiniGrid Memory returns live in [0, 1]; NoisyRecall accuracy goes from chance (1 / keys) to
    1; any other env is scaled by the lowest and highest value its runs logged."""
    c = next((r.config for r in runs if r.config), {})
    if tag == ACCURACY_TAG and "vocab_size" in c:
        keys = (int(c["vocab_size"]) - int(c.get("noise_vocab_size", 0))) // 2
        return (1.0 / keys if keys > 0 else 0.0), 1.0
    if env_id.split(":")[-1].startswith("MiniGrid-Memory"):
        return 0.0, 1.0
    vals = np.concatenate([r.curves[tag][1] for r in runs if tag in r.curves] or [np.zeros(1)])
    lo, hi = float(vals.min()), float(vals.max())
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def fmt(x: float | None, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    return f"{x:.{digits}f}"


def fmt_steps(x: float | None) -> str:
    return "" if x is None else f"{int(x):,}"


CSV_FIELDS = ["env", "backbone", "seed", "status", "exit_code", "steps", "final_return", "final_accuracy",
              "eval_return", "eval_accuracy", "score_metric", "threshold", "steps_to_threshold",
              "wall_time_s", "sps", "run_dir"]


def build_report(out: Path, runs: list[RunData], thresholds: dict[str, float | None], args: Args, order: Sequence[str] = ()) -> None:
    """results.csv, summary.md and the curve PNGs from the runs' events. Backbones appear in
    `order` (the grid's --backbones), then any others alphabetically; then by seed."""
    rank = {b: i for i, b in enumerate(order)}
    runs = sorted(runs, key=lambda r: (r.env_id, rank.get(r.backbone, len(rank)), r.backbone, r.seed))
    by_env: dict[str, list[RunData]] = {}
    for r in runs:
        by_env.setdefault(r.env_id, []).append(r)
    rows = []
    for env_id, env_runs in by_env.items():
        tag = score_tag(env_runs)
        thr = thresholds.get(env_id, default_threshold(env_id))
        for r in env_runs:
            s = r.curves.get(tag)
            reach = steps_to_threshold(*s, thr, args.smooth) if (thr is not None and s is not None) else None
            ev_ret, ev_acc = r.curves.get(EVAL_RETURN_TAG), r.curves.get(EVAL_ACCURACY_TAG)
            rows.append({
                "env": env_id, "backbone": r.backbone, "seed": r.seed, "status": r.status,
                "exit_code": "" if r.returncode is None else r.returncode,
                "steps": "" if r.steps is None else r.steps,
                "final_return": fmt(final_value(r.curves.get(RETURN_TAG), r.steps, args.final_frac), 4),
                "final_accuracy": fmt(final_value(r.curves.get(ACCURACY_TAG), r.steps, args.final_frac), 4),
                "eval_return": fmt(float(ev_ret[1][-1]) if ev_ret else None, 4),
                "eval_accuracy": fmt(float(ev_acc[1][-1]) if ev_acc else None, 4),
                "score_metric": tag.split("/")[-1], "threshold": "" if thr is None else thr,
                "steps_to_threshold": "" if reach is None else int(reach),
                "wall_time_s": fmt(r.wall_time, 1), "sps": fmt(r.sps, 1),
                "run_dir": "" if r.run_dir is None else str(r.run_dir),
            })
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        w.writerows(rows)
    (out / "summary.md").write_text(summary_markdown(by_env, thresholds, args))
    plot_curves(out, by_env, thresholds, args)


def summary_markdown(by_env: dict[str, list[RunData]], thresholds: dict[str, float | None], args: Args) -> str:
    pct = f"{args.confidence:.0%}"
    lines = ["# Comparison", "",
             f"Final = mean of the values logged in the last {args.final_frac:.0%} of each run's steps. "
             f"Mean, IQM (interquartile mean, scipy.stats.trim_mean(x, 0.25)) and a {pct} percentile-bootstrap "
             f"CI of the mean (scipy.stats.bootstrap, {args.resamples} resamples) over the seeds of finished runs. "
             f"Steps to threshold: first logged step where the trailing mean of {args.smooth} logged points reaches "
             "the threshold; the median counts seeds that never reached it as never (so it exists only when more "
             "than half did). Every number is read from the runs' TensorBoard events.", ""]
    problems: list[str] = []
    agg: dict[str, dict[int, list[float]]] = {}
    for env_id, runs in by_env.items():
        tag = score_tag(runs)
        metric = tag.split("/")[-1].replace("episodic_", "")
        thr = thresholds.get(env_id, default_threshold(env_id))
        lo, hi = score_range(env_id, runs, tag)
        lines += [f"## {env_id}", "", f"Score: final {metric}" + (f"; threshold {thr:g} ({metric})" if thr is not None else "; no threshold") + ".", ""]
        head = f"| backbone | finished | {metric} mean | IQM | {pct} CI | steps to threshold (median) | reached |"
        if tag != RETURN_TAG:
            head += " return mean |"
        lines += [head, "|" + "---|" * (head.count("|") - 1)]
        notes = []
        for bb in dict.fromkeys(r.backbone for r in runs):
            group = [r for r in runs if r.backbone == bb]
            done = [r for r in group if r.status == "finished"]
            finals = [(r.seed, final_value(r.curves.get(tag), r.steps, args.final_frac)) for r in done]
            finals = [(s, v) for s, v in finals if v is not None]
            vals = [v for _, v in finals]
            for s, v in finals:
                agg.setdefault(bb, {}).setdefault(s, []).append((v - lo) / (hi - lo))
            ci = bootstrap_ci(vals, args.confidence, args.resamples)
            if ci.note and vals:
                notes.append(f"{bb}: {ci.note}")
            reach_txt, reached = "", ""
            if thr is not None and done:
                reach = [steps_to_threshold(*r.curves[tag], thr, args.smooth) if tag in r.curves else None for r in done]
                k = sum(x is not None for x in reach)
                reached = f"{k}/{len(done)}"
                med = np.median([math.inf if x is None else x for x in reach])
                reach_txt = fmt_steps(med) if math.isfinite(med) else "not reached"
            row = (f"| {bb} | {len(done)}/{len(group)} | {fmt(float(np.mean(vals)) if vals else None)} | "
                   f"{fmt(iqm(vals) if vals else None)} | {'' if not vals else f'[{fmt(ci.low)}, {fmt(ci.high)}]'} | "
                   f"{reach_txt} | {reached} |")
            if tag != RETURN_TAG:
                rets = [final_value(r.curves.get(RETURN_TAG), r.steps, args.final_frac) for r in done]
                rets = [x for x in rets if x is not None]
                row += f" {fmt(float(np.mean(rets)) if rets else None)} |"
            lines.append(row)
            for r in group:
                if r.status != "finished":
                    code = "" if r.returncode is None else f", exit {r.returncode}"
                    problems.append(f"- {r.name}: {r.status}{code}")
        if notes:
            lines += ["", "Notes: " + "; ".join(notes) + "."]
        lines.append("")
    if len(by_env) > 1 and agg:
        lines += ["## Aggregate over envs", "",
                  "Normalized score: 0 = chance (NoisyRecall accuracy) or zero return (MiniGrid Memory), 1 = perfect; "
                  "other envs scaled by the lowest and highest value their runs logged. Mean and CI over seeds of "
                  "each seed's mean over envs (seeds with every env finished); IQM over all env x seed runs.", "",
                  f"| backbone | seeds | mean | {pct} CI | IQM (runs) |", "|---|---|---|---|---|"]
        n_env = len(by_env)
        for bb, per_seed in agg.items():
            seed_means = [float(np.mean(v)) for v in per_seed.values() if len(v) == n_env]
            every = [x for v in per_seed.values() for x in v]
            ci = bootstrap_ci(seed_means, args.confidence, args.resamples)
            ci_txt = f"[{fmt(ci.low)}, {fmt(ci.high)}]" + (f" ({ci.note})" if ci.note and seed_means else "")
            lines.append(f"| {bb} | {len(seed_means)} | {fmt(float(np.mean(seed_means)) if seed_means else None)} | "
                         f"{ci_txt if seed_means else ''} | {fmt(iqm(every))} |")
        lines.append("")
    if problems:
        lines += ["## Runs not finished", "", *problems, ""]
    return "\n".join(lines)


def plot_curves(out: Path, by_env: dict[str, list[RunData]], thresholds: dict[str, float | None], args: Args) -> None:
    """curves_<env>.png per env and curves_aggregate.png; finished runs only."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_res = min(args.resamples, 1000)
    agg: dict[str, list[tuple[np.ndarray, np.ndarray, int]]] = {}  # backbone -> (grid, normalized curve, seed)
    for env_id, runs in by_env.items():
        tag = score_tag(runs)
        lo, hi = score_range(env_id, runs, tag)
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for bb in dict.fromkeys(r.backbone for r in runs):
            done = [r for r in runs if r.backbone == bb and r.status == "finished" and tag in r.curves and len(r.curves[tag][0])]
            grid = common_grid([r.curves[tag] for r in done])
            if grid is None:
                continue
            curves = np.stack([resample(*r.curves[tag], grid) for r in done])  # [seeds, G]
            mean, low, high = curve_band(curves, args.confidence, n_res)
            ax.plot(grid, mean, label=f"{bb} (n={len(done)})")
            ax.fill_between(grid, low, high, alpha=0.2)
            for r, c in zip(done, curves):
                agg.setdefault(bb, []).append((grid, (c - lo) / (hi - lo), r.seed))
        thr = thresholds.get(env_id, default_threshold(env_id))
        if thr is not None:
            ax.axhline(thr, color="grey", linestyle="--", linewidth=1, label=f"threshold {thr:g}")
        ax.set_xlabel("env steps")
        ax.set_ylabel(tag)
        ax.set_title(f"{env_id}: mean and {args.confidence:.0%} bootstrap CI over seeds")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / f"curves_{env_label(env_id)}.png", dpi=110)
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for bb, items in agg.items():
        grid = common_grid([(g, c) for g, c, _ in items])
        if grid is None:
            continue
        # Per seed, the mean over envs of the normalized curves; then mean and CI over seeds.
        seeds = sorted({s for _, _, s in items})
        per_seed = []
        for s in seeds:
            cs = [resample(g, c, grid) for g, c, s2 in items if s2 == s]
            if len(cs) == len(by_env):
                per_seed.append(np.mean(cs, axis=0))
        if not per_seed:
            continue
        mean, low, high = curve_band(np.stack(per_seed), args.confidence, n_res)
        ax.plot(grid, mean, label=f"{bb} (n={len(per_seed)})")
        ax.fill_between(grid, low, high, alpha=0.2)
    ax.set_xlabel("env steps")
    ax.set_ylabel("normalized score (0 chance, 1 perfect)")
    ax.set_title(f"Mean over {len(by_env)} env(s): mean and {args.confidence:.0%} CI over seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "curves_aggregate.png", dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- main


def run_grid(args: Args) -> int:
    out = Path(args.out)
    if args.report_only:
        runs = discover(out)
        if not runs:
            raise UsageError(f"no runs under {out / 'runs'} to report on")
        thresholds = parse_thresholds(args.threshold, sorted({r.env_id for r in runs}))
        build_report(out, runs, thresholds, args, [canonical(b) for b in args.backbones])
        print(f"report: {out / 'summary.md'}", file=sys.stderr)
        return 0

    if not (0 < args.final_frac <= 1) or args.smooth < 1 or not (0 < args.confidence < 1) or args.resamples < 1:
        raise UsageError("--final-frac must be in (0, 1], --smooth >= 1, --confidence in (0, 1), --resamples >= 1")
    thresholds = parse_thresholds(args.threshold, args.env_ids)
    runs, threads = plan(args)
    todo = [r for r in runs if r.action != "skip"]
    counts = {a: sum(r.action == a for r in runs) for a in ("skip", "new", "resume", "restart")}
    print(f"compare: {len(runs)} runs: {counts['skip']} finished, {counts['new']} new, {counts['resume']} to resume, "
          f"{counts['restart']} to restart (no checkpoint); {args.jobs or cores()} at a time, {threads} torch thread(s) each",
          file=sys.stderr)
    if args.dry_run:
        for r in runs:
            print(f"{r.action:8s} {r.name}" + ("" if r.action == "skip" else f": {shlex.join(train_command(r))}"))
        return 0

    child_env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    jobs = []
    for r in todo:
        if r.action == "restart":
            shutil.rmtree(r.run_dir)
        jobs.append(Job(r.name, train_command(r), out / "logs" / f"{r.name}.log", child_env))
    codes, interrupted = run_jobs(jobs, args.jobs or cores())
    if interrupted:
        print(f"compare: interrupted; run the same command again to resume ({out})", file=sys.stderr)
        return 130

    # The report covers every run under out/runs (so grids added to one --out over time are
    # compared together, exactly as --report-only would), plus this grid's runs that failed
    # before they made a directory.
    found = {d.name: d for d in discover(out)}
    for r in runs:
        rc = codes.get(r.name)
        d = found.get(r.name)
        if d is None:
            found[r.name] = RunData(r.name, r.env_id, r.backbone.display, r.seed, None, "missing" if rc in (None, 0) else "failed", rc)
        elif rc not in (None, 0):
            d.status, d.returncode = "failed", rc
    data = list(found.values())
    thresholds = parse_thresholds(args.threshold, list(dict.fromkeys([*args.env_ids, *(d.env_id for d in data)])))
    build_report(out, data, thresholds, args, [canonical(b) for b in args.backbones])
    failed = [d for d in data if d.status == "failed"]
    print(f"compare: {out / 'summary.md'}, {out / 'results.csv'}"
          + (f"; {len(failed)} run(s) failed: {', '.join(d.name for d in failed)}" if failed else ""), file=sys.stderr)
    return 1 if failed else 0


def glue_train_args(argv: list[str]) -> list[str]:
    """`--train-args "--num-envs 8"` -> `--train-args=--num-envs 8`: the value starts with '--',
    which the parser would otherwise take for a flag. --train-args always takes exactly one value."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] == "--train-args" and i + 1 < len(argv):
            out.append(f"--train-args={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def main(argv: list[str] | None = None) -> int:
    import tyro

    argv = glue_train_args(list(sys.argv[1:] if argv is None else argv))
    args = tyro.cli(Args, args=argv, description=__doc__.split("\n\n")[0])
    try:
        return run_grid(args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
