"""Env-steps/s of NoisyRecallVectorEnv (numpy and torch outputs) beside gymnasium's SyncVectorEnv of
single NoisyRecallEnvs (SAME_STEP autoreset, the same task), measured side by side in one run.

    python benchmarks/noisy_recall.py                   # 64, 1,024 and 16,384 envs; 1 and 2 threads
    python benchmarks/noisy_recall.py --num-envs 1024   # one size

Each figure times whole episodes (so sequence regeneration is included at its real rate) for at
least --min-seconds, best of --repeats. SyncVectorEnv at 16,384 envs takes ~40 s per episode
here, so it gets --sync-repeats (default 1) runs of one episode, without warm-up. The actions are a fixed random
array (the policy's cost is not the env's). On a CUDA machine it adds the torch env on the GPU at
65,536 envs. The CPU is shared with other work: compare ratios taken in the same run.
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Callable

import numpy as np
import torch
from gymnasium.vector import AutoresetMode, SyncVectorEnv

from envs.noisy_recall import NoisyRecallEnv, NoisyRecallVectorEnv


def episodes_rate(
    env, actions, episode_len: int, min_seconds: float, repeats: int, sync: Callable[[], None],
    episodes: int | None = None,
) -> float:
    """Best-of-`repeats` env-steps/s over k whole episodes, k chosen so one run lasts >= min_seconds
    after a warm-up episode (or k = `episodes` with no warm-up, for the very slow cases)."""
    env.reset(seed=0)
    if episodes is None:
        for _ in range(episode_len):  # warm-up: one whole episode
            env.step(actions)
        sync()
        t0 = time.perf_counter()
        for _ in range(episode_len):
            env.step(actions)
        sync()
        k = max(1, math.ceil(min_seconds / max(time.perf_counter() - t0, 1e-9)))
    else:
        k = episodes
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(k * episode_len):
            env.step(actions)
        sync()
        best = min(best, time.perf_counter() - t0)
    return env.num_envs * episode_len * k / best


def fmt(rate: float) -> str:
    if math.isnan(rate):
        return "-"
    return f"{rate / 1e6:8.2f}M" if rate >= 1e5 else f"{rate / 1e3:8.1f}k"


def ratio(a: float, b: float) -> str:
    return "-" if math.isnan(a / b) else f"{a / b:.0f}x"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--num-envs", type=int, nargs="+", default=[64, 1024, 16384])
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--min-seconds", type=float, default=1.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sync-repeats", type=int, default=1, help="runs of SyncVectorEnv at 16,384 envs")
    p.add_argument("--no-sync", action="store_true", help="skip gymnasium's SyncVectorEnv")
    args = p.parse_args()
    L = args.seq_len - 1
    kw = dict(seq_len=args.seq_len)
    nothing = lambda: None  # noqa: E731

    print(f"NoisyRecall defaults (vocab 32, noise 16, frac_noise 0.2), seq_len {args.seq_len}: env-steps/s")
    print(f"best of {args.repeats} runs of >= {args.min_seconds} s over whole episodes; SyncVectorEnv: "
          f"best of {args.repeats} below 16,384 envs; at 16,384 {args.sync_repeats} run(s) of 1 episode, no warm-up")
    header = (f"{'num_envs':>8} | {'numpy 1thr':>10} {'torch 1thr':>10} | {'numpy 2thr':>10} {'torch 2thr':>10} | "
              f"{'Sync 1thr':>10} | {'numpy/Sync':>10} {'torch/Sync':>10} | {'2thr/1thr numpy':>15}")
    print(header)
    print("-" * len(header))
    for n in args.num_envs:
        rng = np.random.default_rng(0)
        a_np = rng.integers(0, 8, n)
        a_th = torch.from_numpy(a_np.copy())
        rates = {}
        for threads in (1, 2):
            torch.set_num_threads(threads)
            rates["numpy", threads] = episodes_rate(
                NoisyRecallVectorEnv(n, **kw), a_np, L, args.min_seconds, args.repeats, nothing)
            rates["torch", threads] = episodes_rate(
                NoisyRecallVectorEnv(n, **kw, device="cpu"), a_th, L, args.min_seconds, args.repeats, nothing)
        torch.set_num_threads(1)
        sync_rate = math.nan
        if not args.no_sync:
            sync = SyncVectorEnv([lambda: NoisyRecallEnv(**kw)] * n, autoreset_mode=AutoresetMode.SAME_STEP)
            if n >= 16384:  # one episode is ~40 s here: --sync-repeats runs of one episode
                sync_rate = episodes_rate(sync, a_np, L, 0, args.sync_repeats, nothing, episodes=1)
            else:
                sync_rate = episodes_rate(sync, a_np, L, args.min_seconds, args.repeats, nothing)
            sync.close()
        print(f"{n:>8} | {fmt(rates['numpy', 1]):>10} {fmt(rates['torch', 1]):>10} | "
              f"{fmt(rates['numpy', 2]):>10} {fmt(rates['torch', 2]):>10} | {fmt(sync_rate):>10} | "
              f"{ratio(rates['numpy', 1], sync_rate):>10} {ratio(rates['torch', 1], sync_rate):>10} | "
              f"{rates['numpy', 2] / rates['numpy', 1]:>14.2f}x", flush=True)

    if torch.cuda.is_available():
        torch.set_num_threads(1)
        n = 65536
        env = NoisyRecallVectorEnv(n, **kw, device="cuda")
        a = torch.randint(0, 8, (n,), device="cuda")
        rate = episodes_rate(env, a, L, args.min_seconds, args.repeats, torch.cuda.synchronize)
        print(f"\nCUDA ({torch.cuda.get_device_name()}), torch outputs on the GPU, {n} envs: {fmt(rate)} env-steps/s")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
