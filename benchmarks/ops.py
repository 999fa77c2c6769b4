"""Speed and memory of memory.ops: fast paths against the plain reference loops, side by side.

    python benchmarks/ops.py                      # default CPU run (about 1-2 minutes on 2 cores)
    python benchmarks/ops.py --device cuda        # parallel (Hillis-Steele) paths on a GPU
    python benchmarks/ops.py --T 128 512 --batch 16 64 --repeats 5
    python benchmarks/ops.py --only ns --ns-n 8192      # Newton-Schulz alone
    python benchmarks/ops.py --malloc-compare     # Newton-Schulz with/without glibc malloc tuning

Timings are best-of-N wall clock (--repeats) after one warm-up, measured in one process with
both implementations interleaved, so the ratios stay meaningful on a shared machine even when the
absolute numbers drift. "ratio" = reference time / fast time (> 1: the fast path wins).

Peak memory of the matrix scan's forward+backward is measured two ways:
- saved: bytes of the distinct storages autograd keeps for the backward (counted by
  torch.autograd.graph.saved_tensors_hooks, deduplicated by storage), not counting the input m and
  the output H: the extra memory a training step holds between forward and backward.
- peak: on CUDA, torch.cuda.max_memory_allocated over forward+backward minus the memory held
  before; on CPU, the peak resident set size (ru_maxrss) of a fresh subprocess running one
  forward+backward (VmHWM, reset through /proc/self/clear_refs just before), minus its resident
  size just before (tracemalloc does not see torch's allocations). The CPU figure includes
  allocator slack, so read it as approximate.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

from memory.ops import linear_scan, linear_scan_ref, matrix_scan, matrix_scan_ref, newton_schulz, newton_schulz_ref


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def best_ms(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def _fwd(f, *args):
    def run():
        with torch.no_grad():
            f(*args)

    return run


def _fwd_bwd(f, inputs, *args):
    def run():
        out = f(*args)
        torch.autograd.grad(out.sum(), inputs)

    return run


def _resets(T: int, B: int, p: float, device: torch.device) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return (torch.rand(T, B, generator=g) < p).to(device)


def _table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print(f"\n{title}")
    print("  ".join(h.rjust(w) for h, w in zip(header, widths)))
    for r in rows:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths)))
    sys.stdout.flush()


def _sizes(args) -> list[tuple[int, int]]:
    if args.batch:
        return [(T, B) for T in args.T for B in args.batch]
    # Default: RL-sized batches, keeping the T = 2048 tensors (and the run) moderate.
    return [(T, B) for T in args.T for B in ((16, 64) if T <= 512 else (16,))]


def bench_scans(args, device: torch.device) -> None:
    methods = ["auto"] + (["parallel"] if args.with_parallel and device.type == "cpu" else [])
    H, dk, dv, o = 4, 16, 16, 8
    header = ["T", "B"]
    for name in ["ref"] + methods:
        header += [f"{name} fwd ms"]
    header += [f"ratio {m}" for m in methods]
    for name in ["ref"] + methods:
        header += [f"{name} f+b ms"]
    header += [f"ratio {m}" for m in methods]

    for label, make in [
        (f"linear_scan: x [T, B, {H}, {dk}, {dv}], gate [T, B, {H}, 1, 1], resets p=0.01", "lin_mat"),
        (f"linear_scan: x [T, B, {H}, {dk}], gate [T, B, {H}, 1], resets p=0.01", "lin_vec"),
        (f"matrix_scan: m [T, B, {H}, {o}, {o}], resets p=0.01", "mat"),
    ]:
        rows = []
        for T, B in _sizes(args):
            reset = _resets(T, B, 0.01, device)
            if make.startswith("lin"):
                xs = (T, B, H, dk, dv) if make == "lin_mat" else (T, B, H, dk)
                gs = (T, B, H, 1, 1) if make == "lin_mat" else (T, B, H, 1)
                x = torch.randn(xs, device=device, requires_grad=True)
                gate = torch.rand(gs, device=device, requires_grad=True)
                inputs = [gate, x]
                ref = lambda: linear_scan_ref(gate, x, reset)  # noqa: E731
                fast = {m: (lambda m=m: linear_scan(gate, x, reset, method=m)) for m in methods}
            else:
                m_ = torch.eye(o, device=device) + 0.1 * torch.randn(T, B, H, o, o, device=device)
                m_.requires_grad_()
                inputs = [m_]
                ref = lambda: matrix_scan_ref(m_, reset)  # noqa: E731
                fast = {m: (lambda m=m: matrix_scan(m_, reset, method=m)) for m in methods}
            fw = {"ref": best_ms(_fwd(ref), device, args.repeats)}
            fb = {"ref": best_ms(_fwd_bwd(ref, inputs), device, args.repeats)}
            for m, f in fast.items():
                fw[m] = best_ms(_fwd(f), device, args.repeats)
                fb[m] = best_ms(_fwd_bwd(f, inputs), device, args.repeats)
            row = [str(T), str(B)]
            row += [f"{fw[k]:.1f}" for k in ["ref"] + methods]
            row += [f"{fw['ref'] / fw[m]:.2f}x" for m in methods]
            row += [f"{fb[k]:.1f}" for k in ["ref"] + methods]
            row += [f"{fb['ref'] / fb[m]:.2f}x" for m in methods]
            rows.append(row)
            del inputs, ref, fast
        _table(label + f" ({device.type}, best of {args.repeats})", header, rows)


def _saved_bytes(fn, inputs: list[torch.Tensor]) -> int:
    """Bytes of the distinct storages autograd saves for the backward, not counting the inputs'
    and the output's storages (those exist whether or not a backward follows)."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        s = t.untyped_storage()
        seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    for t in [*inputs, out]:
        seen.pop(t.untyped_storage().data_ptr(), None)
    del out
    return sum(seen.values())


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def _memory_child(kind: str, T: int, B: int, device: str) -> dict:
    """One forward+backward of the matrix scan in this (fresh) process; returns the peak."""
    torch.set_num_threads(1)
    dev = torch.device(device)
    H, o = 4, 8
    # Built in place: freed temporaries would stay resident and be reused, hiding allocations.
    m = torch.empty(T, B, H, o, o, device=dev).normal_().mul_(0.1)
    m.diagonal(dim1=-2, dim2=-1).add_(1.0)
    m.requires_grad_()
    reset = _resets(T, B, 0.01, dev)
    f = (lambda: matrix_scan_ref(m, reset)) if kind == "ref" else (lambda: matrix_scan(m, reset))
    if dev.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        torch.autograd.grad(f().sum(), [m])
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        # Reset the kernel's peak-RSS mark (VmHWM) so import-time peaks do not count.
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        base = _status_kb("VmRSS")
        torch.autograd.grad(f().sum(), [m])
        peak = (_status_kb("VmHWM") - base) * 1024
    saved = _saved_bytes(f, [m])  # after the peak: this forward's freed memory would be reused
    return {"saved": saved, "peak": peak, "m_bytes": m.numel() * m.element_size()}


