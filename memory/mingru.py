"""minGRU: a GRU whose gate and candidate see the input alone (Feng, Tung, Ahmed, Bengio, Hajimirsadeghi,
"Were RNNs All We Needed?", 2024).

Per layer l (input u_t = x_t for the first layer, the previous layer's h_t after it), size D:

    k_t = W_z u_t + b_z;  a_t = W_h u_t + b_h
    z_t = sigmoid(k_t);   h~_t = g(a_t),  g(a) = a + 1/2 for a >= 0, sigmoid(a) for a < 0
    h_t = (1 - z_t) h_{t-1} + z_t h~_t                   (h restarts from 0 at an episode start)
    y_t = h_t of the last layer

Neither z_t nor h~_t reads h_{t-1}, so h is a linear recurrence with input-dependent
coefficients, computed one of two ways per layer over the whole sequence (option ``scan``):

- ``"linear"`` (default): memory.ops.linear_scan(1 - z, z h~, reset, h_0), in ordinary space (a
  loop on CPU, a parallel Hillis-Steele scan on GPU), with the cancellation-free 1 - z = sigmoid(-k).
- ``"log"``: the paper's log-space form, memory.ops.log_linear_scan(log(1 - z), log z + log h~,
  reset, log h_0) with log(1 - z) = -softplus(k), log z = -softplus(-k), log g(a) = log(a + 1/2)
  for a >= 0 and -softplus(-a) below (g keeps h~ > 0 so that log h~ exists); then h = exp(log h).

Why linear is the default: the paper needs log space because its parallel scan is
cumsum-based and divides by running products of gates, which underflow. linear_scan never divides
(its parallel form multiplies gates pairwise, which can only underflow towards 0, the right
limit), and h itself needs no long products: h_t >= z_t h~_t > 0 is one step's term and h is at
most the largest candidate seen, so ordinary float32 represents it without trouble. The two paths
agree to float rounding (tests/test_mingru.py) and learn the same (the cue-recall task below:
identical final returns on seeds 1-3 with torch's default gate bias, 1.00 on seed 1 with -1.5);
the log path costs more on CPU: softplus, log and exp on top of the scan and a logaddexp per step
(benchmarks/backbones.py, hidden 128, one thread, training step against lstm: linear 0.17-0.53x,
log 0.37-0.87x, i.e. 1.5-2.2x linear's time). The log path returns a zero gradient, not NaN,
for a state entry that is exactly 0 (a fresh state), where the true derivative is finite; PPO
never differentiates the stored start states.

Gate bias: k's bias starts at ``gate_bias`` (default -1.5; the candidate's bias keeps torch's
default init). With torch's default (uniform, about 0) z starts near 1/2, so a step's input
survives 5 steps with weight 2^-5 and a gradient to match; at -1.5 it keeps 0.82 per step, and
(1 - z)^5 z, the weight of an input 5 steps back, is near its maximum (z = 1/6). On the learning
test's cue-recall task (tests/test_learning.py's budget, the cue 5 steps before the query), final
return on seeds 1, 2, 3: torch's default bias 0.57, 0.56, 0.90; a zero bias 0.48, 0.59, 0.93;
-1.5 1.00, 0.99, 1.00 (fresh seeds 4, 5: 1.00, 1.00); -3 1.00, 0.99, 0.98 (num_layers=2 with torch's default bias: 1.00, 1.00,
0.94, at about twice the cost of one layer). Tasks that hold a cue for much longer may want a
more negative bias (the keep 1 - z = sigmoid(-gate_bias) sets the initial memory horizon).

State: (h [B, num_layers, D],) in ordinary space for both paths.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from memory.base import Memory, State, check_inputs
from memory.ops import linear_scan, log_linear_scan
from memory.registry import register


def g_act(a: Tensor) -> Tensor:
    """minGRU's positive candidate activation: a + 1/2 for a >= 0, sigmoid(a) below (continuous
    at 0, both 1/2; slope 1 and 1/4)."""
    return torch.where(a >= 0, a + 0.5, torch.sigmoid(a))


def log_g_act(a: Tensor) -> Tensor:
    """log g(a): log(a + 1/2) for a >= 0, log sigmoid(a) = -softplus(-a) below (each branch
    evaluated where it is finite; no log of 0 anywhere)."""
    return torch.where(a >= 0, torch.log(a.clamp_min(0) + 0.5), -F.softplus(-a))


class _LogState(torch.autograd.Function):
    """log h for a state h >= 0, with gradient grad / h where h > 0 and 0 where h = 0 (torch.log's
    would be 0 * inf = NaN there: log_linear_scan passes a zero gradient to a -inf log state)."""

    @staticmethod
    def forward(ctx, h: Tensor) -> Tensor:
        ctx.save_for_backward(h)
        return torch.log(h)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (h,) = ctx.saved_tensors
        return torch.where(h > 0, grad / h, torch.zeros_like(grad))


SCANS = ("linear", "log")
# Initial bias of the gate pre-activation k: z = sigmoid(-1.5) = 0.18, keep 1 - z = 0.82. See the
# module docstring ("Gate bias") for the measurements behind it.
GATE_BIAS = -1.5


class MinGRU(Memory):
    """Stacked minGRU layers; each is one linear scan over the sequence."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, scan: str = "linear",
                 gate_bias: float = GATE_BIAS):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"mingru: num_layers must be >= 1, got {num_layers}")
        if scan not in SCANS:
            raise ValueError(f"mingru: scan must be one of {SCANS}, got {scan!r}")
        self.scan = scan
        self.input_size, self.output_size = input_size, hidden_size
        self.hidden_size, self.num_layers = hidden_size, num_layers
        # One projection per layer to [k | a] (gate and candidate pre-activations).
        self.proj = nn.ModuleList(
            nn.Linear(input_size if l == 0 else hidden_size, 2 * hidden_size) for l in range(num_layers)
        )
        with torch.no_grad():
            for p in self.proj:
                p.bias[:hidden_size] = gate_bias  # k's bias: z = sigmoid(gate_bias) at zero input

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        return (torch.zeros(batch_size, self.num_layers, self.hidden_size, device=device),)

    def coefficients(self, u: Tensor, layer: int) -> tuple[Tensor, Tensor]:
        """u [T, B, in] -> (gate 1 - z_t, input z_t h~_t), each [T, B, D]."""
        k, a = self.proj[layer](u).chunk(2, -1)
        return torch.sigmoid(-k), torch.sigmoid(k) * g_act(a)

    def log_coefficients(self, u: Tensor, layer: int) -> tuple[Tensor, Tensor]:
        """u [T, B, in] -> (log(1 - z_t), log(z_t h~_t)), each [T, B, D]."""
        k, a = self.proj[layer](u).chunk(2, -1)
        return -F.softplus(k), log_g_act(a) - F.softplus(-k)

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
            if self.scan == "log":
                log_gate, log_inp = self.log_coefficients(u, layer)
                u = log_linear_scan(log_gate, log_inp, reset, _LogState.apply(h0[:, layer])).exp()  # [T, B, D]
            else:
                gate, inp = self.coefficients(u, layer)
                u = linear_scan(gate, inp, reset, h0[:, layer])  # [T, B, D]
            finals.append(u[-1])
        return u, (torch.stack(finals, 1),)


@register("mingru", test_variants=[{"num_layers": 2}, {"scan": "log"}, {"num_layers": 2, "scan": "log"}])
def make_mingru(
    input_size: int, hidden_size: int, num_layers: int = 1, scan: str = "linear", gate_bias: float = GATE_BIAS
) -> Memory:
    """minGRU (gate and candidate from the input alone; one scan per layer).

    num_layers: stacked layers. scan: linear (linear_scan in ordinary space) or log (the paper's
    log-space form, log_linear_scan); the same function, see the module docstring. gate_bias:
    initial bias of the gate pre-activation (z = sigmoid(gate_bias) at zero input)."""
    return MinGRU(input_size, hidden_size, num_layers, scan, gate_bias)

