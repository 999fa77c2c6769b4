"""Plain reference implementations: a loop over t (or over Newton-Schulz steps), written to be
obviously right. The fast paths in this package are tested against these.

Loops iterate over ``x.unbind(0)``: indexing x[t] inside an autograd loop makes the backward
O(T^2), because every x[t] backward builds a full-size zero gradient (docs/design.md section 8).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# Muon's quintic coefficients (docs/design.md section 3).
NS_COEFFS = (3.4445, -4.7750, 2.0315)


def _batch_mask(reset_t: Tensor, ndim: int) -> Tensor:
    """reset_t [B] -> [B, 1, ..., 1] with ndim dims, for broadcasting over a state [B, ...]."""
    return reset_t.view(reset_t.shape[0], *([1] * (ndim - 1)))


def causal_conv_ref(u: Tensor, hist: Tensor, reset: Tensor, weight: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
    """``causal_conv`` one step at a time: a window of the last K inputs, emptied at each reset."""
    K = weight.shape[1]
    window = list(hist.unbind(1))  # K-1 tensors [B, D], oldest first
    outs = []
    for u_t, r_t in zip(u.unbind(0), reset.unbind(0)):
        keep = (~r_t).to(u.dtype)[:, None]
        window = [w * keep for w in window] + [u_t]
        outs.append(bias + sum(w * weight[:, j] for j, w in enumerate(window)))
        window = window[1:]
    return torch.stack(outs), torch.stack(window, 1) if K > 1 else hist


def linear_scan_ref(gate: Tensor, x: Tensor, reset: Tensor, state0: Tensor | None = None) -> Tensor:
    """h[t] = gate[t] * (0 if reset[t] else h[t-1]) + x[t]; h[-1] = state0 (zeros if None).

    gate: broadcastable to x [T, B, ...]; reset: bool [T, B]. Returns h [T, B, ...]."""
    T = x.shape[0]
    gate = gate.expand(T, *gate.shape[1:]) if gate.shape[0] == 1 else gate
    prev = torch.zeros_like(x[0]) if state0 is None else state0  # [B, ...]
    out = []
    for g_t, x_t, r_t in zip(gate.unbind(0), x.unbind(0), reset.unbind(0)):
        r = _batch_mask(r_t, prev.dim())
        prev = torch.where(r, torch.zeros_like(prev), prev)
        prev = g_t * prev + x_t
        out.append(prev)
    return torch.stack(out)


def log_linear_scan_ref(log_a: Tensor, log_b: Tensor, reset: Tensor, log_h0: Tensor | None = None) -> Tensor:
    """l[t] = logaddexp(log_a[t] + (-inf if reset[t] else l[t-1]), log_b[t]); l[-1] = log_h0 (-inf if
    None): log h for h[t] = a[t] * (0 if reset[t] else h[t-1]) + b[t], the recurrence of
    linear_scan_ref in log space. log_a: broadcastable to log_b [T, B, ...]; reset: bool [T, B].
    Returns l [T, B, ...]. (torch.logaddexp's backward is NaN at (-inf, -inf): give finite log_b.)"""
    T = log_b.shape[0]
    log_a = log_a.expand(T, *log_a.shape[1:]) if log_a.shape[0] == 1 else log_a
    prev = torch.full_like(log_b[0], float("-inf")) if log_h0 is None else log_h0  # [B, ...]
    out = []
    for a_t, b_t, r_t in zip(log_a.unbind(0), log_b.unbind(0), reset.unbind(0)):
        prev = torch.where(_batch_mask(r_t, prev.dim()), float("-inf"), prev)
        prev = torch.logaddexp(a_t + prev, b_t)
        out.append(prev)
    return torch.stack(out)


def matrix_scan_ref(m: Tensor, reset: Tensor, state0: Tensor | None = None) -> Tensor:
    """H[t] = (I if reset[t] else H[t-1]) @ m[t]; H[-1] = state0 (identity if None).

    m: [T, B, ..., o, o]; reset: bool [T, B]. Returns H [T, B, ..., o, o] in m's dtype."""
    o = m.shape[-1]
    eye = torch.eye(o, dtype=m.dtype, device=m.device).expand(m.shape[1:])  # [B, ..., o, o]
    prev = eye if state0 is None else state0
    out = []
    for m_t, r_t in zip(m.unbind(0), reset.unbind(0)):
        prev = torch.where(_batch_mask(r_t, prev.dim()), eye, prev)
        prev = prev @ m_t
        out.append(prev)
    return torch.stack(out)


def newton_schulz_ref(x: Tensor, steps: int = 5, eps: float = 1e-7) -> Tensor:
    """Muon's quintic Newton-Schulz orthogonalization of every matrix in x [..., m, n].

    X = G / (||G||_F + eps), tall matrices transposed so X X^T is the small side; then `steps`
    times A = X X^T, B = b A + c A A, X = a X + B X. Returns [..., m, n] in x's dtype."""
    a, b, c = NS_COEFFS
    tall = x.shape[-2] > x.shape[-1]
    X = x.mT if tall else x
    X = X / (torch.linalg.matrix_norm(X, keepdim=True) + eps)
    for _ in range(steps):
        A = X @ X.mT
        Bm = b * A + c * (A @ A)
        X = a * X + Bm @ X
    return X.mT if tall else X


def mlstm_ref(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    ig: Tensor,
    lf: Tensor,
    reset: Tensor,
    state: tuple[Tensor, Tensor, Tensor],
    eps: float = 1e-6,
) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor], Tensor, Tensor]:
    """The stabilized mLSTM recurrence (docs/design.md section 1), one step at a time; the
    reference of mlstm_recurrent, mlstm_chunkwise, mlstm_stabilizer and mlstm_states.

        m_t = max(lf_t + m_{t-1}, ig_t);  f' = exp(lf_t + m_{t-1} - m_t);  i' = exp(ig_t - m_t)
        C_t = f' C_{t-1} + i' k_t v_t^T;  n_t = f' n_{t-1} + i' k_t
        h_t = q_t^T C_t / (max(|q_t^T n_t|, exp(-m_t)) + eps)

    with (C, n, m) restarted from zeros before a step where reset is set. q, k [B, H, T, dk]
    (q already scaled); v [B, H, T, dv]; ig, lf [B, H, T]; reset bool [B, T]; state (C [B, H, dk,
    dv], n [B, H, dk], m [B, H]). Returns h [B, H, T, dv], the final (C, n, m), every C_t
    [B, H, T, dk, dv] and every m_t [B, H, T]. The normalizer is the formula as written: exp(-m)
    overflows float32 for m < -88 (the kernels avoid that); compare in float64."""
    C, n, m = state
    hs, Cs, ms = [], [], []
    for q_t, k_t, v_t, i_t, f_t, r_t in zip(
        q.unbind(2), k.unbind(2), v.unbind(2), ig.unbind(2), lf.unbind(2), reset.unbind(1)
    ):
        C = torch.where(_batch_mask(r_t, C.dim()), torch.zeros_like(C), C)
        n = torch.where(_batch_mask(r_t, n.dim()), torch.zeros_like(n), n)
        m = torch.where(_batch_mask(r_t, m.dim()), torch.zeros_like(m), m)
        m_new = torch.maximum(f_t + m, i_t)
        f_p = torch.exp(f_t + m - m_new)[..., None]  # [B, H, 1]
        i_p = torch.exp(i_t - m_new)[..., None]
        C = f_p[..., None] * C + i_p[..., None] * torch.einsum("bhk,bhv->bhkv", k_t, v_t)
        n = f_p * n + i_p * k_t
        m = m_new
        num = torch.einsum("bhk,bhkv->bhv", q_t, C)
        den = torch.maximum(torch.einsum("bhk,bhk->bh", q_t, n).abs(), torch.exp(-m)) + eps
        hs.append(num / den[..., None])
        Cs.append(C)
        ms.append(m)
    return torch.stack(hs, 2), (C, n, m), torch.stack(Cs, 2), torch.stack(ms, 2)


