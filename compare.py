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
stops them at once. A run is claimed (DIR/runs/<run>.lock) while it trains, so two compare.py on one
--out share the grid: each skips the runs the other is training.

    python compare.py ... --executor ray                        # a local Ray
    python compare.py ... --executor ray --ray-address auto     # the cluster this machine is part of

With --executor ray (pip install -e ".[ray]") every run is a Ray task on some node (--out must be a
directory every node shares); a run whose node dies is retried and resumes from its checkpoint.

Outputs in DIR: results.csv (one row per run), summary.md (per env x backbone: mean, IQM and a
95% bootstrap CI over seeds, steps to a threshold), curves_<env>.png (mean and CI band per
backbone) and curves_aggregate.png (normalized scores averaged over envs); with rliable installed
(.[report]) summary.md also gets IQM and mean with stratified-bootstrap CIs over runs and envs,
performance profiles and the probability of improvement over --reference, with their plots
(rliable_*.png). Every number is read
from the runs' TensorBoard events; child output goes to DIR/logs/<run>.log. The machinery lives in
experiments/ (grid, executors, rundata, stats, report).
"""

from __future__ import annotations

import dataclasses
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from experiments import suite_files
from experiments.executors import RUNNING_ELSEWHERE, Job, LocalExecutor, RayExecutor, check_executor, run_jobs
from experiments.grid import UsageError, canonical, cores, glue_train_args, parse_thresholds, plan, train_command
from experiments.report import build_report
from experiments.rundata import RunData, discover


DEFAULT_ENV_IDS = ("MiniGrid-MemoryS9-v0",)
MMER_WINDOW = 65_536  # POPGym's PPO train batch (popgym/baselines/ppo.py at the paper release)


@dataclass
class Args:
    backbones: tuple[str, ...] = ("mlp", "gru", "lstm", "mlstm", "mlstm-orth", "mru")
    """backbones to compare: NAME or NAME:key=value,key=value (its --memory-options), e.g. mru:kind=ldu,num_heads=4"""
    env_ids: tuple[str, ...] = ()
    """env ids (anything train.py --env-id accepts); default MiniGrid-MemoryS9-v0 (or the --suite's envs)"""
    suite: str | None = None
    """run a suite file's envs with its settings instead of --env-ids: a name in presets/suites/ (popgym-easy, popgym-medium, popgym-hard, popgym) or a path; the report then scores runs as the suite says (MMER for POPGym) beside its published table"""
    seeds: tuple[int, ...] = (1, 2, 3)
    """seeds: one run per env x backbone x seed"""
    total_timesteps: int = 300_000
    """env steps per run"""
    train_args: str = ""
    """any other train.py flags for every run, as one quoted string: --train-args "--num-envs 8 --seq-len 64" (python train.py --help lists them)"""
    out: str = "compare_out"
    """output directory: runs/, logs/, results.csv, summary.md, curves_*.png"""
    threads_per_run: int = 1
    """torch threads per run (train.py's --torch-threads; a Ray task reserves as many CPUs); 0: share the cores, max(1, cores // jobs). 1 by default: small recurrent models train fastest on one thread each (docs/sweeps.md)"""
    jobs: int = 0
    """runs trained at once (each a train.py process with --threads-per-run torch threads); 0: one per core (with --executor ray: as many as the cluster's CPUs hold)"""
    threshold: tuple[str, ...] = ()
    """steps-to-threshold levels as ENV=VALUE (or one VALUE for every env); defaults: MiniGrid 0.9 return, NoisyRecall 0.5 accuracy, other envs none"""
    report_only: bool = False
    """rebuild the outputs from every run already in --out, training nothing (--backbones then only orders the tables)"""
    dry_run: bool = False
    """print what would run (new, resume, restart, skip) and the commands, then stop (with --suite: the suite too)"""
    final_frac: float = 0.1
    """'final' return/accuracy = mean of the values logged in the last final_frac of each run's steps"""
    smooth: int = 10
    """steps to threshold: first logged point where the trailing mean of this many logged points reaches it"""
    confidence: float = 0.95
    """confidence level of the bootstrap intervals"""
    mmer_window: int = MMER_WINDOW
    """--suite with score mmer: the window of env steps whose mean episodic return MMER maximizes over (the paper's train batch; docs/design.md section 9)"""
    resamples: int = 10_000
    """bootstrap resamples for the summary's intervals (curves use min(this, 1000) per grid point)"""
    reference: str | None = None
    """the backbone that summary.md's probability of improvement compares every other one against (rliable section); default lstm when in the grid, else the first backbone"""
    executor: Literal["local", "ray"] = "local"
    """where runs train: local (processes on this machine) or ray (Ray tasks on a cluster; pip install -e ".[ray]")"""
    ray_address: str | None = None
    """--executor ray: the cluster to join (auto: the one this machine is part of; default: start a local Ray)"""
    gpus_per_run: float = 0.0
    """--executor ray with --device cuda in --train-args: GPUs (a fraction shares one) each run reserves"""


def check_reference(reference: str | None, backbones: list[str]) -> None:
    """--reference must name one of the grid's backbones (its label, or its name before ':')."""
    if reference is None:
        return
    labels = list(dict.fromkeys(backbones))
    if reference not in labels and reference not in {b.split(":", 1)[0] for b in labels}:
        raise UsageError(f"--reference {reference!r} is not a backbone of this grid; choose one of: {', '.join(labels)}")


def run_grid(args: Args) -> int:
    out = Path(args.out)
    if args.mmer_window < 1:
        raise UsageError(f"--mmer-window must be >= 1 env step, got {args.mmer_window}")
    if args.report_only:
        runs = discover(out)
        if not runs:
            raise UsageError(f"no runs under {out / 'runs'} to report on")
        check_reference(args.reference, [r.backbone for r in runs])
        thresholds = parse_thresholds(args.threshold, sorted({r.env_id for r in runs}))
        suite = suite_files.load(args.suite) if args.suite is not None else suite_files.recorded(out)
        build_report(out, runs, thresholds, args, [canonical(b) for b in args.backbones], suite)
        print(f"report: {out / 'summary.md'}", file=sys.stderr)
        return 0

    if not (0 < args.final_frac <= 1) or args.smooth < 1 or not (0 < args.confidence < 1) or args.resamples < 1:
        raise UsageError("--final-frac must be in (0, 1], --smooth >= 1, --confidence in (0, 1), --resamples >= 1")
    check_executor(args)
    check_reference(args.reference, [canonical(b) for b in args.backbones])
    suite = None
    if args.suite is not None:
        if args.env_ids:
            raise UsageError("give --suite or --env-ids, not both (the suite file lists its envs)")
        suite = suite_files.load(args.suite)
    elif not args.env_ids:
        args = dataclasses.replace(args, env_ids=DEFAULT_ENV_IDS)
    env_ids = suite.envs if suite is not None else list(args.env_ids)
    thresholds = parse_thresholds(args.threshold, env_ids)
    runs, threads = plan(args, remote_device=args.executor == "ray", suite=suite)
    devices = {r.config["device"] for r in runs}
    if args.executor == "ray" and "cuda" in devices and not args.gpus_per_run:
        raise UsageError("--device cuda with --executor ray needs --gpus-per-run F (the GPUs each run reserves)")
    if args.gpus_per_run and devices != {"cuda"}:
        raise UsageError("--gpus-per-run needs --device cuda in --train-args")
    todo = [r for r in runs if r.action != "skip"]
    counts = {a: sum(r.action == a for r in runs) for a in ("skip", "new", "resume", "restart")}
    where = f"{args.jobs or cores()} at a time" if args.executor == "local" else (
        f"on Ray, {args.jobs} at a time" if args.jobs else "on Ray, as many at a time as its CPUs hold")
    print(f"compare: {len(runs)} runs: {counts['skip']} finished, {counts['new']} new, {counts['resume']} to resume, "
          f"{counts['restart']} to restart (no checkpoint); {where}, {threads} torch thread(s) each",
          file=sys.stderr)
    if args.dry_run:
        if suite is not None:
            print(f"suite {suite.name} ({suite.path}): {suite.description} {len(suite.envs)} envs; score: {suite.score}", file=sys.stderr)
        for r in runs:
            print(f"{r.action:8s} {r.name}" + ("" if r.action == "skip" else f": {shlex.join(train_command(r))}"))
        return 0

    if suite is not None:
        suite_files.record(out, suite)
    jobs = [Job(r.name, r.argv, (out / "logs" / f"{r.name}.log").absolute(), r.run_dir.absolute(), threads=threads)
            for r in todo]
    if args.executor == "ray":
        executor = RayExecutor(args.ray_address, args.gpus_per_run)
        parallel = args.jobs or max(1, executor.cpus() // threads)
    else:
        executor, parallel = LocalExecutor(args.jobs or cores()), args.jobs or cores()
    with executor:
        if args.executor == "ray" and jobs:
            executor.check_shared(out)
        codes, interrupted = run_jobs(executor, jobs, parallel)
    if interrupted:
        print(f"compare: interrupted; run the same command again to resume ({out})", file=sys.stderr)
        return 130

    # The report covers every run under out/runs (so grids added to one --out over time are
    # compared together, exactly as --report-only would), plus this grid's runs that failed
    # before they made a directory. A run another compare.py holds is reported as it stands.
    found = {d.name: d for d in discover(out)}
    for r in runs:
        rc = codes.get(r.name)
        d = found.get(r.name)
        if rc == RUNNING_ELSEWHERE:
            if d is None:
                found[r.name] = RunData(r.name, r.env_id, r.backbone.display, r.seed, None, "running")
            elif d.status != "finished":
                d.status = "running"
        elif d is None:
            found[r.name] = RunData(r.name, r.env_id, r.backbone.display, r.seed, None, "missing" if rc in (None, 0) else "failed", rc)
        elif rc not in (None, 0):
            d.status, d.returncode = "failed", rc
    data = list(found.values())
    thresholds = parse_thresholds(args.threshold, list(dict.fromkeys([*env_ids, *(d.env_id for d in data)])))
    build_report(out, data, thresholds, args, [canonical(b) for b in args.backbones], suite)
    failed = [d for d in data if d.status == "failed"]
    elsewhere = [d for d in data if d.status == "running"]
    print(f"compare: {out / 'summary.md'}, {out / 'results.csv'}"
          + (f"; {len(failed)} run(s) failed: {', '.join(d.name for d in failed)}" if failed else "")
          + (f"; {len(elsewhere)} run(s) still training in another process (report again when they finish): "
             f"{', '.join(d.name for d in elsewhere)}" if elsewhere else ""), file=sys.stderr)
    return 1 if failed else 0


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