def bench_memory(args, device: torch.device) -> None:
    rows = []
    for T, B in _sizes(args):
        res = {}
        for kind in ("ref", "fast"):
            cmd = [sys.executable, __file__, "--memory-child", kind, str(T), str(B), "--device", device.type]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            res[kind] = json.loads(out.strip().splitlines()[-1])
        mb = lambda b: f"{b / 2**20:.1f}"  # noqa: E731
        rows.append([
            str(T), str(B), mb(res["ref"]["m_bytes"]),
            mb(res["ref"]["saved"]), mb(res["fast"]["saved"]), f"{res['fast']['saved'] / max(1, res['ref']['saved']):.2f}",
            mb(res["ref"]["peak"]), mb(res["fast"]["peak"]), f"{res['fast']['peak'] / max(1, res['ref']['peak']):.2f}",
        ])
    _table(
        f"matrix_scan forward+backward memory, m [T, B, 4, 8, 8] ({device.type}; MiB; fast/ref: lower is better)",
        ["T", "B", "m MiB", "saved ref", "saved fast", "fast/ref", "peak ref", "peak fast", "fast/ref"],
        rows,
    )


def bench_ns(args, device: torch.device) -> None:
    rows = []
    for n in args.ns_sizes:
        N = args.ns_n
        x = torch.randn(N, n, n, device=device)
        xg = x.clone().requires_grad_()
        t = {
            "ref fwd": best_ms(_fwd(newton_schulz_ref, x), device, args.repeats),
            "fast fwd": best_ms(_fwd(newton_schulz, x), device, args.repeats),
            "ref f+b": best_ms(_fwd_bwd(newton_schulz_ref, [xg], xg), device, args.repeats),
            "fast f+b": best_ms(_fwd_bwd(newton_schulz, [xg], xg), device, args.repeats),
        }
        us = {k: v * 1e3 / N for k, v in t.items()}
        row = [f"[{N}, {n}, {n}]"]
        row += [f"{us['ref fwd']:.2f}", f"{us['fast fwd']:.2f}", f"{t['ref fwd'] / t['fast fwd']:.2f}x"]
        row += [f"{us['ref f+b']:.2f}", f"{us['fast f+b']:.2f}", f"{t['ref f+b'] / t['fast f+b']:.2f}x"]
        if device.type == "cuda":
            tb = best_ms(_fwd(lambda: newton_schulz(x, dtype=torch.bfloat16)), device, args.repeats)
            row += [f"{tb * 1e3 / N:.2f}"]
        rows.append(row)
    header = ["x", "ref fwd us/mat", "fast fwd us/mat", "ratio", "ref f+b us/mat", "fast f+b us/mat", "ratio"]
    if device.type == "cuda":
        header += ["bf16 fwd us/mat"]
    env = " ".join(f"{k}={os.environ[k]}" for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_") if k in os.environ)
    _table(f"newton_schulz, 5 steps ({device.type}, best of {args.repeats}{'; ' + env if env else ''})", header, rows)


def malloc_compare(args) -> None:
    base = [sys.executable, __file__, "--only", "ns", "--device", args.device, "--repeats", str(args.repeats),
            "--ns-n", str(args.ns_n), "--ns-sizes", *map(str, args.ns_sizes)]
    for extra in ({}, {"MALLOC_MMAP_THRESHOLD_": "67108864", "MALLOC_TRIM_THRESHOLD_": "1073741824"}):
        env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
        env.update(extra)
        print(subprocess.run(base, env=env, capture_output=True, text=True, check=True).stdout, end="")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--T", type=int, nargs="+", default=[128, 512, 2048])
    p.add_argument("--batch", type=int, nargs="+", default=None,
                   help="batch sizes (default: 16 and 64 for T <= 512, 16 for T = 2048)")
    p.add_argument("--repeats", type=int, default=3, help="best of N timings")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 on 2-core machines)")
    p.add_argument("--only", choices=["scans", "memory", "ns"], nargs="+", default=["scans", "memory", "ns"])
    p.add_argument("--with-parallel", action="store_true", help="also time the parallel form on CPU")
    p.add_argument("--ns-n", type=int, default=4096, help="number of matrices N for Newton-Schulz")
    p.add_argument("--ns-sizes", type=int, nargs="+", default=[16, 32])
    p.add_argument("--malloc-compare", action="store_true",
                   help="run the Newton-Schulz table with and without glibc MALLOC_* tuning")
    p.add_argument("--memory-child", nargs=3, metavar=("KIND", "T", "B"), help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_child:
        kind, T, B = args.memory_child
        print(json.dumps(_memory_child(kind, int(T), int(B), args.device)))
        return
    torch.manual_seed(0)
    device = torch.device(args.device)
    if args.malloc_compare:
        malloc_compare(args)  # each child prints its own header
        return
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, "
          f"{os.cpu_count()} cpus" + (f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""))
    if "scans" in args.only:
        bench_scans(args, device)
    if "memory" in args.only:
        bench_memory(args, device)
    if "ns" in args.only:
        bench_ns(args, device)


if __name__ == "__main__":
    main()
