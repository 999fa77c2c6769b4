"""End-to-end PPO training throughput per backbone, beside the raw env rate, in one run.

    python benchmarks/throughput.py                       # MiniGrid-MemoryS7-v0, 16 envs x 128 steps
    python benchmarks/throughput.py --backbones lstm gru --updates 5 --threads 1
    python benchmarks/throughput.py --async-rollouts --contention     # also train.py --async-rollouts
    python benchmarks/throughput.py --backbones lstm --adam fused foreach   # the optimizer's share
    python benchmarks/throughput.py --env-id MiniGrid-MemoryS9-v0 --minigrid-obs rgb --backbones lstm gru  # pixels
    python benchmarks/throughput.py --env-id memory_gym:MysteryPath-Grid-v0 --backbones gru   # 84x84x3 (Memory Gym)

Training env-steps/s = env steps / wall time of (rollout collection + PPO update), measured over
--updates updates after one warm-up update. Raw = the same 16 envs (same wrappers) stepping with
random actions. Also prints where the time goes (env, acting, update) and, for each backbone, the
observation encoder's share of the update (its forward + backward over every stored observation,
once per epoch, timed alone) and the rollout's observation buffer (uint8 frames stay uint8).
--contention also measures
the raw env rate while a busy-looping process holds another core: on the project's 2-core
machines it has ranged from 68% to 99% of the rate alone, depending on the host's load, and it
caps what --async-rollouts (env stepping beside learning, in a second process) can gain.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

import memory
from agents import build
from agents.config import Args
from agents.actor_critic import ActorCritic
from agents.ppo import PPOConfig, ppo_update
from agents.rollout import RolloutCollector


def raw_env_rate(args: Args, seconds: float) -> float:
    env = build.make_env(args, args.num_envs, torch.device("cpu"))
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    n_act = int(env.single_action_space.n)
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(args.num_steps):
            env.step(rng.integers(0, n_act, args.num_envs))
        steps += args.num_steps * args.num_envs
    rate = steps / (time.perf_counter() - t0)
    env.close()
    return rate


def contended_env_rate(args: Args, seconds: float) -> float:
    """The raw env rate while another process keeps the other core busy with a Python loop:
    the most any overlap of env stepping with learning (a second process) could leave the env."""
    import subprocess

    spin = subprocess.Popen([sys.executable, "-c", f"import time\nt = time.time()\nwhile time.time() - t < {seconds + 2}: pass"])
    try:
        time.sleep(0.5)
        return raw_env_rate(args, seconds)
    finally:
        spin.kill()
        spin.wait()


def training_rate(args: Args, backbone: str, opts: dict, updates: int, fused: bool = True) -> dict[str, float]:
    torch.manual_seed(0)
    device = torch.device("cpu")
    env = build.make_env(args, args.num_envs, device)
    agent = ActorCritic(env.single_observation_space, int(env.single_action_space.n),
                        memory.make(backbone, args.hidden_size, args.hidden_size, **opts))
    opt = build.make_optimizer(args, agent, fused)
    L = args.bptt_len or args.num_steps
    col = RolloutCollector(env, agent, args.num_steps, L, device, seed=0)
    cfg = PPOConfig(num_minibatches=args.num_minibatches, update_epochs=args.update_epochs)
    # Time spent inside env.step, to split the rollout into env and acting.
    env_time = [0.0]
    inner = env.step

    def timed_step(a):
        t = time.perf_counter()
        out = inner(a)
        env_time[0] += time.perf_counter() - t
        return out

    env.step = timed_step
    t_roll = t_upd = 0.0
    for i in range(updates + 1):
        if i == 1:  # the first update warms up allocators and kernels
            t_roll = t_upd = env_time[0] = 0.0
        t = time.perf_counter()
        agent.eval()
        ro, _ = col.collect(agent)
        t2 = time.perf_counter()
        agent.train()
        ppo_update(agent, opt, ro, cfg, L)
        t3 = time.perf_counter()
        t_roll += t2 - t
        t_upd += t3 - t2
    env.close()
    steps = updates * args.num_steps * args.num_envs
    enc_s = encoder_time(agent, ro.obs, args.update_epochs) * updates
    obs_bytes = sum(t.numel() * t.element_size() for t in _leaves(ro.obs))
    return {"sps": steps / (t_roll + t_upd), "env": env_time[0], "act": t_roll - env_time[0], "update": t_upd,
            "encoder": enc_s, "obs_mb": obs_bytes / 2**20, "obs_f32_mb": sum(t.numel() * 4 for t in _leaves(ro.obs)) / 2**20}


def _leaves(obs):
    if isinstance(obs, dict):
        return [t for v in obs.values() for t in _leaves(v)]
    if isinstance(obs, tuple):
        return [t for v in obs for t in _leaves(v)]
    return [obs]


def encoder_time(agent: ActorCritic, obs, epochs: int, repeats: int = 3) -> float:
    """Seconds of the encoder's forward + backward over every observation of a rollout, ``epochs``
    times (what one PPO update spends in it), best of ``repeats``."""
    from agents.nested import tree_map

    flat = tree_map(lambda t: t.reshape(-1, *t.shape[2:]), obs)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(epochs):
            agent.encoder(flat).sum().backward()
        best = min(best, time.perf_counter() - t)
    agent.zero_grad(set_to_none=True)
    return best


def async_training_rate(args: Args, backbone: str, spec_opts: list[str], updates: int, fused: bool = True) -> dict[str, float]:
    """The same measurement with ``--async-rollouts``: a worker process collects rollout u + 1 (with
    the parameters update u starts from) while the learner runs update u."""
    import dataclasses

    from agents.async_rollout import AsyncCollector

    torch.manual_seed(0)
    a = dataclasses.replace(args, backbone=backbone, memory_options=tuple(spec_opts), async_rollouts=True, seed=0)
    probe = build.make_env(a, 1, torch.device("cpu"))
    agent = build.make_agent(a, probe)
    probe.close()
    opt = build.make_optimizer(a, agent, fused)
    cfg = PPOConfig(num_minibatches=a.num_minibatches, update_epochs=a.update_epochs)
    L = a.bptt_len or a.num_steps
    col = AsyncCollector(dataclasses.asdict(a), L, torch.device("cpu"))
    try:
        ro, _ = col.collect(agent)  # rollout 1; rollout 2 starts now (with the same parameters)
        t_upd = t_wait = 0.0
        for i in range(updates + 1):
            if i == 1:  # the first update warms up allocators and kernels
                t0, t_upd, t_wait = time.perf_counter(), 0.0, 0.0
            t = time.perf_counter()
            ppo_update(agent, opt, ro, cfg, L)
            t2 = time.perf_counter()
            ro, _ = col.collect(agent)  # waits for the rollout in flight, starts the next
            t_upd += t2 - t
            t_wait += time.perf_counter() - t2
        total = time.perf_counter() - t0
    finally:
        col.close()
    return {"sps": updates * a.num_steps * a.num_envs / total, "update": t_upd, "wait": t_wait}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--env-id", default="MiniGrid-MemoryS7-v0")
    p.add_argument("--minigrid-obs", choices=["symbolic", "rgb"], default="symbolic")
    p.add_argument("--backbones", nargs="+", default=["mlp", "gru", "lstm", "mlstm", "mlstm-orth", "mru"])
    p.add_argument("--updates", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--hidden-size", type=int, default=128)
    p.add_argument("--async-rollouts", action="store_true", help="also measure each backbone with train.py --async-rollouts (worker process, one-update lag)")
    p.add_argument("--contention", action="store_true", help="also measure the raw env rate while a busy process holds another core")
    p.add_argument("--bptt-len", type=int, default=None, help="BPTT chunk length (default: the whole 128-step rollout)")
    p.add_argument("--adam", nargs="+", choices=["fused", "foreach"], default=["fused"],
                   help="Adam implementation(s) to measure each backbone with (train.py uses fused on CPU/CUDA)")
    args_cli = p.parse_args()
    torch.set_num_threads(args_cli.threads)
    args = Args(env_id=args_cli.env_id, num_envs=16, num_steps=128, update_epochs=4, hidden_size=args_cli.hidden_size,
                bptt_len=args_cli.bptt_len, minigrid_obs=args_cli.minigrid_obs)
    print(f"{args.env_id}, {args.num_envs} envs x {args.num_steps} steps, {args.update_epochs} epochs x "
          f"{args.num_minibatches} minibatches, BPTT {args.bptt_len or args.num_steps}, hidden {args.hidden_size}, torch threads {args_cli.threads}")
    raw = raw_env_rate(args, 3.0)
    print(f"raw env (random actions): {raw:,.0f} env-steps/s")
    if args_cli.contention:
        busy = contended_env_rate(args, 3.0)
        print(f"raw env while another process keeps a second core busy: {busy:,.0f} env-steps/s ({100 * busy / raw:.0f}%)")
    print()
    print("| backbone | train env-steps/s | % of raw env | env s | acting s | update s | encoder s (share of update) | obs buffer MB (as float32) |")
    print("|---|---|---|---|---|---|---|---|")
    runs = [(spec, adam) for spec in args_cli.backbones for adam in args_cli.adam]

    def label(spec: str, adam: str) -> str:
        return spec if len(args_cli.adam) == 1 else f"{spec} ({adam} Adam)"

    for spec, adam in runs:
        name, _, rest = spec.partition(":")
        opts = memory.parse_options(name, [kv for kv in rest.split(",") if kv])
        r = training_rate(args, name, opts, args_cli.updates, adam == "fused")
        print(f"| {label(spec, adam)} | {r['sps']:,.0f} | {100 * r['sps'] / raw:.0f}% | {r['env']:.2f} | {r['act']:.2f} | "
              f"{r['update']:.2f} | {r['encoder']:.2f} ({100 * r['encoder'] / r['update']:.0f}%) | "
              f"{r['obs_mb']:.1f} ({r['obs_f32_mb']:.1f}) |", flush=True)
    if args_cli.async_rollouts:
        print("\nwith --async-rollouts (rollouts collected in a worker process during the update):\n")
        print("| backbone | train env-steps/s | % of raw env | update s | learner waiting for rollouts s |")
        print("|---|---|---|---|---|")
        for spec, adam in runs:
            name, _, rest = spec.partition(":")
            r = async_training_rate(args, name, [kv for kv in rest.split(",") if kv], args_cli.updates, adam == "fused")
            print(f"| {label(spec, adam)} | {r['sps']:,.0f} | {100 * r['sps'] / raw:.0f}% | {r['update']:.2f} | {r['wait']:.2f} |", flush=True)
    raw2 = raw_env_rate(args, 3.0)
    print(f"\nraw env again at the end: {raw2:,.0f} env-steps/s (drift between the two = machine noise)")


if __name__ == "__main__":
    main()
