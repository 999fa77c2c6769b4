"""MRU per state-matrix kind: does the state stay bounded, and what does a training step cost?

1. Stability: log ||H_t||_F (mean over batch and heads) after 1, 64, 512 and 4,096 steps of random
   inputs. x_t ~ N(0, I) through a random (not the zero-initialized) input projection with
   entries N(0, scale^2 / input_size), so every entry of A_t is N(0, scale^2). Reference point:
   log ||I||_F = log sqrt(order) (1.04 for order 8). The state is carried across chunks of 512
   steps (the recurrent path a long episode takes), no resets.
2. Speed: forward + backward of one [T=128, B=16] sequence (input = hidden = 128, 1% resets), per
   kind and for lstm (and mlstm / mlstm-orth when registered), measured round-robin in one run,
   best of --repeats; ratio to lstm.

    python benchmarks/mru_stability.py [--scales 0.03 0.1 0.3] [--steps 4096] [--repeats 7] [--paths plain stable]

Each kind on both paths: the plain products (stable=false) and the stable (U, s) evaluation
(the default; docs/design.md section 4, "The stable evaluation").

Single-threaded (torch.set_num_threads(1)): on the 2-core shared machines more threads hurt.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

import memory
from memory.mru import KINDS, log_frobenius_norm

CHECKPOINTS = (1, 64, 512, 4096)


PATHS = {"plain": {"stable": False, "readout": "exact"}, "stable": {"stable": True}}


def state_norms(
    kind: str, scale: float, steps: int, batch: int, size: int, chunk: int = 512, seed: int = 0, path: str = "plain"
) -> tuple[dict[int, float], int | None]:
    """Mean log ||H_t||_F at each checkpoint t <= steps (1-based), and the first step at which
    some state has a non-finite entry (float32 overflow past 3.4e38: inf, then inf * 0 = nan), or None.
    path "plain": H_t from the plain products; "stable": log ||H_t||_F = s_t of the stable path, and a
    non-finite entry of U_t or s_t counts as the overflow."""
    torch.manual_seed(seed)
    m = memory.make("mru", size, size, kind=kind, **PATHS[path])
    with torch.no_grad():
        m.proj.weight.normal_(0.0, scale / math.sqrt(size))
    g = torch.Generator().manual_seed(seed + 1)
    state = m.initial_state(batch)
    out: dict[int, float] = {}
    overflow: int | None = None
    done = 0
    with torch.no_grad():
        while done < steps:
            T = min(chunk, steps - done)
            x = torch.randn(T, batch, size, generator=g)  # [T, B, D]
            reset = torch.zeros(T, batch, dtype=torch.bool)
            if path == "stable":
                us, log_norms = m.scaled_states(x, state, reset)  # [T, B, heads, o, o], [T, B, heads]
                state = (us[-1], log_norms[-1])
                bad = ~(torch.isfinite(log_norms).flatten(1).all(dim=1) & torch.isfinite(us).flatten(1).all(dim=1))
            else:
                hs = m.states(x, state, reset)  # [T, B, heads, o, o]
                state = (hs[-1],)
                log_norms = log_frobenius_norm(hs)  # [T, B, heads]
                bad = ~torch.isfinite(log_norms).flatten(1).all(dim=1)  # [T]
            if overflow is None and bad.any():
                overflow = done + int(bad.nonzero()[0]) + 1
            for t in CHECKPOINTS:
                if done < t <= done + T:
                    out[t] = log_norms[t - done - 1].mean().item()
            done += T
    return out, overflow


def bench_step(models: dict[str, torch.nn.Module], T: int, batch: int, size: int, repeats: int) -> dict[str, float]:
    """Best-of-`repeats` seconds of forward + backward per model, measured round-robin."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(T, batch, size, generator=g)
    reset = torch.rand(T, batch, generator=g) < 0.01
    best = {k: float("inf") for k in models}

    def step(m):
        y, _ = m(x, m.initial_state(batch), reset)
        y.square().mean().backward()

    for m in models.values():  # warm-up
        step(m)
    for _ in range(repeats):
        for name, m in models.items():
            m.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            step(m)
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kinds", nargs="+", default=list(KINDS))
    p.add_argument("--scales", nargs="+", type=float, default=[0.03, 0.1, 0.3], help="std of the entries of A_t")
    p.add_argument("--steps", type=int, default=4096)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--size", type=int, default=128, help="input size = hidden size")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--paths", nargs="+", default=list(PATHS), choices=list(PATHS),
                   help="plain products (stable=false) and/or the stable (U, s) path")
    p.add_argument("--skip-speed", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)

    cps = [t for t in CHECKPOINTS if t <= args.steps]
    m0 = memory.make("mru", args.size, args.size)
    print(f"## State growth: mean log ||H_t||_F (order {m0.order}, {m0.num_heads} heads, batch {args.batch}; "
          f"log ||I||_F = {0.5 * math.log(m0.order):.2f})\n")
    print("growth / step: slope of the mean log-norm between t=1 and the last finite checkpoint;")
    print("overflow: the first step at which some float32 state has an inf/nan entry ('-': none).\n")
    print("| kind | path | std(A) | " + " | ".join(f"t={t}" for t in cps) + " | growth / step | overflow at |")
    print("|---|---|---|" + "---|" * len(cps) + "---|---|")
    for scale in args.scales:
        for kind in args.kinds:
            for path in args.paths:
                n, overflow = state_norms(kind, scale, args.steps, args.batch, args.size, path=path)
                finite = [t for t in cps if math.isfinite(n[t])]
                rate = (n[finite[-1]] - n[finite[0]]) / (finite[-1] - finite[0]) if len(finite) > 1 else float("nan")
                cells = " | ".join(f"{n[t]:.3g}" if math.isfinite(n[t]) else "overflow" for t in cps)
                print(f"| {kind} | {path} | {scale} | {cells} | {rate:.3g} | {overflow or '-'} |", flush=True)

    if args.skip_speed:
        return
    T, B, D = 128, args.batch, args.size
    models: dict[str, torch.nn.Module] = {}
    for name in ("lstm", "mlstm", "mlstm-orth"):
        if name in memory.names():
            models[name] = memory.make(name, D, D)
    for kind in args.kinds:
        for path in args.paths:
            m = memory.make("mru", D, D, kind=kind, **PATHS[path])
            with torch.no_grad():
                m.proj.weight.normal_(0.0, 0.1 / math.sqrt(D))
            models[f"mru[{kind}, {path}]"] = m
    best = bench_step(models, T, B, D, args.repeats)
    base = best.get("lstm")
    print(f"\n## Training step: forward + backward, T={T}, B={B}, input = hidden = {D}, best of {args.repeats}, 1 thread\n")
    print("| backbone | ms | x lstm |")
    print("|---|---|---|")
    for name, s in best.items():
        ratio = f"{s / base:.2f}" if base else "-"
        print(f"| {name} | {1e3 * s:.1f} | {ratio} |")


if __name__ == "__main__":
    main()
