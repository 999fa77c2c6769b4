"""Executing a grid's runs: a Job is one train.py run; an Executor runs jobs (a local process pool,
or Ray tasks on a cluster); ``run_jobs`` drives one with at most N jobs at once, progress lines
and Ctrl-C handling.

Every run is claimed before it starts: an exclusive ``fcntl.flock`` on DIR/runs/<name>.lock,
inherited by its train.py, so the claim lasts exactly as long as that process (and the process
that launched it) lives. A second compare.py on the same --out finds the lock held and reports the
run as running elsewhere instead of starting a second train.py in the same directory. What a run
needs is decided under that claim, when it starts (``start_argv``): finished (result.json) ->
nothing; a checkpoint -> ``--resume``; a directory that never reached a checkpoint -> removed and
started afresh. So a retried Ray task resumes from the run's last checkpoint.
"""

from __future__ import annotations

import fcntl
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from experiments.grid import ROOT, TRAIN_PY, UsageError
from experiments.rundata import lock_path

# wait() statuses that are not a train.py exit status (those are 0..255, or -signal).
RUNNING_ELSEWHERE = 1000  # another process holds the run's lock; nothing was started
LOST = 1001  # Ray gave up on the task (its node or worker died more often than max_retries)

# Makes the run's process die with the process that launched it (Linux prctl PR_SET_PDEATHSIG),
# then becomes train.py: no orphan keeps writing into a run directory a retry now owns. A Ray
# worker's threads block and ignore signals, which a child inherits: unblock and reset them, or
# the SIGINT asking train.py to checkpoint would never arrive.
_GUARD = ("import ctypes, os, signal, sys\n"
          "signal.pthread_sigmask(signal.SIG_SETMASK, [])\n"
          "for s in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD, signal.SIGPIPE):\n"
          "    signal.signal(s, signal.SIG_DFL)\n"
          "try:\n"
          "    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)\n"
          "except (OSError, AttributeError):\n"
          "    pass\n"
          "if os.getppid() != int(sys.argv[1]):\n"
          "    os._exit(137)\n"
          "os.execv(sys.argv[2], sys.argv[2:])\n")


@dataclass
class Job:
    name: str
    argv: list[str]  # train.py flags for a fresh start (without `python train.py`)
    log: Path  # the run's stdout and stderr, appended to
    run_dir: Path
    env: dict[str, str] | None = None  # extra environment variables for the run's process
    threads: int = 1  # torch threads; a Ray task reserves this many CPUs
    program: list[str] | None = None  # the command before the flags; None: python train.py


def claim(run_dir: Path, wait: float = 0.0) -> int | None:
    """An fd holding the exclusive lock on the run's lock file, or None if another process holds
    it (after trying for `wait` seconds)."""
    path = lock_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                return None
            time.sleep(0.1)


def note_claim(fd: int, where: str) -> None:
    """Write who holds the claim into the lock file (for people; the lock itself is the flock)."""
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{where} pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)


def start_argv(job: Job) -> list[str] | None:
    """What the run needs now (call it holding the claim): None when it has finished, --resume from
    its checkpoint, or a fresh start (a directory that never reached a checkpoint is removed)."""
    d = job.run_dir
    if (d / "result.json").exists():
        return None
    if (d / "checkpoint.pt").exists():
        # The thread count is this grid's, not the one the run started with.
        return ["--resume", str(d), "--torch-threads", str(job.threads)]
    if d.exists():
        shutil.rmtree(d)
    return list(job.argv)


def launch(job: Job, argv: list[str], lock_fd: int, die_with_parent: bool = False) -> tuple[subprocess.Popen, object]:
    """Start the run's process in its own session (a terminal's Ctrl-C reaches only the driver),
    holding the claim (the lock fd is inherited), output appended to job.log."""
    cmd = [*(job.program or [sys.executable, str(TRAIN_PY)]), *argv]
    job.log.parent.mkdir(parents=True, exist_ok=True)
    fh = open(job.log, "a")
    fh.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(cmd)}\n")
    fh.flush()
    if die_with_parent and sys.platform.startswith("linux"):
        exe = shutil.which(cmd[0]) or cmd[0]
        cmd = [sys.executable, "-c", _GUARD, str(os.getpid()), exe, *cmd[1:]]
    env = {**os.environ, "OMP_NUM_THREADS": str(job.threads), "MKL_NUM_THREADS": str(job.threads), **(job.env or {})}
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True, cwd=ROOT, pass_fds=(lock_fd,))
    return proc, fh


