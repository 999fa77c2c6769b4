"""Training-step cost of memory backbones side by side: time and memory, with ratios to lstm.

One training step = forward of a [T, B, input] sequence with a few random episode resets per env
from a zero state, a scalar loss, and backward (parameter gradients); no optimizer. The act
column is one no-grad T = 1 step for B envs (what each env step of a rollout costs). Every
(B, T) size is measured round-robin across the backbones (one step of each in turn, repeated),
best of --repeats after one warm-up step, so the backbones share the same machine load.

Memory, two columns:
- peak: the most bytes live at once during one step, above what was live before it. CPU:
  torch.profiler(profile_memory=True) records every allocation and free of the CPU allocator
  (transients inside ops included); the peak of their running sum. CUDA:
  torch.cuda.max_memory_allocated minus the bytes allocated before the step.
- saved: bytes autograd keeps between forward and backward (unique storages seen by
  torch.autograd.graph.saved_tensors_hooks): what stacking more layers or a longer graph adds.

    python benchmarks/backbones.py --backbones lstm mlstm mlstm-orth 'mru:kind=ldu' \\
        [--batch 16 64] [--seq 128 512] [--hidden 128] [--input 64] [--device cpu] \\
        [--threads 1] [--repeats 3] [--profile]

A backbone is NAME or NAME:key=value,key=value (its --memory-options). --profile prints
torch.profiler's top operators (self time) of one step per backbone at the last size.
Single-threaded by default: on the shared 2-core machines more threads hurt.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass

# The profiler used for CPU peak memory warns about blocks allocated before it started; noise here.
os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")

import torch  # noqa: E402

import memory  # noqa: E402


@dataclass
class Spec:
    label: str
    name: str
    options: dict


def parse_spec(text: str) -> Spec:
    """'mru:kind=ldu,order=8' -> Spec('mru:kind=ldu,order=8', 'mru', {'kind': 'ldu', 'order': 8})."""
    name, _, rest = text.partition(":")
    items = [s for s in rest.split(",") if s]
    return Spec(text, name, memory.parse_options(name, items))


def make_inputs(T: int, B: int, input_size: int, resets_per_env: int, device: torch.device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, B, input_size, generator=g)  # [T, B, I]
    reset = torch.zeros(T, B, dtype=torch.bool)
    for b in range(B):  # a few episode starts per env at random steps
        reset[torch.randint(1, T, (resets_per_env,), generator=g), b] = True
    return x.to(device), reset.to(device)


def train_step(model: memory.Memory, x: torch.Tensor, reset: torch.Tensor) -> None:
    model.zero_grad(set_to_none=True)
    state = model.initial_state(x.shape[1], device=x.device)
    y, _ = model(x, state, reset)
    y.square().mean().backward()


def saved_bytes(model: memory.Memory, x: torch.Tensor, reset: torch.Tensor) -> int:
    """Bytes of the unique storages autograd saves for backward in one forward."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor):
        s = t.untyped_storage()
        storages[s.data_ptr()] = max(storages.get(s.data_ptr(), 0), s.nbytes())
        return t

    model.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y, _ = model(x, model.initial_state(x.shape[1], device=x.device), reset)
    y.square().mean().backward()
    return sum(storages.values())


def peak_bytes(model: memory.Memory, x: torch.Tensor, reset: torch.Tensor) -> int:
    """Peak bytes allocated during one training step above those live before it."""
    if x.device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        train_step(model, x, reset)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        train_step(model, x, reset)
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:  # nbytes > 0: an allocation, < 0: a free
        live += e.nbytes()
        peak = max(peak, live)
    return peak


def act_step(model: memory.Memory, x: torch.Tensor, reset: torch.Tensor, state) -> None:
    with torch.no_grad():
        model(x[:1], state, reset[:1])


def timed_act(model, x, reset, device, n: int = 20) -> float:
    """Best single T = 1 no-grad step of n."""
    state = model.initial_state(x.shape[1], device=x.device)
    best = float("inf")
    for _ in range(n):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        act_step(model, x, reset, state)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def timed(model, x, reset, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    train_step(model, x, reset)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backbones", nargs="+", default=["lstm", "mlstm", "mlstm-orth", "mingru", "lru", "ffm", "ssm", "trxl"])
    p.add_argument("--batch", type=int, nargs="+", default=[16, 64])
    p.add_argument("--seq", type=int, nargs="+", default=[128, 512])
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--input", type=int, default=64)
    p.add_argument("--resets", type=int, default=3, help="random episode starts per env and sequence")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3, help="timed steps per backbone; the best counts")
    p.add_argument("--profile", action="store_true")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    try:
        specs = [parse_spec(s) for s in args.backbones]
    except ValueError as e:  # unknown backbone or option: one line, exit status 2
        p.error(str(e))
    base = next((s.label for s in specs if s.name == "lstm"), specs[0].label)
    print(f"device={device} threads={torch.get_num_threads()} hidden={args.hidden} input={args.input} "
          f"resets/env={args.resets} best of {args.repeats}; ratios (x) to {base}")
    w = max(24, *(len(s.label) + 1 for s in specs))
    header = (
        f"{'backbone':<{w}} {'B':>4} {'T':>5} {'step ms':>9} {'x':>6} "
        f"{'peak MiB':>9} {'x':>6} {'saved MiB':>9} {'x':>6} {'act ms':>7} {'x':>6}"
    )

    models = {}
    for s in specs:
        torch.manual_seed(0)
        models[s.label] = memory.make(s.name, args.input, args.hidden, **s.options).to(device)

    for B in args.batch:
        for T in args.seq:
            x, reset = make_inputs(T, B, args.input, args.resets, device)
            for m in models.values():  # warm-up (allocator, lazy init)
                train_step(m, x, reset)
            best = {k: float("inf") for k in models}
            for _ in range(args.repeats):  # round-robin: the backbones share the machine's load
                for k, m in models.items():
                    best[k] = min(best[k], timed(m, x, reset, device))
            act = {k: timed_act(m, x, reset, device) for k, m in models.items()}
            peak = {k: peak_bytes(m, x, reset) for k, m in models.items()}
            saved = {k: saved_bytes(m, x, reset) for k, m in models.items()}
            print()
            print(header)
            for k in models:
                print(
                    f"{k:<{w}} {B:>4} {T:>5} {best[k] * 1e3:>9.1f} {best[k] / best[base]:>6.2f} "
                    f"{peak[k] / 2**20:>9.1f} {peak[k] / peak[base]:>6.2f} "
                    f"{saved[k] / 2**20:>9.1f} {saved[k] / saved[base]:>6.2f} "
                    f"{act[k] * 1e3:>7.3f} {act[k] / act[base]:>6.2f}"
                )

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        for k, m in models.items():
            with profile(activities=activities) as prof:
                train_step(m, x, reset)
                if device.type == "cuda":
                    torch.cuda.synchronize()
            print(f"\n== profile: {k}, B={B}, T={T} (one training step; top operators by self time)")
            print(prof.key_averages().table(sort_by=sort, row_limit=12))


if __name__ == "__main__":
    main()
