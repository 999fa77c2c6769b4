"""Rollouts collected in a worker process while the learner updates (``train.py --async-rollouts``).

The worker owns the envs, a copy of the agent and a RolloutCollector (agents.rollout: the same
collection code as the synchronous loop). The learner asks for the next rollout with its current
parameters *before* it updates on the rollout in hand, so collection and update overlap:

    rollout 1 and 2 are collected with theta_0; rollout u + 1 with theta_{u-1}, the parameters the
    update on rollout u starts from. Each rollout is one update older than the policy it trains.

PPO stays correct for that lag: the ratio and its clip use the log-probabilities the behaviour
policy stored, and the memory states come from the stored chunk starts (agents.ppo). The schedule is
fixed (the learner always waits for exactly the rollout it asked for), so a seeded run is
deterministic, and a checkpoint holds the worker's state and the rollout in flight: an interrupted
and resumed run equals an uninterrupted one (tests/test_train.py).
"""

from __future__ import annotations

import traceback
from typing import Any

import torch
import torch.multiprocessing as mp

from agents.rollout import EpisodeStats, Rollout


def _worker(conn, args_dict: dict, bptt_len: int) -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the learner handles signals and stops us
    try:
        import cloudpickle
        import numpy as np

        import train
        from agents.rollout import RolloutCollector

        args = train.Args(**args_dict)
        torch.set_num_threads(args.torch_threads)
        train.tune_malloc()
        torch.manual_seed(args.seed)
        np.random.seed(args.seed)
        cpu = torch.device("cpu")
        env = train.make_env(args, args.num_envs, cpu)
        agent = train.make_agent(args, env).eval()
        collector = RolloutCollector(env, agent, args.num_steps, bptt_len, cpu, seed=args.seed)
        conn.send(("ready", None))
        while True:
            cmd, payload = conn.recv()
            if cmd == "collect":
                agent.load_state_dict(payload)
                collector.stats.clear()
                ro = collector.collect(agent)
                st = collector.stats
                conn.send(("rollout", (ro, EpisodeStats(list(st.returns), list(st.lengths), list(st.accuracy), list(st.env_ids)))))
            elif cmd == "get_state":
                conn.send(("state", {
                    "collector": collector.state_dict(), "env": cloudpickle.dumps(collector.env),
                    "torch_rng": torch.get_rng_state(), "numpy_rng": np.random.get_state(),
                }))
            elif cmd == "set_state":
                collector.load_state_dict(payload["collector"])
                collector.env.close()
                collector.env = cloudpickle.loads(payload["env"])
                torch.set_rng_state(payload["torch_rng"])
                np.random.set_state(payload["numpy_rng"])
                conn.send(("ok", None))
            elif cmd == "close":
                collector.env.close()
                conn.send(("ok", None))
                return
    except Exception:  # noqa: BLE001 - reported to the learner, which raises it
        conn.send(("error", traceback.format_exc()))


class WorkerError(RuntimeError):
    """The rollout worker raised; the message holds its traceback."""


class AsyncCollector:
    """The learner's handle on the rollout worker. ``request(agent)`` starts the next rollout with a
    copy of the agent's current parameters; ``result()`` waits for it."""

    def __init__(self, args_dict: dict[str, Any], bptt_len: int, device: torch.device):
        self.device = device
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker, args=(child, args_dict, bptt_len), daemon=True)
        self.proc.start()
        child.close()
        self.in_flight = False
        self._expect("ready")

    def _expect(self, kind: str):
        try:
            got, payload = self.conn.recv()
        except EOFError:
            raise WorkerError(f"the rollout worker exited (exit code {self.proc.exitcode})") from None
        if got == "error":
            raise WorkerError(f"the rollout worker failed:\n{payload}")
        if got != kind:
            raise WorkerError(f"rollout worker protocol: expected {kind!r}, got {got!r}")
        return payload

    def request(self, agent: torch.nn.Module) -> None:
        if self.in_flight:
            raise RuntimeError("a rollout is already in flight")
        params = {k: v.detach().to("cpu", copy=True) for k, v in agent.state_dict().items()}
        self.conn.send(("collect", params))
        self.in_flight = True

    def result(self) -> tuple[Rollout, EpisodeStats]:
        if not self.in_flight:
            raise RuntimeError("no rollout was requested")
        ro, stats = self._expect("rollout")
        self.in_flight = False
        return rollout_to(ro, self.device), stats

    def get_state(self) -> dict:
        """The worker's envs, collector and RNG states (no rollout may be in flight)."""
        if self.in_flight:
            raise RuntimeError("cannot read the worker's state while a rollout is in flight")
        self.conn.send(("get_state", None))
        return self._expect("state")

    def set_state(self, state: dict) -> None:
        self.conn.send(("set_state", state))
        self._expect("ok")

    def close(self) -> None:
        if self.proc.is_alive():
            try:
                if self.in_flight:
                    self._expect("rollout")
                    self.in_flight = False
                self.conn.send(("close", None))
                self._expect("ok")
            except (WorkerError, BrokenPipeError, EOFError):
                pass
        self.proc.join(timeout=10)
        if self.proc.is_alive():
            self.proc.kill()


def rollout_to(ro: Rollout, device: torch.device) -> Rollout:
    """The rollout with every tensor on ``device`` (the worker collects on CPU)."""
    def move(x):
        if isinstance(x, dict):
            return {k: move(v) for k, v in x.items()}
        if isinstance(x, tuple):
            return tuple(move(v) for v in x)
        return x.to(device)

    return Rollout(**{f: move(getattr(ro, f)) for f in ro.__dataclass_fields__})