class Executor:
    """Runs jobs. ``running()`` names the jobs submitted whose status ``wait()`` has not returned."""

    def submit(self, job: Job) -> None:
        raise NotImplementedError

    def wait(self, timeout: float | None = None) -> list[tuple[str, int]]:
        """(name, exit status) of the jobs that ended since the last call; blocks up to `timeout`
        seconds (None: until one ends) when none has. RUNNING_ELSEWHERE: another process holds
        the run; LOST: Ray gave up on it."""
        raise NotImplementedError

    def stop(self, name: str) -> None:
        """Ask the run to checkpoint and stop: one SIGINT to its train.py (a second stops it at once)."""
        raise NotImplementedError

    def running(self) -> list[str]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class LocalExecutor(Executor):
    """train.py processes on this machine (the driver keeps at most `parallel` going)."""

    def __init__(self, parallel: int = 1):
        self.parallel = parallel
        self._procs: dict[str, tuple[subprocess.Popen, object, int]] = {}
        self._ready: list[tuple[str, int]] = []  # decided at submit: running elsewhere, or finished already

    def submit(self, job: Job) -> None:
        fd = claim(job.run_dir)
        if fd is None:
            self._ready.append((job.name, RUNNING_ELSEWHERE))
            return
        try:
            note_claim(fd, f"compare on {os.uname().nodename}")
            argv = start_argv(job)
            if argv is None:
                os.close(fd)
                self._ready.append((job.name, 0))
                return
            proc, fh = launch(job, argv, fd)
        except BaseException:
            os.close(fd)
            raise
        self._procs[job.name] = (proc, fh, fd)

    def wait(self, timeout: float | None = None) -> list[tuple[str, int]]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            done, self._ready = self._ready, []
            for name, (proc, fh, fd) in list(self._procs.items()):
                rc = proc.poll()
                if rc is not None:
                    fh.close()
                    os.close(fd)
                    del self._procs[name]
                    done.append((name, rc))
            if done or not self._procs or (deadline is not None and time.monotonic() >= deadline):
                return done
            time.sleep(0.02 if deadline is None else max(0.0, min(0.02, deadline - time.monotonic())))

    def stop(self, name: str) -> None:
        if name in self._procs:
            try:
                self._procs[name][0].send_signal(signal.SIGINT)
            except ProcessLookupError:
                pass

    def running(self) -> list[str]:
        return [*self._procs, *(n for n, _ in self._ready)]

    def close(self) -> None:
        for name in list(self._procs):  # only after an error in the driver: don't leave runs behind
            self.stop(name)
        for proc, fh, fd in self._procs.values():
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
            fh.close()
            os.close(fd)
        self._procs.clear()


# ----------------------------------------------------------------------------- Ray

RAY_MISSING = 'the ray executor needs Ray: pip install -e ".[ray]"'
LOCK_WAIT_S = 15.0  # a retry may start while the killed attempt's process is still going away


def _stop_file(job: Job) -> Path:
    return job.run_dir.parent / f".{job.run_dir.name}.stop"


def run_on_node(job: Job) -> int:
    """The body of a run's Ray task: claim the run, decide what it needs, run train.py in a
    subprocess that dies with this worker, and forward stop requests (lines appended to the run's
    stop file by the driver, or a ray.cancel) as one SIGINT each. Returns the exit status."""
    fd = claim(job.run_dir, wait=LOCK_WAIT_S)
    if fd is None:
        return RUNNING_ELSEWHERE
    try:
        try:
            import ray

            node = ray.get_runtime_context().get_node_id()
        except Exception:  # noqa: BLE001 (called outside Ray: tests, or a Ray without the context)
            node = "?"
        note_claim(fd, f"ray node {node} on {os.uname().nodename}")
        argv = start_argv(job)
        if argv is None:
            return 0
        proc, fh = launch(job, argv, fd, die_with_parent=True)
        sent = 0
        try:
            while True:
                try:
                    while proc.poll() is None:
                        try:
                            wanted = len(_stop_file(job).read_text().splitlines())
                        except OSError:
                            wanted = 0
                        for _ in range(wanted - sent):
                            proc.send_signal(signal.SIGINT)
                        sent = max(sent, wanted)
                        time.sleep(0.1)
                    return proc.returncode
                except KeyboardInterrupt:  # ray.cancel(force=False): checkpoint and stop
                    sent += 1
                    proc.send_signal(signal.SIGINT)
        finally:
            fh.close()
    finally:
        os.close(fd)


