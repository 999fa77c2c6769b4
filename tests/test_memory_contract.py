"""Contract tests every registered backbone (and each of its test variants) must pass.

A backbone that registers itself in memory/ is picked up here automatically."""

from __future__ import annotations

import pytest
import torch

import memory
from memory.registry import entry

IN, HID, B = 6, 16, 3


def _cases():
    for name in memory.names():
        yield pytest.param(name, {}, id=name)
        for i, v in enumerate(entry(name).test_variants):
            tag = ",".join(f"{k}={val}" for k, val in v.items())
            yield pytest.param(name, v, id=f"{name}[{tag}]")


def _build(name, opts, seed=0):
    torch.manual_seed(seed)
    m = memory.make(name, IN, HID, **opts).double()
    # Random (non-default) weights so zero-initialized projections do not hide bugs.
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return m


def _state_double(state):
    return tuple(s.double() if s.is_floating_point() else s for s in state)


def _inputs(T, seed=1, reset_p=0.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, B, IN, generator=g, dtype=torch.float64)
    reset = torch.rand(T, B, generator=g) < reset_p
    return x, reset


def _step_by_step(m, x, state, reset):
    ys = []
    for t in range(x.shape[0]):
        y, state = m(x[t : t + 1], state, reset[t : t + 1])
        ys.append(y)
    return torch.cat(ys, 0), state


def _close(a, b, tol=1e-7):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def _close_state(s1, s2):
    assert len(s1) == len(s2)
    for a, b in zip(s1, s2):
        _close(a, b)


@pytest.mark.parametrize("name,opts", list(_cases()))
class TestContract:
    def test_shapes_and_state_layout(self, name, opts):
        m = _build(name, opts)
        s = m.initial_state(B)
        assert isinstance(s, tuple)
        assert all(t.shape[0] == B for t in s), "state tensors must have the batch on dim 0"
        x, reset = _inputs(5)
        y, s2 = m(x, _state_double(s), reset)
        assert y.shape == (5, B, m.output_size)
        assert [t.shape for t in s2] == [t.shape for t in s]

    @pytest.mark.parametrize("T", [1, 7, 33])
    def test_sequence_equals_step_by_step(self, name, opts, T):
        m = _build(name, opts)
        x, reset = _inputs(T, reset_p=0.15)
        s0 = _state_double(m.initial_state(B))
        y_seq, s_seq = m(x, s0, reset)
        y_step, s_step = _step_by_step(m, x, s0, reset)
        _close(y_seq, y_step)
        _close_state(s_seq, s_step)

    def test_reset_equals_fresh_state(self, name, opts):
        m = _build(name, opts)
        T, t0 = 20, 8
        x, reset = _inputs(T, reset_p=0.1)
        reset[t0] = True  # every env starts a new episode at t0
        s0 = _state_double(m.initial_state(B))
        y, s = m(x, s0, reset)
        y_fresh, s_fresh = m(x[t0:], s0, reset[t0:])
        _close(y[t0:], y_fresh)
        _close_state(s, s_fresh)

    def test_reset_of_one_env_leaves_others(self, name, opts):
        m = _build(name, opts)
        x, reset = _inputs(12)
        s0 = _state_double(m.initial_state(B))
        # Start from a non-trivial state so a reset actually changes something.
        _, s_warm = m(x, s0, reset)
        r = reset.clone()
        r[5, 1] = True
        y_a, _ = m(x, s_warm, reset)
        y_b, _ = m(x, s_warm, r)
        _close(y_a[:, [0, 2]], y_b[:, [0, 2]])
        _close(y_a[:5, 1], y_b[:5, 1])

    def test_split_call_equals_one_call(self, name, opts):
        m = _build(name, opts)
        x, reset = _inputs(30, reset_p=0.1)
        s0 = _state_double(m.initial_state(B))
        y, s = m(x, s0, reset)
        y1, s1 = m(x[:13], s0, reset[:13])
        y2, s2 = m(x[13:], s1, reset[13:])
        _close(y, torch.cat([y1, y2], 0))
        _close_state(s, s2)

    def test_gradients_flow_and_are_finite(self, name, opts):
        m = _build(name, opts)
        x, reset = _inputs(10, reset_p=0.1)
        x.requires_grad_(True)
        y, _ = m(x, _state_double(m.initial_state(B)), reset)
        y.square().sum().backward()
        assert torch.isfinite(x.grad).all()
        assert x.grad.abs().sum() > 0
        for p in m.parameters():
            assert p.grad is None or torch.isfinite(p.grad).all()

    def test_bad_inputs_raise_clear_errors(self, name, opts):
        m = _build(name, opts)
        s = _state_double(m.initial_state(B))
        x, reset = _inputs(4)
        with pytest.raises(ValueError, match="x must be"):
            m(x[..., :-1], s, reset)
        with pytest.raises(ValueError, match="reset"):
            m(x, s, reset[:-1])
        with pytest.raises(ValueError, match="bool"):
            m(x, s, reset.float())


