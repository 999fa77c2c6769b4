"""FFM, Fast and Forgetful Memory (Morad, Kortvelesy, Liwicki, Prorok, "Reinforcement Learning with
Fast and Forgetful Memory", NeurIPS 2023).

An aggregator with learned complex decays, m memory channels times c context frequencies:

    x~_t  = W_1 x_t * sigmoid(W_2 x_t)                   # gated input [m]
    gamma = exp(-|alpha| + i omega)                       # [m, c]: decay per channel, frequency per column
    S_t   = gamma * S_{t-1} + x~_t 1_c^T                  # complex [m, c]; S restarts from 0 at a reset
    z_t   = W_3 [Re S_t, Im S_t]                          # [hidden]
    g_t   = sigmoid(W_4 x_t)
    y_t   = LayerNorm(z_t) * g_t + W_5 x_t * (1 - g_t)    # output gate mixes memory and input

|gamma| = exp(-|alpha|) < 1 for every alpha (the aggregator cannot blow up), and each column
of S is a damped oscillator over the inputs: S_t = sum_{s <= t} gamma^(t-s) x~_s (within the
episode). Initialization (this module's): decays |gamma_j| = 100^(-1/tau_j) with horizons tau_j
log-spaced in [1, max_horizon] (a channel forgets to 1% after tau_j steps), frequencies
omega_k = pi k / c (k = 0 is a plain exponential average).

The whole sequence is one memory.ops.linear_scan with complex gate gamma (broadcast over time
and batch) and input x~_t broadcast over the c columns, resets folded in. The paper computes the
same sum in closed form (powers of gamma, a cumulative sum) for its parallel form; the scan
never divides by powers of gamma, so long sequences with fast decays stay finite. State:
(S [B, m, c, 2],), the complex aggregator as (real, imaginary) pairs.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from memory.base import Memory, State, check_inputs
from memory.ops import linear_scan
from memory.registry import register


class FFM(Memory):
    """Fast and Forgetful Memory: gated input, complex-decay aggregator, gated output."""

    def __init__(self, input_size: int, hidden_size: int, memory_size: int = 32, context_size: int = 4,
                 max_horizon: float = 1024.0):
        super().__init__()
        if memory_size < 1 or context_size < 1:
            raise ValueError(f"ffm: memory_size and context_size must be >= 1, got {memory_size} and {context_size}")
        if not max_horizon >= 1:
            raise ValueError(f"ffm: max_horizon must be >= 1, got {max_horizon}")
        self.input_size, self.output_size = input_size, hidden_size
        self.memory_size, self.context_size = memory_size, context_size
        m, c = memory_size, context_size
        self.pre = nn.Linear(input_size, 2 * m)  # [W_1 | W_2]
        tau = torch.logspace(0, math.log10(max_horizon), m)
        self.alpha = nn.Parameter(math.log(100.0) / tau)  # [m]
        self.omega = nn.Parameter(math.pi * torch.arange(c, dtype=torch.float32) / c)  # [c]
        self.mix = nn.Linear(2 * m * c, hidden_size)  # W_3
        self.norm = nn.LayerNorm(hidden_size)
        self.gate = nn.Linear(input_size, 2 * hidden_size)  # [W_4 | W_5]

    def decays(self) -> Tensor:
        """gamma [m, c] (complex)."""
        real = (-self.alpha.abs())[:, None].expand(-1, self.context_size)
        imag = self.omega[None, :].expand(self.memory_size, -1)
        return torch.exp(torch.complex(real, imag))

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        return (torch.zeros(batch_size, self.memory_size, self.context_size, 2, device=device),)

    def forward(self, x: Tensor, state: State, reset: Tensor) -> tuple[Tensor, State]:
        check_inputs(self, x, reset)
        T, B, _ = x.shape
        m, c = self.memory_size, self.context_size
        want = (B, m, c, 2)
        if not isinstance(state, tuple) or len(state) != 1 or tuple(state[0].shape) != want:
            got = [list(s.shape) for s in state] if isinstance(state, tuple) else type(state).__name__
            raise ValueError(f"ffm: state must be (S,) with S {list(want)} (real, imaginary), got {got}")
        if T == 0:
            return x.new_zeros(0, B, self.output_size), state
        a, b = self.pre(x).chunk(2, -1)
        xg = a * torch.sigmoid(b)  # [T, B, m]
        gamma = self.decays()
        inp = xg.to(gamma.dtype)[..., None].expand(T, B, m, c)  # [T, B, m, c] complex
        S = linear_scan(gamma.expand(1, 1, m, c), inp, reset, torch.view_as_complex(state[0].contiguous()))
        z = self.mix(torch.cat([S.real, S.imag], -1).reshape(T, B, 2 * m * c))  # [T, B, hidden]
        g_pre, skip = self.gate(x).chunk(2, -1)
        g = torch.sigmoid(g_pre)
        y = self.norm(z) * g + skip * (1 - g)
        return y, (torch.view_as_real(S[-1]),)


@register("ffm", test_variants=[{"memory_size": 5, "context_size": 3, "max_horizon": 20.0}])
def make_ffm(
    input_size: int, hidden_size: int, memory_size: int = 32, context_size: int = 4, max_horizon: float = 1024.0
) -> Memory:
    """Fast and Forgetful Memory (complex-decay aggregator with input and output gates, one scan).

    memory_size: channels m (decays). context_size: frequencies c per channel. max_horizon: the
    longest initial decay horizon (steps to 1%)."""
    return FFM(input_size, hidden_size, memory_size, context_size, max_horizon)