def _read_marker(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as e:
        return f"cannot read it ({e.strerror})"


def check_executor(args) -> None:
    """The execution flags compare.py and sweep.py share (executor, ray_address, gpus_per_run):
    consistent, and Ray importable when asked for."""
    if args.executor != "ray" and (args.ray_address is not None or args.gpus_per_run):
        raise UsageError("--ray-address and --gpus-per-run need --executor ray")
    if args.gpus_per_run < 0:
        raise UsageError(f"--gpus-per-run must be >= 0, got {args.gpus_per_run}")
    if args.executor == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise UsageError(RAY_MISSING) from None


class RayExecutor(Executor):
    """Each run one Ray task (num_cpus = its torch threads; num_gpus = gpus_per_run) running
    train.py on its node. A task whose node or worker dies is retried (max_retries) and resumes
    from the run's last checkpoint; a train.py that fails on its own (exit 1 or 2) is not retried.
    ``address``: None starts a local Ray; 'auto' joins the cluster this machine is part of."""

    def __init__(self, address: str | None = None, gpus_per_run: float = 0.0, max_retries: int = 3):
        try:
            import ray
        except ImportError:
            raise UsageError(RAY_MISSING) from None
        self.ray = ray
        self.gpus_per_run = gpus_per_run
        self.max_retries = max_retries
        self._owns = not ray.is_initialized()
        if self._owns:
            # address "local": a new Ray of this process's own (None would join one that happens to run here).
            ray.init(address=address or "local", include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                     configure_logging=False)
        self._task = ray.remote(run_on_node)
        self._refs: dict[object, Job] = {}

    def cpus(self) -> int:
        return int(self.ray.cluster_resources().get("CPU", 0))

    def check_shared(self, out: Path, timeout: float = 120.0) -> None:
        """A task on every alive node must see `out` (runs and logs are written there by the
        nodes and read here): write a marker file, read it back on each node."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        out.mkdir(parents=True, exist_ok=True)
        token = uuid.uuid4().hex
        marker = out.absolute() / f".ray_visible_{token}"
        marker.write_text(token)
        try:
            nodes = [n for n in self.ray.nodes() if n.get("Alive")]
            reader = self.ray.remote(_read_marker)
            refs = [reader.options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                    .remote(str(marker)) for n in nodes]
            try:
                seen = self.ray.get(refs, timeout=timeout)
            except self.ray.exceptions.GetTimeoutError:
                raise UsageError(f"Ray nodes did not answer within {timeout:.0f} s while checking that they see --out {out}") from None
            for node, got in zip(nodes, seen):
                if got != token:
                    why = got if got.startswith("cannot") else "it holds something else"
                    raise UsageError(f"--out {out.absolute()} is not the same directory on Ray node {node['NodeManagerAddress']} "
                                     f"({marker.name}: {why}); give a path every node shares (e.g. NFS)")
        finally:
            marker.unlink(missing_ok=True)

    def submit(self, job: Job) -> None:
        _stop_file(job).unlink(missing_ok=True)
        ref = self._task.options(num_cpus=job.threads, num_gpus=self.gpus_per_run, max_retries=self.max_retries,
                                 retry_exceptions=False, name=job.name).remote(job)
        self._refs[ref] = job

    def wait(self, timeout: float | None = None) -> list[tuple[str, int]]:
        if not self._refs:
            return []
        refs = list(self._refs)
        ready, _ = self.ray.wait(refs, num_returns=1, timeout=timeout)
        if ready:
            ready, _ = self.ray.wait(refs, num_returns=len(refs), timeout=0)
        out = []
        for ref in ready:
            job = self._refs.pop(ref)
            try:
                rc = int(self.ray.get(ref))
            except self.ray.exceptions.TaskCancelledError:
                rc = 130
            except self.ray.exceptions.RayError:
                rc = LOST
            _stop_file(job).unlink(missing_ok=True)
            out.append((job.name, rc))
        return out

    def stop(self, name: str) -> None:
        for job in self._refs.values():
            if job.name == name:
                with open(_stop_file(job), "a") as f:
                    f.write("SIGINT\n")

    def running(self) -> list[str]:
        return [job.name for job in self._refs.values()]

    def close(self) -> None:
        if self._owns and self.ray.is_initialized():
            self.ray.shutdown()


# ----------------------------------------------------------------------------- the driver


def _duration(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else (f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s")


class _Progress:
    """done / running / failed / waiting and an ETA: a live line on a terminal, plain lines (one per
    finished run) otherwise."""

    def __init__(self, total: int, parallel: int, say: Callable[[str], None], live: bool):
        self.total, self.parallel, self.say, self.live = total, parallel, say, live
        self.durations: list[float] = []
        self.shown = False

    def line(self, done: int, running: int, failed: int, waiting: int, oldest: float) -> str:
        eta = ""
        if self.durations and (running or waiting):
            d = sum(self.durations) / len(self.durations)
            eta = f"; ETA {_duration(max(0.0, d - oldest) + d * waiting / max(1, self.parallel))}"
        return f"compare: {done} done, {running} running, {failed} failed, {waiting} waiting of {self.total}{eta}"

    def message(self, text: str) -> None:
        if self.live and self.shown:
            sys.stderr.write("\r\033[K")
            self.shown = False
        self.say(text)

    def show(self, text: str, finished: bool) -> None:
        if self.live:
            sys.stderr.write("\r\033[K" + text)
            sys.stderr.flush()
            self.shown = True
        elif finished:
            self.say(text)

    def close(self) -> None:
        if self.live and self.shown:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _stderr(s: str) -> None:
    print(s, file=sys.stderr, flush=True)


def run_jobs(executor: Executor, jobs: list[Job], parallel: int, say: Callable[[str], None] = _stderr,
             poll: float = 0.2) -> tuple[dict[str, int], bool]:
    """Run the jobs on `executor`, at most `parallel` at once. Returns ({name: exit status} for
    those that were submitted, interrupted). A failing job doesn't stop the others.

    SIGINT or SIGTERM: every running run is asked to checkpoint and stop (one SIGINT to its
    train.py, per signal this process gets: train.py checkpoints on the first and exits at once on
    the second) and no new job starts; run the same grid again to resume."""
    pending = list(jobs)
    codes: dict[str, int] = {}
    signals = {"count": 0}
    started_at: dict[str, float] = {}
    progress = _Progress(len(jobs), parallel, say, live=say is _stderr and sys.stderr.isatty())

    def forward(signum, _frame):
        signals["count"] += 1
        progress.message(f"compare: got signal {signum}; " + ("asking runs to checkpoint and stop" if signals["count"] == 1 else "stopping runs now"))
        for name in executor.running():
            executor.stop(name)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    total, started, failed, done = len(jobs), 0, 0, 0
    try:
        while pending or executor.running():
            while pending and len(executor.running()) < parallel and not signals["count"]:
                job = pending.pop(0)
                executor.submit(job)
                started += 1
                started_at[job.name] = time.time()
                progress.message(f"[{started}/{total}] started {job.name}")
            if signals["count"] and not executor.running():
                break
            finished = False
            for name, rc in executor.wait(timeout=poll):
                finished = True
                codes[name] = rc
                took = time.time() - started_at[name]
                if rc == 0:
                    status, done = "done", done + 1
                    progress.durations.append(took)
                elif rc == RUNNING_ELSEWHERE:
                    status = f"running elsewhere (another process holds {lock_path(next(j.run_dir for j in jobs if j.name == name)).name}); skipped"
                elif signals["count"]:
                    status = f"stopped (exit {rc}; train.py checkpoints on the first signal)"
                else:
                    failed += 1
                    why = "Ray gave up on it: its node or worker died too often" if rc == LOST else f"exit {rc}"
                    status = f"FAILED ({why}; see {jobs_log(jobs, name)})"
                progress.message(f"  {name}: {status} in {took:.0f} s")
            running = executor.running()
            oldest = max((time.time() - started_at[n] for n in running), default=0.0)
            progress.show(progress.line(done, len(running), failed, len(pending), oldest), finished)
    finally:
        progress.close()
        for s, h in old.items():
            signal.signal(s, h)
    return codes, bool(signals["count"])


def jobs_log(jobs: list[Job], name: str) -> Path | None:
    return next((j.log for j in jobs if j.name == name), None)
