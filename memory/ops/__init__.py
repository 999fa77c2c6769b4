"""Batched kernels the memory backbones share (docs/design.md sections 1, 3, 4, 6).

- ``linear_scan(gate, x, reset, state0=None)``: h[t] = gate[t] * (0 if reset[t] else h[t-1]) + x[t]
  (float or complex: the diagonal complex recurrences of lru and ffm)
- ``log_linear_scan(log_a, log_b, reset, log_h0=None)``: the same recurrence for positive a, b, carried
  as log h (minGRU's log-space form; a reset is a -inf gate)
- ``matrix_scan(m, reset, state0=None)``: H[t] = (I if reset[t] else H[t-1]) @ m[t]
- ``stable_matrix_scan(m, reset, state0=None)``: the same products as (U, s) with H[t] = exp(s[t]) U[t],
  ||U[t]||_F = 1, finite where H over- or underflows (the MRU's long episodes)
- ``newton_schulz(x, steps=5, eps=1e-7)``: Muon's quintic orthogonalization of [..., m, n]
- ``causal_conv(u, hist, reset, weight, bias)``: a depthwise causal conv over [T, B] with resets and
  the K-1 carried inputs (mlstm's and ssm's short conv)
- ``gru_layer(xw, h0, keep, w_hh, b_hh)``: one GRU layer over [T, B] with resets, hand-written backward
- ``mlstm_recurrent``, ``mlstm_chunkwise``, ``mlstm_stabilizer``, ``mlstm_states``: the mLSTM cell
  (q, k [B, H, T, dk], v [B, H, T, dv], gates [B, H, T], reset [B, T]) step by step, chunkwise,
  its stabilizer m_t alone, every state C_t; one reference ``mlstm_ref`` for all four

Each has a plain reference loop beside it (``*_ref``); the fast paths are tested against them.
"""

from memory.ops.reference import causal_conv_ref, linear_scan_ref, log_linear_scan_ref, matrix_scan_ref, mlstm_ref, newton_schulz_ref, stable_matrix_scan_ref
from memory.ops.conv import causal_conv
from memory.ops.scan import linear_scan, matrix_scan
from memory.ops.log_scan import log_linear_scan
from memory.ops.stable_scan import stable_matrix_scan
from memory.ops.newton_schulz import newton_schulz
from memory.ops.gru import gru_layer, gru_layer_ref
from memory.ops.mlstm import mlstm_chunkwise, mlstm_recurrent, mlstm_stabilizer, mlstm_states

__all__ = [
    "causal_conv",
    "causal_conv_ref",
    "linear_scan",
    "log_linear_scan",
    "matrix_scan",
    "stable_matrix_scan",
    "newton_schulz",
    "gru_layer",
    "gru_layer_ref",
    "mlstm_recurrent",
    "mlstm_chunkwise",
    "mlstm_stabilizer",
    "mlstm_states",
    "mlstm_ref",
    "linear_scan_ref",
    "log_linear_scan_ref",
    "matrix_scan_ref",
    "stable_matrix_scan_ref",
    "newton_schulz_ref",
]