def stable_matrix_scan_ref(m: Tensor, reset: Tensor, state0: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """matrix_scan_ref carried as H[t] = exp(s[t]) U[t] with ||U[t]||_F = 1 (memory.ops.stable_scan):
    P = U[t-1] @ m[t], U[t] = P / ||P||_F, s[t] = s[t-1] + log ||P||_F; the identity (a reset, or
    state0 None) is (I / sqrt(o), log sqrt(o)). state0: (U0 [B, ..., o, o], s0 [B, ...]).
    Returns U [T, B, ..., o, o] and s [T, B, ...]."""
    o = m.shape[-1]
    eye_u = (torch.eye(o, dtype=m.dtype, device=m.device) / o**0.5).expand(m.shape[1:])
    eye_s = torch.full(m.shape[1:-2], 0.5 * math.log(o), dtype=m.dtype, device=m.device)
    prev_u, prev_s = (eye_u, eye_s) if state0 is None else state0
    us, ss = [], []
    for m_t, r_t in zip(m.unbind(0), reset.unbind(0)):
        prev_u = torch.where(_batch_mask(r_t, prev_u.dim()), eye_u, prev_u)
        prev_s = torch.where(_batch_mask(r_t, prev_s.dim()), eye_s, prev_s)
        p = prev_u @ m_t
        n = torch.linalg.matrix_norm(p)
        prev_u, prev_s = p / n[..., None, None], prev_s + n.log()
        us.append(prev_u)
        ss.append(prev_s)
    return torch.stack(us), torch.stack(ss)
