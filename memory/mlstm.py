"""mLSTM (xLSTM's matrix-memory LSTM) and mLSTM with an orthogonalized readout (docs/design.md sections 1-3, 6).

The layer, per step t and head (q, k of size dk, v of size dv, q scaled by dk^-1/2):

    x~_t = SiLU(causal_conv(x_{t-K+1..t}))    # short causal conv (xLSTM's), kernel K (option)
    q, k = W_qk x~_t;  v, z = W_vz x_t         # keys and queries see the last K inputs
    i~, f~     = W_g [q, k, v] + b_g            # gate pre-activations (zero weights at init)
    m_t  = max(log sig(f~) + m_{t-1}, i~)       # stabilizer
    f'   = exp(log sig(f~) + m_{t-1} - m_t);  i' = exp(i~ - m_t)
    C_t  = f' C_{t-1} + i' k v^T;  n_t = f' n_{t-1} + i' k
    mlstm:       h = q^T C_t / (max(|q^T n_t|, exp(-m_t)) + eps)
    mlstm-orth:  h = q^T NS(C_t)                (see "orthogonalized readout" below)
    y    = W_out(headnorm(h) * SiLU(z))         # per-head LayerNorm, output gate

State: (C [B, H, dk, dv], n [B, H, dk], m [B, H], x_hist [B, K-1, input]), batch first; a fresh
state is all zeros (m_0 = 0, as in xLSTM). An episode reset before step t restarts everything from
zeros: the conv never reads inputs from before the episode started.

Why the conv matters: each write is k_t v_t^T from the current step only, so without it one layer
cannot bind a key to the value that follows it (NoisyRecall: key at t, value at t+1). The probe
measured it: one layer recalled 1.000 with a shifted input and 0.348 without (vocab 16, seq 32,
chance 0.125). xLSTM's block has the same conv (kernel 4) in front of q and k. conv_kernel=0 turns
it off (the state is then (C, n, m)).

Departures from the xLSTM block, on purpose (an RL-sized layer, hidden 128): no up-projection and
no learnable skip of the conv output; block residuals live outside the backbone. q/k head dim
defaults to half the value head dim, as in xLSTM-7B (qk_dim_factor 0.5); it also makes
Newton-Schulz (whose cost grows with dk) cheaper for mlstm-orth.

Computation paths (option path). The cell kernels live in memory/ops/mlstm.py, each tested
against the step-by-step reference memory.ops.mlstm_ref (values and gradients):

- recurrent: memory.ops.mlstm_recurrent, a loop over t; used for T = 1 (acting).
- chunkwise: memory.ops.mlstm_chunkwise, masked L x L products inside chunks of L steps,
  (C, n, m) carried across chunks; resets are exact. "parallel" is one chunk of T. Default
  L = 32: on one CPU thread larger chunks were slower per training step (benchmarks/backbones.py);
  on GPU larger chunks may pay (option chunk_size).

Orthogonalized readout (mlstm-orth). Only at read time, C~_t = NS(C_t / (||C_t||_F + 1e-7)) with
memory.ops.newton_schulz (which does that normalization itself; Muon's 5 quintic steps by default,
option ns_steps; gradients flow through). C~_t is never written back: the returned state is the
plain C, equal to mlstm's for the same weights. C_t is needed at every step, so the states are
materialized by memory.ops.mlstm_states (the stabilizer m_t chunkwise, then linear_scan with
gate f'_t, input i'_t k_t v_t^T and resets) and orthogonalized in one batched call over all
[T, B, H] matrices. That call dominates the cost of a training step, several times mlstm's on
CPU (benchmarks/backbones.py), most of it inside Newton-Schulz (small batched matmuls and their
buffer copies), and it saves every iterate for backward (a multiple of mlstm's peak memory;
option ns_checkpoint recomputes it in backward piece by piece, for much less memory at about
the same time on CPU).

  Normalizer choice: h = q^T C~_t, with no denominator. The Frobenius normalization removes the
  exp(-m) scale (and any scale) from C, and C~ has singular values in about [0.5, 1.5], so
  |q^T C~| <= ~1.5 |q| is already bounded: the job of the n-normalizer (keeping the read bounded
  as C grows) is done by the orthogonalization. The per-head LayerNorm that follows removes any
  remaining positive per-head scale anyway. n is still carried (same state as mlstm, so states
  and checkpoints are interchangeable), but the orth readout does not use it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from memory.base import Memory, State, check_inputs, check_state
from memory.ops import causal_conv, mlstm_chunkwise, mlstm_recurrent, mlstm_states, newton_schulz
from memory.registry import register

PATHS = ("auto", "recurrent", "chunkwise", "parallel")
# Compute dtype of Newton-Schulz in mlstm-orth ("same" = the model's). Muon runs it in bfloat16,
# the fast choice on GPUs (on a CPU with AMX it gained little per training step). Caveat:
# bf16 rounding in directions a low-rank C does not hold (every state early in an episode) is
# amplified by up to a^5 ~ 480 by the 5 steps, so such reads differ from float32 by up to ~0.3
# (mean ~0.01 on unit-scale outputs); full-rank states read to ~1%.
NS_DTYPES = {"same": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# ----------------------------------------------------------------------------------------------
# The layer.
# ----------------------------------------------------------------------------------------------


class MLSTM(Memory):
    """Multi-head mLSTM layer with per-head output norm and SiLU output gate; ``orthogonal``
    switches the readout to the Newton-Schulz orthogonalized state (mlstm-orth)."""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        num_heads: int = 4,
        qk_head_dim: int = 0,
        v_head_dim: int = 0,
        chunk_size: int = 32,
        eps: float = 1e-6,
        path: str = "auto",
        orthogonal: bool = False,
        ns_steps: int = 5,
        ns_dtype: str = "same",
        ns_checkpoint: bool = False,
        conv_kernel: int = 4,
    ):
        super().__init__()
        name = "mlstm-orth" if orthogonal else "mlstm"
        if num_heads < 1:
            raise ValueError(f"{name}: num_heads must be >= 1, got {num_heads}")
        if v_head_dim == 0:
            if hidden_size % num_heads:
                raise ValueError(
                    f"{name}: hidden_size {hidden_size} is not divisible by num_heads {num_heads}; "
                    f"choose num_heads dividing it or set v_head_dim explicitly"
                )
            v_head_dim = hidden_size // num_heads
        if qk_head_dim == 0:
            qk_head_dim = max(1, v_head_dim // 2)
        if qk_head_dim < 1 or v_head_dim < 1:
            raise ValueError(
                f"{name}: qk_head_dim and v_head_dim must be >= 1 (0 = automatic), got {qk_head_dim} and {v_head_dim}"
            )
        if conv_kernel < 0 or conv_kernel == 1:
            raise ValueError(f"{name}: conv_kernel must be 0 (off) or >= 2, got {conv_kernel}")
        if chunk_size < 1:
            raise ValueError(f"{name}: chunk_size must be >= 1, got {chunk_size}")
        if not eps > 0:
            raise ValueError(f"{name}: eps must be > 0, got {eps}")
        if path not in PATHS:
            raise ValueError(f"{name}: path must be one of {', '.join(PATHS)}, got {path!r}")
        if ns_steps < 1:
            raise ValueError(f"{name}: ns_steps must be >= 1, got {ns_steps}")
        if ns_dtype not in NS_DTYPES:
            raise ValueError(f"{name}: ns_dtype must be one of {', '.join(NS_DTYPES)}, got {ns_dtype!r}")
        self.input_size, self.output_size = input_size, hidden_size
        self.num_heads, self.dk, self.dv = num_heads, qk_head_dim, v_head_dim
        self.chunk_size, self.eps, self.path = chunk_size, eps, path
        self.orthogonal, self.ns_steps = orthogonal, ns_steps
        self.ns_dtype = NS_DTYPES[ns_dtype]
        self.ns_checkpoint = ns_checkpoint

        H, dk, dv = num_heads, qk_head_dim, v_head_dim
        self.conv_kernel = conv_kernel
        if conv_kernel:
            # Depthwise causal conv over time (nn.Conv1d for its parameters and init; applied by
            # memory.ops.causal_conv, which also handles resets and the carried input history).
            self.conv = nn.Conv1d(input_size, input_size, conv_kernel, groups=input_size)
        self.proj_qk = nn.Linear(input_size, H * 2 * dk, bias=False)  # q, k from the conv'd input
        self.proj_vz = nn.Linear(input_size, H * 2 * dv, bias=False)  # v, z from the input
        # Gates read [q, k, v] (as the reference); zero weights so they start input-independent.
        self.gates = nn.Linear(H * (2 * dk + dv), 2 * H)
        self.norm_weight = nn.Parameter(torch.ones(H, dv))  # per-head LayerNorm scale
        self.out = nn.Linear(H * dv, hidden_size, bias=False)
        self.reset_gate_parameters()

    def reset_gate_parameters(self) -> None:
        """The reference's gate init: zero weights, input-gate bias N(0, 0.1), forget-gate bias
        linspace(3, 6) over heads (sigmoid 0.95..0.998: some heads remember for hundreds of steps)."""
        H = self.num_heads
        with torch.no_grad():
            self.gates.weight.zero_()
            self.gates.bias[:H].normal_(0.0, 0.1)
            self.gates.bias[H:].copy_(torch.linspace(3.0, 6.0, H))

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        H = self.num_heads
        cell = (
            torch.zeros(batch_size, H, self.dk, self.dv, device=device),  # C
            torch.zeros(batch_size, H, self.dk, device=device),  # n
            torch.zeros(batch_size, H, device=device),  # m
        )
        if not self.conv_kernel:
            return cell
        return (*cell, torch.zeros(batch_size, self.conv_kernel - 1, self.input_size, device=device))  # x_hist

    def _check_state(self, state: State, B: int) -> None:
        want = [(B, self.num_heads, self.dk, self.dv), (B, self.num_heads, self.dk), (B, self.num_heads)]
        if self.conv_kernel:
            want.append((B, self.conv_kernel - 1, self.input_size))
        check_state("mlstm-orth" if self.orthogonal else "mlstm", state, want, "C, n, m" + (", x_hist" if self.conv_kernel else ""))

    def _cell_inputs(self, x: Tensor, x_qk: Tensor) -> tuple[Tensor, ...]:
        """x, x_qk (x after the conv) [T, B, I] -> q, k [B, H, T, dk] (q scaled), v [B, H, T, dv],
        ig, lf [B, H, T], z [T, B, H, dv]."""
        T, B, _ = x.shape
        H, dk, dv = self.num_heads, self.dk, self.dv
        v, z = self.proj_vz(x).split([H * dv, H * dv], -1)
        qk = self.proj_qk(x_qk)
        gates = self.gates(torch.cat([qk, v], -1))  # [T, B, 2H]
        q, k = qk.split([H * dk, H * dk], -1)
        q = q.view(T, B, H, dk).permute(1, 2, 0, 3) * dk**-0.5
        k = k.view(T, B, H, dk).permute(1, 2, 0, 3)
        v = v.view(T, B, H, dv).permute(1, 2, 0, 3)
        ig, fg = gates.view(T, B, 2, H).permute(2, 1, 3, 0).unbind(0)  # [B, H, T] each
        return q, k, v, ig, F.logsigmoid(fg), z.view(T, B, H, dv)

    def _choose_path(self, T: int) -> str:
        if self.path != "auto":
            return self.path
        return "recurrent" if T == 1 else "chunkwise"

    def _chunk(self, T: int, path: str) -> int:
        return T if path == "parallel" else self.chunk_size

    def _read_orth(self, q: Tensor, C_all: Tensor) -> Tensor:
        """h = q^T NS(C_t) for every t. q [T, B, H, dk], C_all [T, B, H, dk, dv] -> [T, B, H, dv].

        One batched Newton-Schulz call over all T*B*H matrices. It saves every iterate for
        backward (a multiple of mlstm's activation memory). With ns_checkpoint, time is cut into
        pieces of chunk_size steps, each one batched call whose internals are dropped after
        forward and recomputed in backward one piece at a time: only q and C_all are kept, and
        the peak holds one piece's internals (one extra Newton-Schulz forward in time)."""
        if self.ns_checkpoint and torch.is_grad_enabled():
            L = self.chunk_size
            pieces = [
                checkpoint(self._read_orth_direct, q_c, C_c, use_reentrant=False)
                for q_c, C_c in zip(q.split(L, 0), C_all.split(L, 0))
            ]
            return torch.cat(pieces, 0)
        return self._read_orth_direct(q, C_all)

    def _read_orth_direct(self, q: Tensor, C_all: Tensor) -> Tensor:
        C_read = newton_schulz(C_all, steps=self.ns_steps, dtype=self.ns_dtype)
        # A broadcast multiply and sum: a bmm with one row per matrix was slower on CPU.
        return (q.unsqueeze(-1) * C_read).sum(-2)

    def forward(self, x: Tensor, state: State, reset: Tensor) -> tuple[Tensor, State]:
        check_inputs(self, x, reset)
        T, B, _ = x.shape
        self._check_state(state, B)
        if T == 0:
            return x.new_zeros(0, B, self.output_size), state
        q, k, v, ig, lf, z, hist = self._inputs(x, state, reset)
        state = state[:3]
        r = reset.transpose(0, 1)  # [B, T]
        path = self._choose_path(T)
        if not self.orthogonal:
            if path == "recurrent":
                h, new, _ = mlstm_recurrent(q, k, v, ig, lf, r, state, self.eps)
            else:
                h, new = mlstm_chunkwise(q, k, v, ig, lf, r, state, self.eps, self._chunk(T, path))
            h = h.permute(2, 0, 1, 3)  # [T, B, H, dv]
        else:
            if path == "recurrent":
                _, new, C_all = mlstm_recurrent(q, k, v, ig, lf, r, state, self.eps, keep_states=True)
                C_all = C_all.permute(2, 0, 1, 3, 4)  # [T, B, H, dk, dv]
            else:
                C_all, new = mlstm_states(k, v, ig, lf, r, state, self._chunk(T, path))
            h = self._read_orth(q.permute(2, 0, 1, 3), C_all)  # [T, B, H, dv]
        h = F.layer_norm(h, (self.dv,)) * self.norm_weight  # per-head norm
        y = self.out((h * F.silu(z)).reshape(T, B, -1))  # [T, B, hidden]
        return y, (*new, hist) if hist is not None else new

    def _inputs(self, x: Tensor, state: State, reset: Tensor) -> tuple:
        """The cell inputs (after the causal conv, when on) and the new conv history (or None)."""
        if not self.conv_kernel:
            return (*self._cell_inputs(x, x), None)
        x_qk, hist = causal_conv(x, state[3], reset, self.conv.weight[:, 0], self.conv.bias)
        x_qk = F.silu(x_qk)
        return (*self._cell_inputs(x, x_qk), hist)

    @torch.no_grad()
    def read_matrices(self, x: Tensor, state: State, reset: Tensor) -> Tensor:
        """The matrices the readout multiplies q with, at every step: [T, B, H, dk, dv].

        mlstm-orth: NS(C_t); mlstm: the stabilized C_t itself (its readout then divides by the
        normalizer). For inspection and tests; forward does not call it."""
        check_inputs(self, x, reset)
        self._check_state(state, x.shape[1])
        _, k, v, ig, lf, _, _ = self._inputs(x, state, reset)
        C_tb, _ = mlstm_states(k, v, ig, lf, reset.transpose(0, 1), state[:3], self.chunk_size)
        return newton_schulz(C_tb, steps=self.ns_steps, dtype=self.ns_dtype) if self.orthogonal else C_tb


@register(
    "mlstm",
    test_variants=[
        {"path": "recurrent"},
        {"chunk_size": 4},
        {"num_heads": 2, "qk_head_dim": 3, "v_head_dim": 5, "chunk_size": 5},
        {"conv_kernel": 0},
        {"conv_kernel": 2, "path": "recurrent"},
    ],
)
def make_mlstm(
    input_size: int,
    hidden_size: int,
    num_heads: int = 4,
    qk_head_dim: int = 0,
    v_head_dim: int = 0,
    chunk_size: int = 32,
    eps: float = 1e-6,
    path: str = "auto",
    conv_kernel: int = 4,
) -> Memory:
    """mLSTM (xLSTM matrix memory; chunkwise over sequences, recurrent step while acting)."""
    return MLSTM(
        input_size, hidden_size, num_heads=num_heads, qk_head_dim=qk_head_dim, v_head_dim=v_head_dim,
        chunk_size=chunk_size, eps=eps, path=path, conv_kernel=conv_kernel,
    )


@register(
    "mlstm-orth",
    test_variants=[
        {"path": "recurrent"},
        {"chunk_size": 4, "num_heads": 2, "ns_checkpoint": True},
        {"conv_kernel": 0},
    ],
)
def make_mlstm_orth(
    input_size: int,
    hidden_size: int,
    num_heads: int = 4,
    qk_head_dim: int = 0,
    v_head_dim: int = 0,
    chunk_size: int = 32,
    path: str = "auto",
    ns_steps: int = 5,
    ns_dtype: str = "same",
    ns_checkpoint: bool = False,
    conv_kernel: int = 4,
) -> Memory:
    """mLSTM read through a Newton-Schulz orthogonalized state (never written back)."""
    # No eps option: the orth readout has no normalizer denominator (module docstring).
    return MLSTM(
        input_size, hidden_size, num_heads=num_heads, qk_head_dim=qk_head_dim, v_head_dim=v_head_dim,
        chunk_size=chunk_size, path=path, orthogonal=True, ns_steps=ns_steps,
        ns_dtype=ns_dtype, ns_checkpoint=ns_checkpoint, conv_kernel=conv_kernel,
    )
