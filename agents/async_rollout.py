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

from agents.nested import tree_map
from agents.rollout import EpisodeStats, Rollout


def _worker(conn, args_dict: dict, bptt_len: int) -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the learner handles signals and stops us
    try:
        import numpy as np

        from agents.build import make_agent, make_env, make_normalizer, tune_malloc
        from agents.config import Args
        from agents.rollout import RolloutCollector

        args = Args(**args_dict)
        torch.set_num_threads(args.torch_threads)
        tune_malloc()
        torch.manual_seed(args.seed)
        np.random.seed(args.seed)
        cpu = torch.device("cpu")
        env = make_env(args, args.num_envs, cpu)
        agent = make_agent(args, env).eval()
        collector = RolloutCollector(env, agent, args.num_steps, bptt_len, cpu, seed=args.seed,
                                     normalizer=make_normalizer(args, env, cpu))
        conn.send(("ready", None))
        while True:
            cmd, payload = conn.recv()
            if cmd == "collect":
                agent.load_state_dict(payload)
                conn.send(("rollout", collector.collect(agent)))
            elif cmd == "get_state":
                own = collector.state_dict()
                conn.send(("state", {
                    "collector": own["collector"], "env": own["env"],
                    "torch_rng": torch.get_rng_state(), "numpy_rng": np.random.get_state(),
                }))
            elif cmd == "set_state":
                collector.load_state_dict({"collector": payload["collector"], "env": payload["env"]})
                torch.set_rng_state(payload["torch_rng"])
                np.random.set_state(payload["numpy_rng"])
                conn.send(("ok", None))
            elif cmd == "close":
                collector.close()
                conn.send(("ok", None))
                return
    except Exception:  # noqa: BLE001 - reported to the learner, which raises it
        conn.send(("error", traceback.format_exc()))


class WorkerError(RuntimeError):
    """The rollout worker raised; the message holds its traceback."""


class AsyncCollector:
    """The learner's handle on the rollout worker (the agents.rollout.Collector interface).
    ``collect(agent)`` returns the rollout asked for last time and, with ``prefetch``, asks for the
    next one with a copy of the agent's current parameters before returning."""

    def __init__(self, args_dict: dict[str, Any], bptt_len: int, device: torch.device):
        self.device = device
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker, args=(child, args_dict, bptt_len), daemon=True)
        self.proc.start()
        child.close()
        self.in_flight = False
        self.pending: tuple[Rollout, EpisodeStats] | None = None  # received, not handed out yet
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

    def _request(self, agent: torch.nn.Module) -> None:
        if self.in_flight:
            raise RuntimeError("a rollout is already in flight")
        params = {k: v.detach().to("cpu", copy=True) for k, v in agent.state_dict().items()}
        self.conn.send(("collect", params))
        self.in_flight = True

    def _receive(self) -> None:
        ro, stats = self._expect("rollout")
        self.in_flight = False
        self.pending = (rollout_to(ro, self.device), stats)

    def collect(self, agent: torch.nn.Module, greedy: bool = False, prefetch: bool = True) -> tuple[Rollout, EpisodeStats]:
        """The next rollout (collected with the parameters of one update ago); with ``prefetch``,
        the one after it starts now with the agent's current parameters."""
        if greedy:
            raise ValueError("the asynchronous collector samples actions; evaluate with a RolloutCollector")
        if self.pending is None:
            if not self.in_flight:  # the first rollout of a fresh run
                self._request(agent)
            self._receive()
        out, self.pending = self.pending, None
        if prefetch:
            self._request(agent)
        return out

    def state_dict(self) -> dict:
        """The worker's envs, collector and RNG, and the rollout in flight: waited for and kept
        (the next update trains on it either way)."""
        if self.in_flight:
            self._receive()
        self.conn.send(("get_state", None))
        return {"collector": {}, "env": None, "async": {"worker": self._expect("state"), "pending": self.pending}}

    def load_state_dict(self, d: dict) -> None:
        self.conn.send(("set_state", d["async"]["worker"]))
        self._expect("ok")
        pending = d["async"]["pending"]
        self.pending = None if pending is None else (rollout_to(pending[0], self.device), pending[1])

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
    return tree_map(lambda x: x.to(device), ro)
