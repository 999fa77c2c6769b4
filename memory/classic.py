"""The classic backbones: lstm, gru, and mlp (no memory, the control every comparison needs)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from memory.base import Memory, State, check_inputs
from memory.ops.gru import gru_layer
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
    """nn.LSTM / nn.GRU with per-env episode resets, by one of three equal computations:

    - ``fused``: torch's fused kernel over each run of steps in which no env resets, masking the
      state at run starts. Fastest when resets are rare (long episodes, acting with T = 1).
    - ``packed``: every episode segment of every env becomes its own sequence of one
      PackedSequence (zero start state, or the carried state for each env's first segment), so
      one fused call covers the whole [T, B] however many resets it has; outputs are scattered
      back to [T, B]. On CPU torch's packed LSTM is slow: several times the loop's training step
      (benchmarks/backbones.py), so it is opt-in; it is there for GPUs, where a step loop is
      bound by kernel launches (not measured yet).
    - ``loop``: one input projection for all T, then a step loop with the reset mask folded in.
      Its cost does not depend on the resets, so it wins when short episodes cut a sequence into
      many runs (the crossover on CPU: benchmarks/backbones.py). The GRU's
      loop is memory.ops.gru_layer (hand-written backward).
    ``auto`` picks fused or loop per call (on CPU: LSTM acting steps, T = 1, and GRU training,
    T > 1, take the loop)."""

    cell_cls: type[nn.RNNBase]

    def __init__(
        self, input_size: int, hidden_size: int, num_layers: int = 1, impl: str = "auto",
        remember_bias: float = 0.0, init_gain: float = 1.0,
    ):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        if not init_gain > 0:
            raise ValueError(f"init_gain must be > 0, got {init_gain}")
        if impl not in ("auto", "fused", "packed", "loop"):
            raise ValueError(f"impl must be one of auto, fused, packed, loop; got {impl!r}")
        self.input_size, self.output_size = input_size, hidden_size
        self.hidden_size, self.num_layers, self.impl = hidden_size, num_layers, impl
        self.rnn = self.cell_cls(input_size, hidden_size, num_layers=num_layers)
        # CleanRL's recurrent PPO details: orthogonal recurrent/input weights (gain 1; the public
        # baseline in docs/design.md section 7 uses sqrt(2): init_gain), zero biases.
        for name, p in self.rnn.named_parameters():
            if "bias" in name:
                nn.init.zeros_(p)
            else:
                nn.init.orthogonal_(p, init_gain)
        # A positive bias on the gate that keeps the state (LSTM: forget gate; GRU: update gate)
        # makes the fresh network remember across steps instead of halving its state every step.
        H = hidden_size
        keep_slice = slice(H, 2 * H)  # torch's gate order: LSTM (i, f, g, o), GRU (r, z, n)
        with torch.no_grad():
            for layer in range(num_layers):
                getattr(self.rnn, f"bias_ih_l{layer}")[keep_slice] = remember_bias

    def _loop_first(self, x: Tensor) -> bool:
        """Whether ``auto`` takes the step loop whatever the resets (see LSTM and GRU)."""
        return False

    def _n_state(self) -> int:
        return 2 if self.cell_cls is nn.LSTM else 1

    def initial_state(self, batch_size: int, device=None) -> State:
        z = torch.zeros(batch_size, self.num_layers, self.hidden_size, device=device)
        return tuple(z.clone() for _ in range(self._n_state()))

    def forward(self, x: Tensor, state: State, reset: Tensor) -> tuple[Tensor, State]:
        check_inputs(self, x, reset)
        impl = self.impl
        if impl == "loop":
            return self._loop(x, state, reset)
        if impl == "packed":
            return self._packed(x, state, reset)
        if impl == "auto" and self._loop_first(x):
            return self._loop(x, state, reset)
        bounds = _segments(reset)
        if impl == "auto" and len(bounds) - 1 > max(4, x.shape[0] // 4):
            return self._loop(x, state, reset)
        return self._fused(x, state, reset, bounds)

    def _packed(self, x: Tensor, state: State, reset: Tensor) -> tuple[Tensor, State]:
        T, B, D = x.shape
        # Segment ids in env-major order: a segment starts at t = 0 and at every reset.
        starts = reset.t().clone()  # [B, T]
        starts[:, 0] = True
        seg = starts.reshape(-1).cumsum(0).sub_(1)  # [B*T]
        n_seg = int(seg[-1]) + 1
        t_idx = torch.arange(T, device=x.device).repeat(B)
        seg_start_t = torch.zeros(n_seg, dtype=torch.long, device=x.device)
        seg_start_t[seg[starts.reshape(-1)]] = t_idx[starts.reshape(-1)]
        off = t_idx - seg_start_t[seg]  # offset of each step inside its segment
        lengths = torch.bincount(seg, minlength=n_seg)
        padded = x.new_zeros(int(lengths.max()), n_seg, D)
        padded[off, seg] = x.transpose(0, 1).reshape(B * T, D)
        packed = nn.utils.rnn.pack_padded_sequence(padded, lengths.cpu(), enforce_sorted=False)
        # Start states: each env's first segment continues its carried state unless it resets at 0.
        first = seg.view(B, T)[:, 0]  # [B]
        keep0 = (~reset[0]).to(x.dtype).view(1, B, 1)
        h0 = []
        for s in state:
            h = s.new_zeros(self.num_layers, n_seg, self.hidden_size)
            h = h.index_copy(1, first, s.transpose(0, 1) * keep0)
            h0.append(h)
        out, new = self.rnn(packed, tuple(h0) if len(h0) == 2 else h0[0])
        out, _ = nn.utils.rnn.pad_packed_sequence(out)  # [Lmax, n_seg, H]
        y = out[off, seg].view(B, T, -1).transpose(0, 1)
        last = seg.view(B, T)[:, -1]
        finals = list(new) if isinstance(new, tuple) else [new]
        return y, tuple(f[:, last].transpose(0, 1) for f in finals)

    def _fused(self, x: Tensor, state: State, reset: Tensor, bounds: list[int]) -> tuple[Tensor, State]:
        # State is batch-first ([B, layers, H]) per the contract; nn.LSTM wants [layers, B, H].
        hs = [s.transpose(0, 1) for s in state]
        keep = (~reset).to(x.dtype)  # [T, B]
        ys = []
        for a, b in zip(bounds[:-1], bounds[1:]):
            m = keep[a].view(1, -1, 1)  # zero the state of envs whose episode starts at a
            hs = [h * m for h in hs]
            y, new = self.rnn(x[a:b], tuple(hs) if len(hs) == 2 else hs[0])
            hs = list(new) if isinstance(new, tuple) else [new]
            ys.append(y)
        y = ys[0] if len(ys) == 1 else torch.cat(ys, 0)
        return y, tuple(h.transpose(0, 1) for h in hs)

    def _loop(self, x: Tensor, state: State, reset: Tensor) -> tuple[Tensor, State]:
        T, B, _ = x.shape
        keep = (~reset).to(x.dtype).unsqueeze(-1).unbind(0)  # T x [B, 1]
        finals = [[] for _ in state]
        inp = x
        for layer in range(self.num_layers):
            w_ih = getattr(self.rnn, f"weight_ih_l{layer}")
            w_hh = getattr(self.rnn, f"weight_hh_l{layer}")
            b_ih = getattr(self.rnn, f"bias_ih_l{layer}")
            b_hh = getattr(self.rnn, f"bias_hh_l{layer}")
            xw = torch.addmm(b_ih, inp.reshape(T * B, -1), w_ih.t()).view(T, B, -1).unbind(0)
            carry = [s[:, layer] for s in state]
            ys = []
            for t in range(T):
                carry = [c * keep[t] for c in carry]
                carry = self._cell(xw[t], carry, w_hh, b_hh)
                ys.append(carry[0])
            for f, c in zip(finals, carry):
                f.append(c)
            inp = torch.stack(ys, 0)
        return inp, tuple(torch.stack(f, 1) for f in finals)

    def _cell(self, xw: Tensor, carry: list[Tensor], w_hh: Tensor, b_hh: Tensor) -> list[Tensor]:
        raise NotImplementedError


class LSTM(_Recurrent):
    cell_cls = nn.LSTM

    def _loop_first(self, x: Tensor) -> bool:
        # One acting step (T = 1): the loop's two products and five element-wise ops cost less
        # than a call into torch's mkldnn kernel (benchmarks/backbones.py, act column). For
        # training sequences the fused kernel wins.
        return x.device.type == "cpu" and x.shape[0] == 1

    def _cell(self, xw, carry, w_hh, b_hh):
        h, c = carry
        i, f, g, o = torch.addmm(b_hh, h, w_hh.t()).add_(xw).chunk(4, 1)  # torch's gate order
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return [torch.sigmoid(o) * torch.tanh(c), c]


class GRU(_Recurrent):
    cell_cls = nn.GRU

    def _loop_first(self, x: Tensor) -> bool:
        # torch has no fused GRU kernel on CPU: nn.GRU runs its own autograd step loop, which
        # gru_layer's hand-written backward beats for training (benchmarks/backbones.py); a
        # single acting step is cheaper through nn.GRU.
        return x.device.type == "cpu" and x.shape[0] > 1

    def _loop(self, x: Tensor, state: State, reset: Tensor) -> tuple[Tensor, State]:
        # memory.ops.gru_layer: the step loop with a hand-written backward (torch has no fused
        # GRU kernel on CPU, so this is also what ``auto`` picks there).
        T, B, _ = x.shape
        keep = (~reset).to(x.dtype)
        (h,) = state
        inp, finals = x, []
        for layer in range(self.num_layers):
            w_ih = getattr(self.rnn, f"weight_ih_l{layer}")
            b_ih = getattr(self.rnn, f"bias_ih_l{layer}")
            xw = torch.addmm(b_ih, inp.reshape(T * B, -1), w_ih.t()).view(T, B, -1)
            inp, h_last = gru_layer(xw, h[:, layer], keep, getattr(self.rnn, f"weight_hh_l{layer}"), getattr(self.rnn, f"bias_hh_l{layer}"))
            finals.append(h_last)
        return inp, (torch.stack(finals, 1),)


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


_VARIANTS = [{"impl": "fused"}, {"impl": "packed"}, {"impl": "loop"}, {"num_layers": 2, "impl": "loop"},
             {"num_layers": 2, "impl": "fused"}, {"num_layers": 2, "impl": "packed"}]


@register("lstm", test_variants=_VARIANTS)
def make_lstm(
    input_size: int, hidden_size: int, num_layers: int = 1, impl: str = "auto", remember_bias: float = 0.0,
    init_gain: float = 1.0,
) -> Memory:
    """LSTM (torch's fused kernel between resets, or a step loop when resets are frequent)."""
    return LSTM(input_size, hidden_size, num_layers, impl, remember_bias, init_gain)


@register("gru", test_variants=_VARIANTS)
def make_gru(
    input_size: int, hidden_size: int, num_layers: int = 1, impl: str = "auto", remember_bias: float = 0.0,
    init_gain: float = 1.0,
) -> Memory:
    """GRU (torch's fused kernel between resets, or a step loop when resets are frequent)."""
    return GRU(input_size, hidden_size, num_layers, impl, remember_bias, init_gain)


@register("mlp")
def make_mlp(input_size: int, hidden_size: int) -> Memory:
    """No memory: one Linear+Tanh layer applied per step (the control)."""
    return MLP(input_size, hidden_size)
