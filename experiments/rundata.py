"""Reading runs: a run directory's config, status and every TensorBoard scalar (RunData), the
training wall time summed over its sessions, and every run under DIR/runs (discover)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from experiments.stats import Curve

RETURN_TAG = "charts/episodic_return"
ACCURACY_TAG = "charts/accuracy"
SPS_TAG = "charts/SPS"
EVAL_RETURN_TAG = "eval/episodic_return"
EVAL_ACCURACY_TAG = "eval/accuracy"


@dataclass
class RunData:
    """One run, as its directory and TensorBoard events tell it."""

    name: str
    env_id: str
    backbone: str  # the spec label, e.g. lstm or mru:kind=ldu
    seed: int
    run_dir: Path | None
    status: str  # finished | unfinished | running (claimed by a process now) | failed | interrupted | missing
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


def lock_path(run_dir: Path) -> Path:
    """DIR/runs/<name>.lock: held (fcntl.flock) by the process training the run (experiments.executors)."""
    return run_dir.parent / f"{run_dir.name}.lock"


def is_claimed(run_dir: Path) -> bool:
    """Whether some process holds the run's lock now, i.e. is training it."""
    import fcntl

    try:
        fd = os.open(lock_path(run_dir), os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing releases a lock taken here


def read_run(run_dir: Path, name: str, env_id: str, backbone: str, seed: int, status: str | None = None, returncode: int | None = None) -> RunData:
    data = RunData(name, env_id, backbone, seed, run_dir, status or "missing", returncode)
    if not run_dir.is_dir():
        return data
    if status is None:
        data.status = "finished" if (run_dir / "result.json").exists() else ("running" if is_claimed(run_dir) else "unfinished")
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

