"""mLSTM cell kernels (xLSTM's matrix memory, docs/design.md section 1) with episode resets.

The cell, per step t, batch b and head (q, k of size dk with q already scaled by dk^-1/2, v of
size dv; ig the input-gate pre-activation, lf = log sigmoid of the forget-gate pre-activation):

    m_t = max(lf_t + m_{t-1}, ig_t)                       # stabilizer (m_{t-1} = 0 after a reset)
    f'  = exp(lf_t + m_{t-1} - m_t);  i' = exp(ig_t - m_t)  # both <= 1
    C_t = f' C_{t-1} + i' k_t v_t^T;  n_t = f' n_{t-1} + i' k_t
    h_t = q_t^T C_t / (max(|q_t^T n_t|, exp(-m_t)) + eps)

An episode reset before step t restarts (C, n, m) from zeros. Layout: batch and heads first,
time third (the layout the chunkwise form's L x L products want):

    q, k [B, H, T, dk];  v [B, H, T, dv];  ig, lf [B, H, T];  reset bool [B, T]
    state (C [B, H, dk, dv], n [B, H, dk], m [B, H]);  h [B, H, T, dv]

Kernels (each equals ``mlstm_ref`` in memory/ops/reference.py, the plain step-by-step
recurrence, in values and gradients; tests/test_ops.py holds them to it):

- ``mlstm_recurrent``: a loop over t (acting, T = 1), optionally keeping every C_t.
- ``mlstm_chunkwise``: inside a chunk of L steps everything is a masked L x L matrix product;
  across chunks only (C, n, m) is carried, by a loop over T / L chunks. chunk_size >= T is the
  fully parallel form. Resets are exact: the log-decay from a source step s to a query step t is
  used only where no reset falls in (s, t] (same episode segment, an explicit boolean mask, no
  large negative constant), the carried state only where no reset falls in the chunk up to t,
  and the fresh state entering at a reset contributes its m_{t-1} = 0 term to the stabilizer,
  exactly as the recurrence does.
- ``mlstm_stabilizer``: m_t at every step, by the chunkwise pass alone.
- ``mlstm_states``: every C_t, time first [T, B, H, dk, dv] (for a readout that needs the whole
  state at every step, mlstm-orth's): the stabilizer pass, then the recurrence's exact gates f'_t,
  i'_t and memory.ops.linear_scan with resets.

The readout's max(|q^T n|, exp(-m)) is evaluated without overflow (exp(-m) is inf in float32
for m < -88, i.e. gate pre-activations near -100): see _normalize.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from memory.ops.scan import linear_scan


def _normalize(num: Tensor, qn: Tensor, m: Tensor, eps: float) -> Tensor:
    """h = num / (max(|qn|, exp(-m)) + eps) without overflow: num [..., dv], qn and m [...].

    exp(-m) overflows float32 once m < -88 (gate pre-activations around -100 do that), and its
    gradient then turns into inf * 0 = NaN. For m < 0 the same value is computed with numerator
    and denominator multiplied by s = exp(m) <= 1: num s / (max(|qn| s, 1) + eps s). Both
    branches are one expression: s = exp(min(m, 0)), floor = exp(-max(m, 0)); all factors <= 1.
    (torch.where rather than clamp: at m = 0 exactly both clamps would pass a gradient and
    count dm twice.)"""
    neg = m < 0
    zero = torch.zeros_like(m)
    s = torch.exp(torch.where(neg, m, zero))
    floor = torch.exp(torch.where(neg, zero, -m))
    return num * s[..., None] / (torch.maximum(qn.abs() * s, floor) + eps * s)[..., None]


def mlstm_recurrent(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    ig: Tensor,
    lf: Tensor,
    reset: Tensor,
    state: tuple[Tensor, Tensor, Tensor],
    eps: float = 1e-6,
    keep_states: bool = False,
) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor], Tensor | None]:
    """The stabilized mLSTM recurrence, one step at a time (used while acting, T = 1).

    q, k [B, H, T, dk] (q scaled by dk^-1/2); v [B, H, T, dv]; ig, lf [B, H, T]; reset bool
    [B, T]; state (C [B, H, dk, dv], n [B, H, dk], m [B, H]). Returns h [B, H, T, dv], the final
    state (C, n, m), and, with keep_states, every C_t stacked [B, H, T, dk, dv] (None otherwise).
    Equals mlstm_ref except for the overflow-free normalizer (_normalize)."""
    C, n, m = state
    hs: list[Tensor] = []
    Cs: list[Tensor] = []
    # Loop over unbind'ed slices: indexing [:, :, t] inside autograd makes the backward O(T^2).
    for q_t, k_t, v_t, i_t, f_t, r_t in zip(
        q.unbind(2), k.unbind(2), v.unbind(2), ig.unbind(2), lf.unbind(2), reset.unbind(1)
    ):
        r = r_t.view(-1, 1)  # [B, 1]
        m = torch.where(r, torch.zeros_like(m), m)  # an episode start sees the fresh state
        C = torch.where(r.view(-1, 1, 1, 1), torch.zeros_like(C), C)
        n = torch.where(r.view(-1, 1, 1), torch.zeros_like(n), n)
        m_new = torch.maximum(f_t + m, i_t)  # [B, H]
        fp = torch.exp(f_t + m - m_new)  # f' <= 1
        ip = torch.exp(i_t - m_new)  # i' <= 1
        C = fp[..., None, None] * C + ip[..., None, None] * (k_t[..., :, None] * v_t[..., None, :])
        n = fp[..., None] * n + ip[..., None] * k_t
        m = m_new
        num = (q_t.unsqueeze(-2) @ C).squeeze(-2)  # [B, H, dv]
        qn = (q_t * n).sum(-1)  # [B, H]
        hs.append(_normalize(num, qn, m, eps))
        if keep_states:
            Cs.append(C)
    return torch.stack(hs, 2), (C, n, m), (torch.stack(Cs, 2) if keep_states else None)


class _ChunkLogs:
    """Log-space decay weights of a chunked sequence, shared by the plain chunkwise readout and
    the stabilizer pass of mlstm-orth. Shapes: NC chunks of L steps (the tail padded with steps
    that change nothing: log decay 0, no input, no reset)."""

    def __init__(self, ig: Tensor, lf: Tensor, reset: Tensor, m0: Tensor, L: int):
        B, H, T = ig.shape
        NC = -(-T // L)
        pad = NC * L - T
        if pad:
            lf = F.pad(lf, (0, pad), value=0.0)  # decay exp(0) = 1: state unchanged
            ig = F.pad(ig, (0, pad), value=-math.inf)  # i' = 0: nothing written
            reset = F.pad(reset, (0, pad), value=False)
        self.T, self.NC, self.L = T, NC, L
        lf = lf.reshape(B, H, NC, L)
        ig = ig.reshape(B, H, NC, L)
        r = reset.reshape(B, 1, NC, L)  # [B, 1, NC, L]

        # b[t] = sum_{j<=t} lf[j] inside the chunk: the log decay from the chunk start through t.
        b = lf.cumsum(-1)  # [B, H, NC, L]
        self.b = b
        # Segment = episode piece inside the chunk; a path s -> t exists iff seg[s] == seg[t].
        seg = r.cumsum(-1)  # [B, 1, NC, L]
        causal = torch.ones(L, L, dtype=torch.bool, device=ig.device).tril()
        same = (seg[..., :, None] == seg[..., None, :]) & causal  # [B, 1, NC, L, L]
        # The carried state (from before the chunk) reaches t iff no reset in the chunk up to t.
        self.carried = seg == 0  # [B, 1, NC, L]

        # log D[t, s] = b[t] - b[s] + ig[s] on valid paths: the log weight of k_s v_s^T in C_t.
        diff = b[..., :, None] - b[..., None, :]  # [B, H, NC, L, L]
        self.logD = torch.where(same, diff + ig[..., None, :], -math.inf)

        # The fresh state entering at a reset r <= t has m = 0, so it adds b[t] - b[r-1] to the
        # stabilizer's max (what the recurrence does with m_{r-1} = 0). r = last reset <= t.
        pos = torch.arange(L, device=ig.device)
        last = torch.where(r, pos, -1).cummax(-1).values  # [B, 1, NC, L], -1 = none yet
        b_before = b - lf  # b[t-1]
        base = torch.gather(b_before, -1, last.clamp_min(0).expand_as(b))  # b[r-1]
        fresh = torch.where(self.carried, -math.inf, b - base)  # [B, H, NC, L]
        # Max over sources inside the chunk (always finite: s = t, or the fresh-state term).
        self.intra = torch.maximum(self.logD.amax(-1), fresh)  # [B, H, NC, L]
        self.m0 = m0

    def carry_m(self) -> tuple[Tensor, Tensor]:
        """Stabilizer at each chunk start m_prev [B, H, NC] and m_t at every step [B, H, NC, L]."""
        g = self.b[..., -1]  # [B, H, NC] log decay over the whole chunk
        carried_end = self.carried[..., -1]  # [B, 1, NC]
        intra_end = self.intra[..., -1]  # [B, H, NC]
        m = self.m0
        m_prev = []
        for g_k, c_k, a_k in zip(g.unbind(-1), carried_end.unbind(-1), intra_end.unbind(-1)):
            m_prev.append(m)
            m = torch.where(c_k, torch.maximum(g_k + m, a_k), a_k)
        m_prev_t = torch.stack(m_prev, -1)  # [B, H, NC]
        from_prev = self.b + m_prev_t[..., None]  # carried state's log weight at t
        m_all = torch.where(self.carried, torch.maximum(from_prev, self.intra), self.intra)
        return m_prev_t, m_all


def mlstm_chunkwise(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    ig: Tensor,
    lf: Tensor,
    reset: Tensor,
    state: tuple[Tensor, Tensor, Tensor],
    eps: float = 1e-6,
    chunk_size: int = 32,
) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
    """The same mLSTM, chunkwise: masked L x L products inside chunks, (C, n, m) carried across.

    Inputs as mlstm_recurrent: q, k [B, H, T, dk]; v [B, H, T, dv]; ig, lf [B, H, T]; reset bool
    [B, T]; state (C [B, H, dk, dv], n [B, H, dk], m [B, H]). chunk_size >= T is the fully
    parallel form. Returns h [B, H, T, dv] and the final state (C, n, m)."""
    C0, n0, m0 = state
    B, H, T, dk = q.shape
    dv = v.shape[-1]
    L = min(chunk_size, T)
    logs = _ChunkLogs(ig, lf, reset, m0, L)
    NC, pad = logs.NC, logs.NC * L - T
    if pad:
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
    # n rides along C as an extra value column: [C | n] = sum w k [v, 1]^T.
    v1 = torch.cat([v, torch.ones_like(v[..., :1])], -1).reshape(B, H, NC, L, dv + 1)
    q = q.reshape(B, H, NC, L, dk)
    k = k.reshape(B, H, NC, L, dk)

    # Chunk-local contributions to the state at each chunk end, under the local stabilizer
    # intra_end (>= every log weight in the chunk, so these weights are <= 1).
    intra_end = logs.intra[..., -1]  # [B, H, NC]
    w_end = torch.exp(logs.logD[..., -1, :] - intra_end[..., None])  # [B, H, NC, L]
    C_loc = (k * w_end[..., None]).transpose(-1, -2) @ v1  # [B, H, NC, dk, dv+1]

    # Across chunks: m and [C | n] carried by a loop over NC (cheap: NC = T / L).
    g = logs.b[..., -1]  # [B, H, NC]
    carried_end = logs.carried[..., -1]  # [B, 1, NC]
    Cn = torch.cat([C0, n0[..., None]], -1)  # [B, H, dk, dv+1]
    m = m0
    C_prev, m_prev = [], []
    for g_k, c_k, a_k, loc_k in zip(g.unbind(-1), carried_end.unbind(-1), intra_end.unbind(-1), C_loc.unbind(2)):
        C_prev.append(Cn)
        m_prev.append(m)
        m_new = torch.where(c_k, torch.maximum(g_k + m, a_k), a_k)
        # exp of a masked argument (never exp then mask: exp overflow times a zero grad is NaN).
        w_old = torch.exp(torch.where(c_k, g_k + m - m_new, -math.inf))  # [B, H]
        Cn = w_old[..., None, None] * Cn + torch.exp(a_k - m_new)[..., None, None] * loc_k
        m = m_new
    C_prev_t = torch.stack(C_prev, 2)  # [B, H, NC, dk, dv+1]
    m_prev_t = torch.stack(m_prev, -1)  # [B, H, NC]

    from_prev = logs.b + m_prev_t[..., None]  # [B, H, NC, L]
    m_all = torch.where(logs.carried, torch.maximum(from_prev, logs.intra), logs.intra)
    W = torch.exp(logs.logD - m_all[..., None])  # [B, H, NC, L, L]
    w0 = torch.exp(torch.where(logs.carried, from_prev - m_all, -math.inf))  # [B, H, NC, L]
    S = (q @ k.transpose(-1, -2)) * W  # [B, H, NC, L, L]
    num = S @ v1 + w0[..., None] * (q @ C_prev_t)  # [B, H, NC, L, dv+1]
    num = num.reshape(B, H, NC * L, dv + 1)[:, :, :T]
    m_all = m_all.reshape(B, H, NC * L)[:, :, :T]
    h = _normalize(num[..., :dv], num[..., dv], m_all, eps)
    return h, (Cn[..., :dv], Cn[..., dv], m)


def mlstm_stabilizer(ig: Tensor, lf: Tensor, reset: Tensor, m0: Tensor, chunk_size: int = 32) -> Tensor:
    """m_t at every step [B, H, T] (the recurrence's stabilizer), computed chunkwise.

    ig, lf [B, H, T]; reset bool [B, T]; m0 [B, H] the carried stabilizer."""
    T = ig.shape[-1]
    logs = _ChunkLogs(ig, lf, reset, m0, min(chunk_size, T))
    _, m_all = logs.carry_m()
    return m_all.reshape(*m_all.shape[:2], -1)[..., :T]


def mlstm_states(
    k: Tensor,
    v: Tensor,
    ig: Tensor,
    lf: Tensor,
    reset: Tensor,
    state: tuple[Tensor, Tensor, Tensor],
    chunk_size: int = 32,
) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
    """Every C_t [T, B, H, dk, dv] (time first, as linear_scan gives it) and the final state.

    k [B, H, T, dk]; v [B, H, T, dv]; ig, lf [B, H, T]; reset bool [B, T]; state (C [B, H, dk, dv],
    n [B, H, dk], m [B, H]). Returns (C_all [T, B, H, dk, dv], (C, n, m)).
    m_t comes from the chunkwise stabilizer pass; then f'_t, i'_t are the recurrence's exact
    gates, and C (and n) are linear scans with resets starting from the carried state."""
    C0, n0, m0 = state
    m_all = mlstm_stabilizer(ig, lf, reset, m0, chunk_size)  # [B, H, T]
    # m_{t-1} as the recurrence sees it: the carried m0 at t = 0, and 0 at an episode start.
    # (The scan zeroes the state at a reset anyway, but an un-reset m_{t-1} could make f' = inf,
    # and inf * 0 is NaN.)
    m_before = torch.cat([m0[..., None], m_all[..., :-1]], -1)
    m_before = torch.where(reset[:, None, :], torch.zeros_like(m_before), m_before)
    fp = torch.exp(lf + m_before - m_all).permute(2, 0, 1)  # [T, B, H]
    ip = torch.exp(ig - m_all).permute(2, 0, 1)  # [T, B, H]
    # Time-first views of k, v (they are permuted views of time-first projections: no copy).
    ik = ip[..., None] * k.permute(2, 0, 1, 3)  # [T, B, H, dk]
    kv = ik[..., :, None] * v.permute(2, 0, 1, 3)[..., None, :]  # [T, B, H, dk, dv]
    r = reset.transpose(0, 1)  # [T, B]
    C_all = linear_scan(fp[..., None, None], kv, r, C0)  # [T, B, H, dk, dv]
    n_all = linear_scan(fp[..., None], ik, r, n0)  # [T, B, H, dk] (only the last is kept)
    return C_all, (C_all[-1], n_all[-1], m_all[..., -1])

