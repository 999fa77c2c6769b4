"""minGRU: a GRU whose gate and candidate see the input alone (Feng, Tung, Ahmed, Bengio, Hajimirsadeghi,
"Were RNNs All We Needed?", 2024).

Per layer l (input u_t = x_t for the first layer, the previous layer's h_t after it), size D:

    k_t = W_z u_t + b_z;  a_t = W_h u_t + b_h
    z_t = sigmoid(k_t);   h~_t = g(a_t),  g(a) = a + 1/2 for a >= 0, sigmoid(a) for a < 0
    h_t = (1 - z_t) h_{t-1} + z_t h~_t                   (h restarts from 0 at an episode start)
    y_t = h_t of the last layer

Neither z_t nor h~_t reads h_{t-1}, so h is a linear recurrence with input-dependent
coefficients: one memory.ops.linear_scan(1 - z, z h~, reset, h_0) per layer over the whole
sequence (a loop on CPU, a parallel Hillis-Steele scan on GPU). The paper's log-space form
(log h_t by logcumsumexp, with g keeping h~ positive so that log h~ exists) is what makes its
cumsum-based parallel scan stable: that scan divides by running products of gates. linear_scan
never divides (its parallel form multiplies gates pairwise, which can only underflow towards 0,
the right limit), so the scan itself runs in linear space; the gates are evaluated in the
cancellation-free form 1 - z = sigmoid(-k). g is kept as the paper's (h~ > 0, h bounded by the
largest candidate seen). State: (h [B, num_layers, D],).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from memory.base import Memory, State, check_inputs
from memory.ops import linear_scan
from memory.registry import register


def g_act(a: Tensor) -> Tensor:
    """minGRU's positive candidate activation: a + 1/2 for a >= 0, sigmoid(a) below (continuous
    at 0, both 1/2; slope 1 and 1/4)."""
    return torch.where(a >= 0, a + 0.5, torch.sigmoid(a))


class MinGRU(Memory):
    """Stacked minGRU layers; each is one linear scan over the sequence."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"mingru: num_layers must be >= 1, got {num_layers}")
        self.input_size, self.output_size = input_size, hidden_size
        self.hidden_size, self.num_layers = hidden_size, num_layers
        # One projection per layer to [k | a] (gate and candidate pre-activations).
        self.proj = nn.ModuleList(
            nn.Linear(input_size if l == 0 else hidden_size, 2 * hidden_size) for l in range(num_layers)
        )

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        return (torch.zeros(batch_size, self.num_layers, self.hidden_size, device=device),)

    def coefficients(self, u: Tensor, layer: int) -> tuple[Tensor, Tensor]:
        """u [T, B, in] -> (gate 1 - z_t, input z_t h~_t), each [T, B, D]."""
        k, a = self.proj[layer](u).chunk(2, -1)
        return torch.sigmoid(-k), torch.sigmoid(k) * g_act(a)

    def forward(self, x: Tensor, state: State, reset: Tensor) -> tuple[Tensor, State]:
        check_inputs(self, x, reset)
        T, B, _ = x.shape
        want = (B, self.num_layers, self.hidden_size)
        if not isinstance(state, tuple) or len(state) != 1 or tuple(state[0].shape) != want:
            got = [list(s.shape) for s in state] if isinstance(state, tuple) else type(state).__name__
            raise ValueError(f"mingru: state must be (h,) with h {list(want)}, got {got}")
        if T == 0:
            return x.new_zeros(0, B, self.output_size), state
        (h0,) = state
        u, finals = x, []
        for layer in range(self.num_layers):
            gate, inp = self.coefficients(u, layer)
            u = linear_scan(gate, inp, reset, h0[:, layer])  # [T, B, D]
            finals.append(u[-1])
        return u, (torch.stack(finals, 1),)


@register("mingru", test_variants=[{"num_layers": 2}])
def make_mingru(input_size: int, hidden_size: int, num_layers: int = 1) -> Memory:
    """minGRU (gate and candidate from the input alone; one linear scan per layer)."""
    return MinGRU(input_size, hidden_size, num_layers)

