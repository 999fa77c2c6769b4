"""Scans with episode resets: linear_scan and matrix_scan (docs/design.md sections 4 and 6).

Two implementations of each, chosen by ``method``:

- ``"loop"``: a loop over t inside a custom autograd.Function, writing into preallocated outputs
  (out=, addcmul/baddbmm, no per-step allocation) and with a hand-written backward that is itself
  a reverse loop. The right choice on CPU: on 2 cores a generic associative scan was much slower
  than a loop (docs/design.md section 6), and the per-op overhead of autograd through a Python loop
  (one graph node per op per step) is what this path removes.
- ``"parallel"``: Hillis-Steele over time (log2(T) stages of full-size batched ops) with a
  segmented combine for resets; the backward is the reverse scan by the same algorithm. Meant for
  GPUs, where T small kernels cost more than log2(T) big ones. It runs on any device, so the tests
  check it on CPU against the reference.
- ``"auto"`` (default): ``"parallel"`` on CUDA when T >= PARALLEL_MIN_T; on CPU only for small
  steps (see CPU_PARALLEL_MAX_STEP), where per-op overhead dominates; else ``"loop"``.

Resets are folded into the recurrence rather than applied with a mask per step:
linear_scan multiplies the gate by keep = ~reset (gate 0 at an episode start gives
h[t] = 0 * h[t-1] + x[t] exactly as long as h[t-1] is finite); matrix_scan restarts the
product from the identity. Both compute in the input dtype (no upcast): pass float32 for long
matrix products, which accumulate rounding error in bfloat16.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from memory.ops._checks import check_linear_scan, check_matrix_scan

METHODS = ("auto", "loop", "parallel")
# GPU: the parallel form from this T on (log2(T) stages of a few kernels each against T kernels).
PARALLEL_MIN_T = 32
# CPU: the parallel form only where per-op overhead dominates: at most this many elements per
# step and per sequence (measured on 2 cores, one thread, forward+backward: at <= 256 elements per
# step the parallel form beat the loop; from 1024 on the loop won, and at 256 elements x T=2048
# the loop won again as the working set left the cache; see benchmarks/ops.py).
CPU_PARALLEL_MAX_STEP = 256
CPU_PARALLEL_MAX_TOTAL = 2**17


def _choose(method: str, x: Tensor, name: str) -> str:
    if method not in METHODS:
        raise ValueError(f"{name}: method must be one of {METHODS}, got {method!r}")
    if method != "auto":
        return method
    T, step = x.shape[0], x[0].numel()
    if x.is_cuda:
        return "parallel" if T >= PARALLEL_MIN_T else "loop"
    small = step <= CPU_PARALLEL_MAX_STEP and T * step <= CPU_PARALLEL_MAX_TOTAL
    return "parallel" if T > 1 and small else "loop"


def _sum_to(t: Tensor, shape: torch.Size) -> Tensor:
    """Sum t over the dims where ``shape`` (same ndim) has size 1: the gradient of a broadcast."""
    dims = [i for i, (a, b) in enumerate(zip(t.shape, shape)) if b == 1 and a != 1]
    return t.sum(dims, keepdim=True) if dims else t


# ----------------------------------------------------------------------------------------------
# linear scan: h[t] = g[t] * h[t-1] + u[t]   (g already has the resets folded in: g = gate * keep)
# ----------------------------------------------------------------------------------------------


def _linear_loop(g: Tensor, u: Tensor, h0: Tensor | None) -> Tensor:
    """g [T, B, ...] broadcastable to u [T, B, ...]: h[t] = g[t] h[t-1] + u[t], h[-1] = h0 (None: 0)."""
    h = torch.empty_like(u, memory_format=torch.contiguous_format)  # [T, B, ...]
    gs, us, hs = g.unbind(0), u.unbind(0), h.unbind(0)
    prev = h0
    for t in range(len(us)):
        if prev is None:
            hs[t].copy_(us[t])
        else:
            torch.addcmul(us[t], gs[t], prev, out=hs[t])
        prev = hs[t]
    return h


def _linear_hillis_steele(g: Tensor, u: Tensor, h0: Tensor | None, reverse: bool = False) -> Tensor:
    """Same contract as _linear_loop, by log2(T) stages of the combine
    (g1, u1) + (g2, u2) = (g1 g2, g2 u1 + u2); a zero gate (a reset) cuts the product exactly.
    reverse=True runs in reversed time: h[t] = g[t] h[t+1] + u[t], h[T] = h0."""
    if reverse:
        return _linear_hillis_steele(g.flip(0), u.flip(0), h0).flip(0)
    T = u.shape[0]
    u = u.clone(memory_format=torch.contiguous_format)
    if h0 is not None:
        u[0].addcmul_(g[0], h0)
    s = 1
    while s < T:
        # Out-of-place right-hand sides: u[s:] and u[:-s] overlap.
        u[s:] = torch.addcmul(u[s:], g[s:], u[:-s])
        if 2 * s < T:
            g = torch.cat([g[:s], g[s:] * g[:-s]])
        s *= 2
    return u


_LINEAR_CORES = {"loop": _linear_loop, "parallel": _linear_hillis_steele}


class _LinearScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate: Tensor, x: Tensor, reset: Tensor, state0: Tensor | None, method: str) -> Tensor:
        keep = (~reset).to(x.dtype).view(*reset.shape, *([1] * (x.dim() - 2)))  # [T, B, 1, ...]
        g = gate * keep  # [T, B, gate's trailing dims]: 0 where an episode starts
        h = _LINEAR_CORES[method](g, x, state0)  # [T, B, ...]
        ctx.method = method
        ctx.gate_shape = gate.shape
        ctx.has_state0 = state0 is not None
        ctx.save_for_backward(g, keep, h, state0)
        return h

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_h: Tensor):
        g, keep, h, state0 = ctx.saved_tensors
        # a[t] = dL/dh[t] in total = grad_h[t] + g[t+1] a[t+1]: the reverse scan with gates shifted
        # by one step; a reset at t+1 (g[t+1] = 0) cuts it.
        # Complex inputs: torch's convention passes grad * conj(derivative), so the gates and
        # states enter conjugated (for real tensors conj() returns the tensor itself).
        g = g.conj()
        if ctx.method == "loop":
            a = _linear_loop_shifted_reverse(g, grad_h)  # [T, B, ...]
        else:
            g_next = torch.cat([g[1:], torch.zeros_like(g[:1])])
            a = _linear_hillis_steele(g_next, grad_h, None, reverse=True)
        grad_gate = grad_state0 = None
        if ctx.needs_input_grad[0]:
            # dh[t]/dg[t] = h[t-1] (state0 at t = 0); dg/dgate = keep.
            s0 = None if state0 is None else state0.conj()
            grad_g = _dot_to(a, h.conj(), s0, g.shape)  # [T, B, gate's trailing dims]
            grad_gate = _sum_to(grad_g * keep, ctx.gate_shape)
        if ctx.has_state0 and ctx.needs_input_grad[3]:
            grad_state0 = g[0] * a[0]
        return grad_gate, a, None, grad_state0, None


def _linear_loop_shifted_reverse(g: Tensor, grad_h: Tensor) -> Tensor:
    """a[T-1] = grad_h[T-1]; a[t] = grad_h[t] + g[t+1] a[t+1], written into one buffer."""
    a = torch.empty_like(grad_h, memory_format=torch.contiguous_format)
    gs, hs, as_ = g.unbind(0), grad_h.unbind(0), a.unbind(0)
    T = len(as_)
    as_[T - 1].copy_(hs[T - 1])
    for t in range(T - 2, -1, -1):
        torch.addcmul(hs[t], gs[t + 1], as_[t + 1], out=as_[t])
    return a


def _dot_to(a: Tensor, h: Tensor, state0: Tensor | None, shape: torch.Size) -> Tensor:
    """grad_g[t] = a[t] * h[t-1] (h[-1] = state0, zeros if None), summed down to ``shape``.

    When the gate's broadcast dims are all trailing (gate [T, B, H, 1, 1] for x [T, B, H, dk, dv],
    the mLSTM's case), the sum is a batched dot product done by bmm, with no full-size
    temporary and no shifted copy of h: allocating [T, B, ...]-sized temporaries cost more than
    the scan itself on CPU (fresh pages from mmap for every big buffer)."""
    T = a.shape[0]
    k = len(shape)
    while k > 0 and shape[k - 1] == 1 and a.shape[k - 1] != 1:
        k -= 1
    trailing_only = all(s == d for s, d in zip(shape[:k], a.shape[:k])) and k < a.dim()
    out = torch.zeros(shape, dtype=a.dtype, device=a.device)
    if trailing_only:
        n_k = a[0].numel() // max(1, int(torch.Size(shape[1:]).numel()))  # elements summed per gate entry

        def dot(u: Tensor, v: Tensor, o: Tensor) -> None:
            u, v = u.contiguous(), v.contiguous()
            torch.bmm(u.reshape(-1, 1, n_k), v.reshape(-1, n_k, 1), out=o.view(-1, 1, 1))

        if T > 1:
            dot(a[1:], h[:-1], out[1:])
        if state0 is not None:
            dot(a[0], state0, out[0])
        return out
    if T > 1:
        out[1:] = _sum_to(a[1:] * h[:-1], out[1:].shape)
    if state0 is not None:
        out[0] = _sum_to((a[0] * state0).unsqueeze(0), out[:1].shape)[0]
    return out


def linear_scan(
    gate: Tensor, x: Tensor, reset: Tensor, state0: Tensor | None = None, *, method: str = "auto"
) -> Tensor:
    """h[t] = gate[t] * (0 if reset[t] else h[t-1]) + x[t], h[-1] = state0 (zeros if None).

    x: [T, B, ...] float or complex; gate: same number of dims as x, each dim equal to x's or 1 (e.g.
    [T, B, H, 1, 1] for x [T, B, H, dk, dv], or [T, B, H, 1] for x [T, B, H, dk]);
    reset: bool [T, B]; state0: x.shape[1:] or None. Returns h [T, B, ...] in x's dtype.
    Differentiable in gate, x and state0. method: "auto" | "loop" | "parallel" (module docstring)."""
    check_linear_scan(gate, x, reset, state0)
    return _LinearScan.apply(gate, x, reset, state0, _choose(method, x, "linear_scan"))


# ----------------------------------------------------------------------------------------------
# matrix scan: H[t] = P[t] @ m[t],  P[t] = I if reset[t] else H[t-1]  (H[-1] = state0 or I)
# ----------------------------------------------------------------------------------------------


def _bmask(r: Tensor, ndim: int) -> Tensor:
    return r.view(*r.shape, *([1] * (ndim - r.dim())))


def _flat_steps(t: Tensor) -> Tensor:
    """[T, B, ..., o, o] -> [T, N, o, o] (a view when t's layout allows), so that per-step
    slices are ready for bmm: per-step reshapes cost as much as the small products themselves."""
    return t.reshape(t.shape[0], -1, *t.shape[-2:])


def _flat_reset(reset: Tensor, m: Tensor) -> Tensor:
    """reset [T, B] -> [T, N, 1, 1] matching _flat_steps(m)."""
    heads = m.shape[2:-2]
    r = reset.view(*reset.shape, *([1] * len(heads))).expand(*reset.shape, *heads)
    return r.reshape(reset.shape[0], -1, 1, 1)


def _matrix_loop(m: Tensor, reset: Tensor, state0: Tensor | None) -> Tensor:
    T, o = m.shape[0], m.shape[-1]
    eye = torch.eye(o, dtype=m.dtype, device=m.device)  # [o, o]
    H = torch.empty_like(m, memory_format=torch.contiguous_format)  # [T, B, ..., o, o]
    ms, Hs = _flat_steps(m).unbind(0), _flat_steps(H).unbind(0)  # [N, o, o] each
    rs = _flat_reset(reset, m).unbind(0)  # [N, 1, 1] each
    any_reset = reset.any(1).tolist()  # one sync, then per-step Python bools
    prev = None if state0 is None else state0.reshape(-1, o, o)
    for t in range(T):
        if prev is not None and any_reset[t]:
            prev = torch.where(rs[t], eye, prev)
        if prev is None:
            Hs[t].copy_(ms[t])
        else:
            torch.bmm(prev, ms[t], out=Hs[t])
        prev = Hs[t]
    return H


def _matrix_hillis_steele(m: Tensor, reset: Tensor, state0: Tensor | None) -> Tensor:
    """Segmented Hillis-Steele: (P1, r1) + (P2, r2) = (P2 if r2 else P1 @ P2, r1 or r2)
    (docs/design.md section 4); the carried state enters as state0 @ m[0] where reset[0] is False."""
    T = m.shape[0]
    P = m.clone(memory_format=torch.contiguous_format)  # [T, B, ..., o, o]
    if state0 is not None:
        P[0] = torch.where(_bmask(reset[0], m.dim() - 1), m[0], state0 @ m[0])
    r = reset.clone()  # [T, B]
    s = 1
    while s < T:
        r_mask = _bmask(r[s:], m.dim())
        P[s:] = torch.where(r_mask, P[s:], P[:-s] @ P[s:])
        r[s:] = r[s:] | r[:-s]
        s *= 2
    return P


def _affine_hillis_steele_reverse(A: Tensor, V: Tensor) -> Tensor:
    """Y[t] = V[t] + Y[t+1] @ A[t] for t = T-1..0 (Y[T] = 0; A is 0 where the chain is cut), in
    log2(T) stages. In reversed time Y[i] = Y[i-1] @ A[i] + V[i], whose combine is
    (A1, V1) + (A2, V2) = (A1 @ A2, V1 @ A2 + V2)."""
    A, V = A.flip(0), V.flip(0)  # flip copies
    T = V.shape[0]
    s = 1
    while s < T:
        V[s:] = torch.baddbmm(V[s:].flatten(0, -3), V[:-s].flatten(0, -3), A[s:].flatten(0, -3)).view_as(V[s:])
        if 2 * s < T:
            A = torch.cat([A[:s], A[:-s] @ A[s:]])
        s *= 2
    return V.flip(0)


def _matrix_backward_loop(m: Tensor, reset: Tensor, H: Tensor, state0: Tensor | None, grad_H: Tensor,
                          need_m: bool) -> tuple[Tensor | None, Tensor]:
    """Reverse loop: B[t] = G[t] + (B[t+1] @ m[t+1]^T unless reset[t+1]), dL/dm[t] = P[t]^T @ B[t].

    Only two step-sized buffers for B (ping-pong) besides the gradient itself: nothing
    [T, ...]-sized is allocated but grad_m. Returns (grad_m or None, B[0] with m[0]'s shape)."""
    T, o = m.shape[0], m.shape[-1]
    ms_T = _flat_steps(m).mT.unbind(0)  # m[t]^T, [N, o, o] each
    Hs, Gs = _flat_steps(H).unbind(0), _flat_steps(grad_H).unbind(0)
    rs = _flat_reset(reset, m).unbind(0)  # [N, 1, 1] each
    grad_m = torch.empty_like(m, memory_format=torch.contiguous_format) if need_m else None
    gms = _flat_steps(grad_m).unbind(0) if need_m else None
    bufs = (torch.empty_like(Hs[0]), torch.empty_like(Hs[0]))  # [N, o, o]
    any_reset = reset.any(1).tolist()
    eye = torch.eye(o, dtype=m.dtype, device=m.device)
    s0 = None if state0 is None else state0.reshape(-1, o, o)
    cur = bufs[0]
    cur.copy_(Gs[T - 1])
    for t in range(T - 1, -1, -1):
        if t < T - 1:
            nxt, cur = cur, bufs[(T - 1 - t) % 2]
            carried = torch.where(rs[t + 1], 0.0, nxt) if any_reset[t + 1] else nxt
            torch.baddbmm(Gs[t], carried, ms_T[t + 1], out=cur)
        if need_m:
            prev = Hs[t - 1] if t > 0 else s0
            if prev is None:  # P[0] = I
                gms[t].copy_(cur)
                continue
            if any_reset[t]:
                prev = torch.where(rs[t], eye, prev)
            torch.bmm(prev.mT, cur, out=gms[t])
    return grad_m, cur.view(m.shape[1:])


def _matrix_backward_hillis_steele(m: Tensor, reset: Tensor, H: Tensor, state0: Tensor | None,
                                   grad_H: Tensor, need_m: bool) -> tuple[Tensor | None, Tensor]:
    """Same result as _matrix_backward_loop, with B computed by the parallel affine scan."""
    nd = m.dim()
    keep = (~reset).to(m.dtype)  # [T, B]
    # Coefficients A[t] = keep[t+1] m[t+1]^T (A[T-1] unused): a reverse affine scan.
    A = torch.cat([m[1:].mT * _bmask(keep[1:], nd), torch.zeros_like(m[:1])])
    Bt = _affine_hillis_steele_reverse(A, grad_H)  # [T, B, ..., o, o]
    grad_m = None
    if need_m:
        eye = torch.eye(m.shape[-1], dtype=m.dtype, device=m.device)
        first = state0 if state0 is not None else eye.expand(m.shape[1:])
        P = torch.where(_bmask(reset, nd), eye, torch.cat([first.unsqueeze(0), H[:-1]]))
        grad_m = P.mT @ Bt
    return grad_m, Bt[0]


class _MatrixScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, m: Tensor, reset: Tensor, state0: Tensor | None, method: str) -> Tensor:
        core = _matrix_loop if method == "loop" else _matrix_hillis_steele
        H = core(m, reset, state0)
        ctx.method = method
        ctx.has_state0 = state0 is not None
        # Saved: the input m and the output H only (the output is alive anyway while it is used).
        # Autograd through a loop also keeps a copy of every product and of every masked state.
        ctx.save_for_backward(m, reset, H, state0)
        return H

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_H: Tensor):
        m, reset, H, state0 = ctx.saved_tensors
        core = _matrix_backward_loop if ctx.method == "loop" else _matrix_backward_hillis_steele
        grad_m, B0 = core(m, reset, H, state0, grad_H, ctx.needs_input_grad[0])
        grad_state0 = None
        if ctx.has_state0 and ctx.needs_input_grad[2]:
            # dL/dstate0 = B[0] @ m[0]^T where reset[0] is False, else 0.
            grad_state0 = torch.where(_bmask(reset[0], m.dim() - 1), 0.0, B0 @ m[0].mT)
        return grad_m, None, grad_state0, None


def matrix_scan(m: Tensor, reset: Tensor, state0: Tensor | None = None, *, method: str = "auto") -> Tensor:
    """H[t] = (I if reset[t] else H[t-1]) @ m[t], H[-1] = state0 (identity if None).

    m: [T, B, ..., o, o] float; reset: bool [T, B]; state0: m.shape[1:] or None.
    Returns H [T, B, ..., o, o] in m's dtype (products in m's dtype: pass float32).
    Differentiable in m and state0, with a custom backward that stores only m and H.
    method: "auto" | "loop" | "parallel" (module docstring)."""
    check_matrix_scan(m, reset, state0)
    return _MatrixScan.apply(m, reset, state0, _choose(method, m, "matrix_scan"))
