"""The linear scan in log space, with episode resets: log_linear_scan.

For positive coefficients a[t] > 0, b[t] > 0, the recurrence h[t] = a[t] (0 if reset[t] else
h[t-1]) + b[t] stays positive and can be carried as l[t] = log h[t]:

    l[t] = logaddexp(log_a[t] + l[t-1], log_b[t]),   log_a[t] := -inf where reset[t]

(a reset multiplies the carry by 0, which is -inf in log space; logaddexp(-inf, y) = y exactly).
This is minGRU's log-space form (Feng et al. 2024, "Were RNNs All We Needed?"). The paper computes
it as l = a* + logcumsumexp(log_b - a*) with a* = cumsum(log_a), which needs no new kernel but has
no exact form with resets: a reset makes a* = -inf for the rest of the sequence, and cutting the
running logcumsumexp at an episode start by subtraction (log(e^L[t] - e^L[s-1])) cancels
catastrophically whenever the earlier episode carried most of the mass. So the scan here is the
same associative scan as memory.ops.linear_scan, in the (logaddexp, +) semiring, where a reset is an
exact -inf gate:

- ``"loop"``: one logaddexp per step into a preallocated output (the CPU path);
- ``"parallel"``: Hillis-Steele over time with the combine
  (A1, L1) + (A2, L2) = (A1 + A2, logaddexp(A2 + L1, L2)); log2(T) stages (GPU form);
- ``"auto"``: as linear_scan (memory.ops.scan._choose).

The backward is written by hand and never leaves ordinary space: with w_a[t] = exp(log_a[t] +
l[t-1] - l[t]) and w_b[t] = exp(log_b[t] - l[t]) (both in [0, 1], w_a + w_b = 1 where the carry is
finite), the adjoint G[t] = dL/dl[t] in total is the reverse linear scan G[t] = grad[t] + w_a[t+1]
G[t+1], and dL/dlog_a = G w_a, dL/dlog_b = G w_b, dL/dlog_h0 = w_a[0] G[0]. Gates in [0, 1] make
that scan as stable as the forward; a -inf carry (h = 0, e.g. a zero initial state) gives w_a = 0
and a zero, not NaN, gradient (torch.logaddexp's own backward returns NaN at (-inf, -inf)).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from memory.ops._checks import check_log_linear_scan
from memory.ops.scan import _choose, _linear_hillis_steele, _linear_loop_shifted_reverse, _sum_to

NEG_INF = float("-inf")


def _log_loop(la: Tensor, lb: Tensor, lh0: Tensor | None) -> Tensor:
    """la [T, B, ...] broadcastable to lb [T, B, ...], resets folded in as -inf:
    l[t] = logaddexp(la[t] + l[t-1], lb[t]), l[-1] = lh0 (None: -inf, i.e. l[0] = lb[0])."""
    out = torch.empty_like(lb, memory_format=torch.contiguous_format)
    las, lbs, ls = la.unbind(0), lb.unbind(0), out.unbind(0)
    prev = lh0
    for t in range(len(ls)):
        if prev is None:
            ls[t].copy_(lbs[t])
        else:
            torch.logaddexp(las[t] + prev, lbs[t], out=ls[t])
        prev = ls[t]
    return out


def _log_hillis_steele(la: Tensor, lb: Tensor, lh0: Tensor | None) -> Tensor:
    """Same contract as _log_loop in log2(T) stages; a -inf gate (a reset) cuts the sum exactly."""
    T = lb.shape[0]
    out = lb.clone(memory_format=torch.contiguous_format)
    if lh0 is not None:
        out[0] = torch.logaddexp(la[0] + lh0, out[0])
    s = 1
    while s < T:
        # Out-of-place right-hand side: out[s:] and out[:-s] overlap.
        out[s:] = torch.logaddexp(la[s:] + out[:-s], out[s:])
        if 2 * s < T:
            la = torch.cat([la[:s], la[s:] + la[:-s]])
        s *= 2
    return out


_LOG_CORES = {"loop": _log_loop, "parallel": _log_hillis_steele}


def _weight(num: Tensor, l: Tensor) -> Tensor:
    """exp(num - l), 0 where l = -inf (then num = -inf too: an empty sum, nothing flows)."""
    return torch.where(l == NEG_INF, 0.0, torch.exp(num - l))


class _LogLinearScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, log_a: Tensor, log_b: Tensor, reset: Tensor, log_h0: Tensor | None, method: str) -> Tensor:
        r = reset.view(*reset.shape, *([1] * (log_b.dim() - 2)))  # [T, B, 1, ...]
        la = torch.where(r, NEG_INF, log_a)  # [T, B, log_a's trailing dims]: -inf where an episode starts
        l = _LOG_CORES[method](la, log_b, log_h0)  # [T, B, ...]
        ctx.method = method
        ctx.a_shape = log_a.shape
        ctx.has_h0 = log_h0 is not None
        ctx.save_for_backward(la, log_b, l, log_h0)
        return l

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_l: Tensor):
        la, lb, l, lh0 = ctx.saved_tensors
        first = torch.full_like(l[:1], NEG_INF) if lh0 is None else lh0.unsqueeze(0)
        prev = torch.cat([first, l[:-1]])  # l[t-1], [T, B, ...]
        w_a = _weight(la + prev, l)  # dl[t]/dl[t-1] = dl[t]/dlog_a[t]; 0 at a reset
        w_b = _weight(lb, l)  # dl[t]/dlog_b[t]
        if ctx.method == "loop":
            G = _linear_loop_shifted_reverse(w_a, grad_l)
        else:
            G = _linear_hillis_steele(torch.cat([w_a[1:], torch.zeros_like(w_a[:1])]), grad_l, None, reverse=True)
        grad_a = _sum_to(G * w_a, ctx.a_shape) if ctx.needs_input_grad[0] else None
        grad_b = G * w_b if ctx.needs_input_grad[1] else None
        grad_h0 = w_a[0] * G[0] if ctx.has_h0 and ctx.needs_input_grad[3] else None
        return grad_a, grad_b, None, grad_h0, None


def log_linear_scan(
    log_a: Tensor, log_b: Tensor, reset: Tensor, log_h0: Tensor | None = None, *, method: str = "auto"
) -> Tensor:
    """log h[t] for h[t] = a[t] * (0 if reset[t] else h[t-1]) + b[t], h[-1] = h0, all in log space:
    l[t] = logaddexp(log_a[t] + (-inf if reset[t] else l[t-1]), log_b[t]), l[-1] = log_h0
    (None: h0 = 0, i.e. -inf).

    log_b: [T, B, ...] real float; log_a: same number of dims, each dim equal to log_b's or 1;
    reset: bool [T, B]; log_h0: log_b.shape[1:] or None. Any entry may be -inf (a zero factor).
    Returns l [T, B, ...] in log_b's dtype. Differentiable in log_a, log_b and log_h0 (hand-written
    backward, finite at -inf entries). method: "auto" | "loop" | "parallel" (module docstring)."""
    check_log_linear_scan(log_a, log_b, reset, log_h0)
    return _LogLinearScan.apply(log_a, log_b, reset, log_h0, _choose(method, log_b, "log_linear_scan"))
