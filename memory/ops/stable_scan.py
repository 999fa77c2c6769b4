"""The matrix scan carried as a log-scale and a unit-norm matrix (docs/design.md section 4,
"The stable evaluation").

``stable_matrix_scan(m, reset, state0=None)`` computes the same products as ``matrix_scan``,
H[t] = (I if reset[t] else H[t-1]) @ m[t], but returns each as H[t] = exp(s[t]) U[t] with
||U[t]||_F = 1, so that neither part overflows or underflows where H itself would (a product of
T matrices whose norm grows or shrinks geometrically leaves float32 after a few hundred steps;
s grows linearly). The identity (a reset, or no state0) is (U, s) = (I / sqrt(o), log sqrt(o)).

Step t (the recurrent form):      P = U[t-1] @ m[t],  n = ||P||_F,  U[t] = P / n,  s[t] = s[t-1] + log n
Combine of two elements (scan):   (U1, s1) * (U2, s2) = (U1 U2 / ||U1 U2||_F, s1 + s2 + log ||U1 U2||_F)
which is associative because it is the matrix product exp(s1) U1 exp(s2) U2 written in the same
form; the inputs enter as (m / ||m||_F, log ||m||_F).

Two implementations, chosen by ``method`` as in memory.ops.scan:
- ``"loop"``: a loop over t in a custom autograd.Function with a hand-written reverse loop
  (the backward of the normalization: with Ubar, sbar the total gradients reaching U[t], s[t],
  Pbar = (Ubar - (<Ubar, U[t]> - sbar) U[t]) / n; then mbar[t] = U[t-1]^T Pbar, and U[t-1], s[t-1]
  receive Pbar m[t]^T and sbar unless reset[t]). Saves m, U and n only.
- ``"parallel"``: segmented Hillis-Steele with the combine above, differentiated by autograd
  (log2(T) stages of full-size batched ops; meant for GPUs).
The reference is ``memory.ops.reference.stable_matrix_scan_ref``, a plain loop under autograd.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from memory.ops._checks import check_stable_matrix_scan
from memory.ops.scan import _choose


def _bmask(r: Tensor, ndim: int) -> Tensor:
    return r.view(*r.shape, *([1] * (ndim - r.dim())))


def identity_state(shape: torch.Size | tuple[int, ...], o: int, dtype: torch.dtype,
                   device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """The identity as (U, s): U = I / sqrt(o) [*shape, o, o], s = log sqrt(o) [*shape]."""
    u = (torch.eye(o, dtype=dtype, device=device) / math.sqrt(o)).expand(*shape, o, o).clone()
    s = torch.full(tuple(shape), 0.5 * math.log(o), dtype=dtype, device=device)
    return u, s


def _norm(p: Tensor) -> Tensor:
    """||p||_F [...] for p [..., o, o], floored at the dtype's smallest normal (an exactly zero
    product then gives U = 0 and a very negative s instead of NaN)."""
    return torch.linalg.matrix_norm(p).clamp_min(torch.finfo(p.dtype).tiny)


# ----------------------------------------------------------------------------------------------
# loop with a hand-written backward
# ----------------------------------------------------------------------------------------------


def _flat(t: Tensor, lead: int) -> Tensor:
    """[T, B, ..., o, o] -> [T, N, o, o] (or [T, B, ...] -> [T, N] with lead=0): per-step slices ready
    for bmm; per-step reshapes would cost as much as the small products themselves."""
    return t.reshape(t.shape[0], -1, *t.shape[t.dim() - lead:])


def _flat_reset(reset: Tensor, m: Tensor) -> Tensor:
    """reset [T, B] -> [T, N] matching _flat(m, 2)."""
    heads = m.shape[2:-2]
    return reset.view(*reset.shape, *([1] * len(heads))).expand(*reset.shape, *heads).reshape(reset.shape[0], -1)


def _loop_forward(m: Tensor, reset: Tensor, u0: Tensor | None, s0: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    T, o = m.shape[0], m.shape[-1]
    tiny = torch.finfo(m.dtype).tiny
    U = torch.empty_like(m, memory_format=torch.contiguous_format)  # [T, B, ..., o, o]
    s = m.new_empty(m.shape[:-2])  # [T, B, ...]
    n = m.new_empty(m.shape[:-2])
    ms, Us = _flat(m, 2).unbind(0), _flat(U, 2).unbind(0)  # [N, o, o] each
    ss, ns = _flat(s, 0).unbind(0), _flat(n, 0).unbind(0)  # [N] each
    rs = _flat_reset(reset, m).unbind(0)  # [N] each
    N = ms[0].shape[0]
    eye_u, eye_s = identity_state((N,), o, m.dtype, m.device)
    prev_u, prev_s = (eye_u, eye_s) if u0 is None else (u0.reshape(N, o, o), s0.reshape(N))
    any_reset = reset.any(dim=1).tolist()  # one sync, then per-step Python bools
    for t in range(T):
        if any_reset[t]:
            prev_u = torch.where(rs[t][:, None, None], eye_u, prev_u)
            prev_s = torch.where(rs[t], eye_s, prev_s)
        torch.bmm(prev_u, ms[t], out=Us[t])
        torch.linalg.vector_norm(Us[t], dim=(-2, -1), out=ns[t])
        ns[t].clamp_(min=tiny)
        Us[t].div_(ns[t][:, None, None])
        torch.add(prev_s, ns[t].log(), out=ss[t])
        prev_u, prev_s = Us[t], ss[t]
    return U, s, n


def _loop_backward(m: Tensor, reset: Tensor, U: Tensor, n: Tensor, u0: Tensor | None,
                   gU: Tensor, gs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    T, o = m.shape[0], m.shape[-1]
    grad_m = torch.empty_like(m, memory_format=torch.contiguous_format)
    ms, Us, gms = _flat(m, 2).unbind(0), _flat(U, 2).unbind(0), _flat(grad_m, 2).unbind(0)
    gUs, gss, ns = _flat(gU, 2).unbind(0), _flat(gs, 0).unbind(0), _flat(n, 0).unbind(0)
    rs = _flat_reset(reset, m).unbind(0)
    N = ms[0].shape[0]
    eye_u = identity_state((N,), o, m.dtype, m.device)[0]
    u_first = eye_u if u0 is None else u0.reshape(N, o, o)
    carry_u = torch.zeros_like(ms[0])  # gradient reaching U[t] from step t+1
    carry_s = torch.zeros_like(ns[0])
    any_reset = reset.any(dim=1).tolist()
    for t in range(T - 1, -1, -1):
        ubar = gUs[t] + carry_u
        sbar = gss[t] + carry_s
        inner = torch.bmm(ubar.view(N, 1, o * o), Us[t].view(N, o * o, 1)).view(N)  # <Ubar, U[t]>
        # Pbar = (Ubar - (<Ubar, U> - sbar) U) / n
        pbar = torch.addcmul(ubar, (sbar - inner)[:, None, None], Us[t]).div_(ns[t][:, None, None])
        prev_u = Us[t - 1] if t > 0 else u_first
        if any_reset[t]:
            prev_u = torch.where(rs[t][:, None, None], eye_u, prev_u)
        torch.bmm(prev_u.mT, pbar, out=gms[t])
        carry_u = torch.bmm(pbar, ms[t].mT)
        carry_s = sbar
        if any_reset[t]:
            carry_u = torch.where(rs[t][:, None, None], 0.0, carry_u)
            carry_s = torch.where(rs[t], 0.0, carry_s)
    return grad_m, carry_u.view(m.shape[1:]), carry_s.view(n.shape[1:])


class _StableScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, m: Tensor, reset: Tensor, u0: Tensor | None, s0: Tensor | None):
        U, s, n = _loop_forward(m, reset, u0, s0)
        ctx.has_state0 = u0 is not None
        ctx.save_for_backward(m, reset, U, n, u0)
        return U, s

    @staticmethod
    @once_differentiable
    def backward(ctx, gU: Tensor | None, gs: Tensor | None):
        m, reset, U, n, u0 = ctx.saved_tensors
        gU = torch.zeros_like(U) if gU is None else gU
        gs = torch.zeros_like(n) if gs is None else gs
        grad_m, g_u0, g_s0 = _loop_backward(m, reset, U, n, u0, gU, gs)
        if not ctx.has_state0:
            g_u0 = g_s0 = None
        return grad_m, None, g_u0, g_s0


# ----------------------------------------------------------------------------------------------
# segmented Hillis-Steele, differentiated by autograd
# ----------------------------------------------------------------------------------------------


def _combine(u1: Tensor, s1: Tensor, u2: Tensor, s2: Tensor) -> tuple[Tensor, Tensor]:
    p = u1 @ u2
    nrm = _norm(p)
    return p / nrm[..., None, None], s1 + s2 + nrm.log()


def _parallel(m: Tensor, reset: Tensor, u0: Tensor | None, s0: Tensor | None) -> tuple[Tensor, Tensor]:
    T = m.shape[0]
    nrm = _norm(m)
    u, s = m / nrm[..., None, None], nrm.log()  # each input as (m / ||m||, log ||m||)
    r = reset
    if u0 is not None:
        # The carried state enters as state0 * m[0] where reset[0] is False; element 0 then holds a
        # full prefix, so it is flagged as a segment start.
        cu, cs = _combine(u0, s0, u[0], s[0])
        fresh = _bmask(reset[0], m.dim() - 1)
        u = torch.cat([torch.where(fresh, u[0], cu)[None], u[1:]])
        s = torch.cat([torch.where(_bmask(reset[0], m.dim() - 3), s[0], cs)[None], s[1:]])
        r = torch.cat([torch.ones_like(reset[:1]), reset[1:]])
    d = 1
    while d < T:
        cu, cs = _combine(u[:-d], s[:-d], u[d:], s[d:])
        rm = r[d:]
        u = torch.cat([u[:d], torch.where(_bmask(rm, m.dim()), u[d:], cu)])
        s = torch.cat([s[:d], torch.where(_bmask(rm, m.dim() - 2), s[d:], cs)])
        r = torch.cat([r[:d], r[d:] | r[:-d]])
        d *= 2
    return u, s


def stable_matrix_scan(m: Tensor, reset: Tensor, state0: tuple[Tensor, Tensor] | None = None, *,
                       method: str = "auto") -> tuple[Tensor, Tensor]:
    """(U, s) with H[t] = exp(s[t]) U[t], ||U[t]||_F = 1, where H[t] = (I if reset[t] else H[t-1]) @ m[t].

    m: [T, B, ..., o, o] float; reset: bool [T, B]; state0: (U0 m.shape[1:], s0 m.shape[1:-2]) or None
    (the identity). Returns U [T, B, ..., o, o] and s [T, B, ...] in m's dtype, differentiable in
    m and state0. method: "auto" | "loop" | "parallel" (module docstring)."""
    check_stable_matrix_scan(m, reset, state0)
    u0, s0 = (None, None) if state0 is None else state0
    if _choose(method, m, "stable_matrix_scan") == "loop":
        return _StableScan.apply(m, reset, u0, s0)
    return _parallel(m, reset, u0, s0)
