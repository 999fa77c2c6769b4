"""The classic backbones: lstm, gru, and mlp (no memory, the control every comparison needs)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from memory.base import Memory, State, check_inputs
from memory.registry import register


def _segments(reset: Tensor) -> list[int]:
    """Start indices of the maximal runs of steps in which no env (after the first step) resets.

    Inside a run the state flows freely, so cuDNN/MKL's fused nn.LSTM/nn.GRU can take the whole
    run in one call; states are masked only at run starts. T = 1 gives one run."""
    T = reset.shape[0]
    if T == 1:
        return [0, 1]
    cut = reset[1:].any(dim=1).nonzero().flatten().add_(1).tolist()
    return [0, *cut, T]


class _Recurrent(Memory):
    """nn.LSTM / nn.GRU with per-env episode resets."""

    cell_cls: type[nn.RNNBase]

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.input_size, self.output_size = input_size, hidden_size
        self.hidden_size, self.num_layers = hidden_size, num_layers
        self.rnn = self.cell_cls(input_size, hidden_size, num_layers=num_layers)
        # CleanRL's recurrent PPO details: orthogonal recurrent/input weights, zero biases.
        for name, p in self.rnn.named_parameters():
            if "bias" in name:
                nn.init.zeros_(p)
            else:
                nn.init.orthogonal_(p, 1.0)

    def _n_state(self) -> int:
        return 2 if self.cell_cls is nn.LSTM else 1

    def initial_state(self, batch_size: int, device=None) -> State:
        z = torch.zeros(batch_size, self.num_layers, self.hidden_size, device=device)
        return tuple(z.clone() for _ in range(self._n_state()))

    def forward(self, x: Tensor, state: State, reset: Tensor) -> tuple[Tensor, State]:
        check_inputs(self, x, reset)
        # State is batch-first ([B, layers, H]) per the contract; nn.LSTM wants [layers, B, H].
        hs = [s.transpose(0, 1) for s in state]
        keep = (~reset).to(x.dtype)  # [T, B]
        bounds = _segments(reset)
        ys = []
        for a, b in zip(bounds[:-1], bounds[1:]):
            m = keep[a].view(1, -1, 1)  # zero the state of envs whose episode starts at a
            hs = [h * m for h in hs]
            y, new = self.rnn(x[a:b], tuple(hs) if len(hs) == 2 else hs[0])
            hs = list(new) if isinstance(new, tuple) else [new]
            ys.append(y)
        y = ys[0] if len(ys) == 1 else torch.cat(ys, 0)
        return y, tuple(h.transpose(0, 1) for h in hs)


class LSTM(_Recurrent):
    cell_cls = nn.LSTM


class GRU(_Recurrent):
    cell_cls = nn.GRU


class MLP(Memory):
    """A feed-forward block with no state: its output at t depends on x[t] alone."""

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.input_size, self.output_size = input_size, hidden_size
        self.net = nn.Sequential(nn.Linear(input_size, hidden_size), nn.Tanh())

    def initial_state(self, batch_size: int, device=None) -> State:
        return ()

    def forward(self, x: Tensor, state: State, reset: Tensor) -> tuple[Tensor, State]:
        check_inputs(self, x, reset)
        return self.net(x), ()


@register("lstm", test_variants=[{"num_layers": 2}])
def make_lstm(input_size: int, hidden_size: int, num_layers: int = 1) -> Memory:
    """LSTM (torch's fused kernel between resets)."""
    return LSTM(input_size, hidden_size, num_layers)


@register("gru")
def make_gru(input_size: int, hidden_size: int, num_layers: int = 1) -> Memory:
    """GRU (torch's fused kernel between resets)."""
    return GRU(input_size, hidden_size, num_layers)


@register("mlp")
def make_mlp(input_size: int, hidden_size: int) -> Memory:
    """No memory: one Linear+Tanh layer applied per step (the control)."""
    return MLP(input_size, hidden_size)
