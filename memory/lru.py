"""LRU, the Linear Recurrent Unit (Orvieto, Smith, Gu, Fernando, Gulcehre, Pascanu, De,
"Resurrecting Recurrent Neural Networks for Long Sequences", ICML 2023).

A diagonal complex linear recurrence over N state dimensions, input u_t [input], output [hidden]:

    lambda = exp(-exp(nu) + i exp(theta))           # |lambda| = exp(-exp(nu)) < 1 for every nu
    gamma  = exp(gamma_log)                         # normalization, init sqrt(1 - |lambda|^2)
    x_t = lambda * x_{t-1} + gamma * (B u_t)        # complex [N]; x restarts from 0 at a reset
    y_t = Re(C x_t) + D u_t

The exponential parameterization keeps every eigenvalue inside the unit disk whatever the
optimizer does, and lets it get close to 1 smoothly. gamma makes the state's scale independent
of |lambda| at init (white-noise input gives E|x|^2 = E|B u|^2). Initialization as the paper:
|lambda| uniform over the ring r_min <= |lambda| <= r_max (uniform in area), phase uniform in
[0, max_phase]; B and C complex Gaussian with variance 1/input and 1/N; D Gaussian.

The whole sequence is one memory.ops.linear_scan with complex gate lambda (broadcast over time
and batch) and input gamma * B u_t, resets folded in. Departure: D is a full input -> hidden
matrix (the paper's D is diagonal, input and output sizes being equal there); the block around
the layer (norm, MLP/GLU, residual) is left to the agent. State: (x [B, N, 2],), the complex
state as (real, imaginary) pairs, so that storage and checkpoints see a real tensor.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from memory.base import Memory, State, check_inputs
from memory.ops import linear_scan
from memory.registry import register


class LRU(Memory):
    """Linear Recurrent Unit: diagonal complex recurrence with exponential parameterization."""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        state_size: int = 0,
        r_min: float = 0.4,
        r_max: float = 0.99,
        max_phase: float = 2 * math.pi,
    ):
        super().__init__()
        N = state_size or hidden_size
        if N < 1:
            raise ValueError(f"lru: state_size must be >= 1 (0 = hidden_size), got {state_size}")
        if not 0.0 <= r_min < r_max < 1.0:
            raise ValueError(f"lru: need 0 <= r_min < r_max < 1, got r_min={r_min}, r_max={r_max}")
        if not max_phase > 0:
            raise ValueError(f"lru: max_phase must be > 0, got {max_phase}")
        self.input_size, self.output_size, self.state_size = input_size, hidden_size, N
        u1, u2 = torch.rand(N), torch.rand(N)
        # |lambda|^2 uniform in [r_min^2, r_max^2]: exp(nu) = -log|lambda| = -0.5 log|lambda|^2.
        mag2 = u1 * (r_max**2 - r_min**2) + r_min**2
        self.nu_log = nn.Parameter(torch.log(-0.5 * torch.log(mag2)))
        self.theta_log = nn.Parameter(torch.log(max_phase * u2.clamp_min(1e-4)))
        self.gamma_log = nn.Parameter(0.5 * torch.log1p(-mag2))  # log sqrt(1 - |lambda|^2)
        self.B_re = nn.Parameter(torch.randn(N, input_size) / math.sqrt(2 * input_size))
        self.B_im = nn.Parameter(torch.randn(N, input_size) / math.sqrt(2 * input_size))
        self.C_re = nn.Parameter(torch.randn(hidden_size, N) / math.sqrt(N))
        self.C_im = nn.Parameter(torch.randn(hidden_size, N) / math.sqrt(N))
        self.D = nn.Linear(input_size, hidden_size, bias=False)

    def eigenvalues(self) -> Tensor:
        """lambda [N] (complex)."""
        return torch.exp(torch.complex(-torch.exp(self.nu_log), torch.exp(self.theta_log)))

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        return (torch.zeros(batch_size, self.state_size, 2, device=device),)

    def forward(self, x: Tensor, state: State, reset: Tensor) -> tuple[Tensor, State]:
        check_inputs(self, x, reset)
        T, B, _ = x.shape
        want = (B, self.state_size, 2)
        if not isinstance(state, tuple) or len(state) != 1 or tuple(state[0].shape) != want:
            got = [list(s.shape) for s in state] if isinstance(state, tuple) else type(state).__name__
            raise ValueError(f"lru: state must be (x,) with x {list(want)} (real, imaginary), got {got}")
        if T == 0:
            return x.new_zeros(0, B, self.output_size), state
        x0 = torch.view_as_complex(state[0].contiguous())  # [B, N]
        bu = torch.complex(x @ self.B_re.T, x @ self.B_im.T)  # [T, B, N]
        inp = torch.exp(self.gamma_log) * bu
        lam = self.eigenvalues().expand(1, 1, -1)  # [1, 1, N]: broadcast over time and batch
        xs = linear_scan(lam, inp, reset, x0)  # [T, B, N] complex
        y = xs.real @ self.C_re.T - xs.imag @ self.C_im.T + self.D(x)  # Re(C x) + D u
        return y, (torch.view_as_real(xs[-1]),)


@register("lru", test_variants=[{"state_size": 5, "r_min": 0.9, "r_max": 0.999, "max_phase": 0.3}])
def make_lru(
    input_size: int,
    hidden_size: int,
    state_size: int = 0,
    r_min: float = 0.4,
    r_max: float = 0.99,
    max_phase: float = 2 * math.pi,
) -> Memory:
    """Linear Recurrent Unit (diagonal complex recurrence, exponential parameterization, one scan).

    state_size: complex state dims N (0 = hidden_size). r_min, r_max: the ring |lambda| is
    initialized on. max_phase: eigenvalue phases are initialized in [0, max_phase]."""
    return LRU(input_size, hidden_size, state_size, r_min, r_max, max_phase)