def test_memory_depends_on_past_only_for_memory_backbones():
    """An lstm output at t changes when an earlier input changes; an mlp output does not."""
    for name, has_memory in [("lstm", True), ("gru", True), ("mlp", False)]:
        m = _build(name, {})
        x, reset = _inputs(6)
        s = _state_double(m.initial_state(B))
        y1, _ = m(x, s, reset)
        x2 = x.clone()
        x2[0] += 1.0
        y2, _ = m(x2, s, reset)
        changed = not torch.allclose(y1[-1], y2[-1])
        assert changed == has_memory, name


def test_make_rejects_unknown_names_and_options():
    with pytest.raises(ValueError, match="unknown backbone 'nope'; choose one of: .*lstm"):
        memory.make("nope", 4, 4)
    with pytest.raises(ValueError, match="has no option 'bogus'"):
        memory.make("lstm", 4, 4, bogus=1)
    with pytest.raises(ValueError, match=">= 1"):
        memory.make("lstm", 0, 4)


def test_parse_options_types():
    assert memory.parse_options("lstm", ["num_layers=2"]) == {"num_layers": 2}
    with pytest.raises(ValueError, match="expects a int"):
        memory.parse_options("lstm", ["num_layers=two"])
    with pytest.raises(ValueError, match="not key=value"):
        memory.parse_options("lstm", ["num_layers"])


@pytest.mark.parametrize("name", ["lstm", "gru"])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("impl", ["fused", "packed"])
@pytest.mark.parametrize("reset_p", [0.05, 0.3])
def test_classic_loop_equals_fused_kernel(name, num_layers, impl, reset_p):
    """The step loop and torch's fused kernel (per reset-free run, or one PackedSequence of
    episode segments) are the same function (values and gradients, carried state included)."""
    fused = _build(name, {"impl": impl, "num_layers": num_layers})
    loop = _build(name, {"impl": "loop", "num_layers": num_layers})
    loop.load_state_dict(fused.state_dict())
    x, reset = _inputs(25, reset_p=reset_p)
    reset[0, 0], reset[0, 1] = True, False  # one env starts an episode at t = 0, one carries its state
    g = torch.Generator().manual_seed(3)
    s0_values = [torch.randn(t.shape, generator=g, dtype=torch.float64) for t in fused.initial_state(B)]
    outs = []
    for m in (fused, loop):
        xx = x.clone().requires_grad_(True)
        s0 = tuple(t.clone().requires_grad_(True) for t in s0_values)
        y, s = m(xx, s0, reset)
        (y.sin().sum() + sum(t.cos().sum() for t in s)).backward()
        outs.append((y, s, xx.grad, [p.grad for p in m.parameters()], [t.grad for t in s0]))
    (y1, s1, g1, p1, sg1), (y2, s2, g2, p2, sg2) = outs
    _close(y1, y2)
    _close_state(s1, s2)
    _close(g1, g2)
    for a, b in zip(p1 + sg1, p2 + sg2):
        _close(a, b)


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_init_gain_scales_the_orthogonal_weights(name):
    """Orthogonal init with gain g: every weight matrix has all singular values equal to g."""
    for gain in (1.0, 2.0**0.5):
        m = memory.make(name, 5, 8, num_layers=2, init_gain=gain)
        for pname, p in m.rnn.named_parameters():
            if pname.startswith("weight"):
                sv = torch.linalg.svdvals(p.detach())
                torch.testing.assert_close(sv, torch.full_like(sv, gain), atol=1e-5, rtol=1e-5)
            else:
                assert torch.all(p == 0), pname


@pytest.mark.parametrize("name,gates", [("lstm", 4), ("gru", 3)])
def test_remember_bias_sets_only_the_keep_gate(name, gates):
    m = memory.make(name, 5, 8, num_layers=2, remember_bias=2.0)
    for layer in range(2):
        b = getattr(m.rnn, f"bias_ih_l{layer}").detach().view(gates, 8)
        assert torch.all(b[1] == 2.0) and torch.all(b[0] == 0) and torch.all(b[2:] == 0)
        assert torch.all(getattr(m.rnn, f"bias_hh_l{layer}") == 0)
