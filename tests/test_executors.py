"""compare.py's executors: a grid on a 2-node Ray cluster equals the local executor's (parameters
and table), a run whose node dies is retried on the other node and resumes from its checkpoint,
and --executor ray without Ray is one line. Ray tests skip when Ray is not installed; each
cluster talks only to 127.0.0.1 and is shut down by its test."""

from __future__ import annotations

import os

# Before Ray is imported (its constants read this at import) or started: loopback addresses only.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

import csv  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

import compare  # noqa: E402

ENV = "memrl/NoisyRecall-v0"
TRAIN_ARGS = "--num-envs 4 --num-steps 16 --hidden-size 16 --vocab-size 8 --noise-vocab-size 4 --seq-len 16 --checkpoint-every 4"
PER_RUN = ("wall_time_s", "sps", "run_dir")  # what may differ between two executions of one grid


def grid_argv(out: Path, total: int, *extra: str, backbones=("lstm", "mlp"), seeds=("1", "2")) -> list[str]:
    return ["--backbones", *backbones, "--env-ids", ENV, "--seeds", *seeds, "--total-timesteps", str(total),
            f"--train-args={TRAIN_ARGS}", "--out", str(out), "--jobs", "2", "--resamples", "500", *extra]


def rows(out: Path) -> list[dict]:
    with open(out / "results.csv") as f:
        return [{k: v for k, v in r.items() if k not in PER_RUN} for r in csv.DictReader(f)]


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)["model"]


@pytest.fixture
def cluster():
    """A head node and a worker node, 1 CPU each; node deaths are noticed within about a second."""
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "include_dashboard": False,
        "_system_config": {"health_check_initial_delay_ms": 0, "health_check_period_ms": 300, "health_check_failure_threshold": 3},
    })
    try:
        worker = c.add_node(num_cpus=1)
        c.wait_for_nodes()
        yield c, worker
    finally:
        ray.shutdown()
        c.shutdown()


def test_ray_grid_equals_the_local_grid(cluster, tmp_path):
    c, _ = cluster
    local, remote = tmp_path / "local", tmp_path / "ray"
    assert compare.main(grid_argv(local, 256)) == 0
    assert compare.main(grid_argv(remote, 256, "--executor", "ray", "--ray-address", c.address)) == 0
    assert rows(remote) == rows(local) and len(rows(local)) == 4
    for run in sorted((local / "runs").iterdir()):
        if run.is_dir():
            a, b = weights(run), weights(remote / "runs" / run.name)
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), run.name
    # Each ran on some node, as one claim and one train.py session.
    for log in (remote / "logs").iterdir():
        assert sum(ln.startswith("# ") for ln in log.read_text().splitlines()) == 1
    assert all("ray node" in p.read_text() for p in (remote / "runs").glob("*.lock"))


def test_a_run_whose_node_dies_resumes_on_the_other_node(cluster, tmp_path):
    c, worker = cluster
    out, total = tmp_path / "out", 8192  # 128 updates, a checkpoint every 4
    killed: dict[str, object] = {}

    def kill_worker_node_mid_run():
        deadline = time.time() + 60
        while time.time() < deadline:
            for lock in (out / "runs").glob("*.lock") if (out / "runs").exists() else ():
                run = lock.with_suffix("")
                if worker.node_id in lock.read_text() and (run / "checkpoint.pt").exists():
                    killed["run"] = run
                    killed["update"] = torch.load(run / "checkpoint.pt", weights_only=False)["update"]
                    c.remove_node(worker, allow_graceful=False)
                    return
            time.sleep(0.02)

    watcher = threading.Thread(target=kill_worker_node_mid_run, daemon=True)
    watcher.start()
    code = compare.main(grid_argv(out, total, "--executor", "ray", "--ray-address", c.address, seeds=("1",)))
    watcher.join(timeout=5)
    assert "run" in killed, "no run was seen past its first checkpoint on the worker node"
    run = killed["run"]
    assert code == 0
    assert [r["status"] for r in rows(out)] == ["finished", "finished"]
    # The retry resumed from a checkpoint the dead attempt wrote (not from scratch): a second
    # session whose events start right after a checkpointed update, and whose command was --resume.
    events = sorted(run.glob("events.out.tfevents.*"))
    assert len(events) == 2, events
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events[1]), size_guidance={"scalars": 0})
    acc.Reload()
    first = min(e.step for e in acc.Scalars("charts/SPS"))
    resumed_update = first // 64 - 1
    assert resumed_update >= killed["update"] >= 4 and resumed_update % 4 == 0, (first, killed)
    log = (out / "logs" / f"{run.name}.log").read_text().splitlines()
    headers = [ln for ln in log if ln.startswith("# ")]
    assert len(headers) == 2 and "--resume" in headers[1] and "--resume" not in headers[0]
    assert weights(run) is not None and "ray node" in (run.parent / f"{run.name}.lock").read_text()
    assert worker.node_id not in (run.parent / f"{run.name}.lock").read_text()  # the retry ran on the head
    # No orphan of the dead attempt is left writing into the run directory.
    left = subprocess.run(["pgrep", "-f", run.name], capture_output=True, text=True).stdout.split()
    assert left == [], left


def test_ray_executor_without_ray_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    out = tmp_path / "out"
    code = compare.main(grid_argv(out, 256, "--executor", "ray"))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and 'pip install -e ".[ray]"' in err[0], err
    assert not out.exists()


def test_ray_stop_reaches_train_py_as_one_sigint(cluster, tmp_path):
    """executor.stop (what a Ctrl-C does to every running run) arrives in the run's process as
    exactly one SIGINT, though Ray's workers block signals that their children inherit."""
    import textwrap

    from experiments import executors

    c, _ = cluster
    child = textwrap.dedent("""
        import pathlib, signal, sys, time
        d = pathlib.Path(sys.argv[1])
        def on_sigint(signum, frame):
            with open(d / "signals", "a") as f:
                f.write(f"{signum}\\n")
            time.sleep(0.3)
            sys.exit(130)
        signal.signal(signal.SIGINT, on_sigint)
        (d / "ready").write_text("1")
        time.sleep(60)
    """)
    data = tmp_path / "data"
    data.mkdir()
    job = executors.Job("a", [str(data)], tmp_path / "a.log", tmp_path / "runs" / "a", program=[sys.executable, "-c", child])
    ex = executors.RayExecutor(c.address)
    try:
        ex.submit(job)
        deadline = time.time() + 30
        while not (data / "ready").exists():
            assert time.time() < deadline
            time.sleep(0.05)
        assert ex.running() == ["a"]
        ex.stop("a")
        assert ex.wait(timeout=30) == [("a", 130)]
        assert (data / "signals").read_text() == "2\n" and ex.running() == []
    finally:
        ex.close()
