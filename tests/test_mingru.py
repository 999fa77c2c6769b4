"""mingru: the layer (one scan per layer over the sequence, linear_scan or the log-space
log_linear_scan) equals the paper's equations run step by step (values and gradients, float64,
random resets, a carried state); the two scan paths agree in float32, from a zero state too; the
candidate activation is positive and continuous and its log is finite; options and errors.

The backbone contract (tests/test_memory_contract.py) also runs for mingru and its variants."""

from __future__ import annotations

import pytest
import torch

import memory
from memory.mingru import g_act

F64 = torch.float64


def _layer(num_layers=1, seed=0, scan="linear"):
    torch.manual_seed(seed)
    m = memory.make("mingru", 5, 7, num_layers=num_layers, scan=scan).double()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return m


def _reference(m, x, h0, reset):
    """The equations, one step at a time, written out from the module docstring."""
    u = x
    finals = []
    for layer in range(m.num_layers):
        W, b = m.proj[layer].weight, m.proj[layer].bias
        h = h0[:, layer]
        ys = []
        for t in range(x.shape[0]):
            h = torch.where(reset[t][:, None], torch.zeros_like(h), h)
            k, a = (u[t] @ W.T + b).chunk(2, -1)
            z = 1 / (1 + torch.exp(-k))
            cand = torch.where(a >= 0, a + 0.5, 1 / (1 + torch.exp(-a)))
            h = (1 - z) * h + z * cand
            ys.append(h)
        u = torch.stack(ys)
        finals.append(h)
    return u, torch.stack(finals, 1)


@pytest.mark.parametrize("scan", ["linear", "log"])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("T", [1, 9, 40])
def test_sequence_equals_reference_values_and_gradients(num_layers, T, scan):
    m = _layer(num_layers, scan=scan)
    g = torch.Generator().manual_seed(T)
    B = 3
    x = torch.randn(T, B, 5, generator=g, dtype=F64)
    reset = torch.rand(T, B, generator=g) < 0.2
    h0 = torch.rand(B, num_layers, 7, generator=g, dtype=F64)
    w = torch.randn(T, B, 7, generator=g, dtype=F64)
    w_h = torch.randn(B, num_layers, 7, generator=g, dtype=F64)
    results = []
    for fn in (lambda xx, hh: m(xx, (hh,), reset), lambda xx, hh: (lambda y, s: (y, (s,)))(*_reference(m, xx, hh, reset))):
        xx = x.clone().requires_grad_(True)
        hh = h0.clone().requires_grad_(True)
        y, (h,) = fn(xx, hh)
        loss = (y * w).sum() + (h * w_h).sum()
        grads = torch.autograd.grad(loss, [xx, hh, *m.parameters()])
        results.append((y, h, grads))
    (y1, h1, g1), (y2, h2, g2) = results
    torch.testing.assert_close(y1, y2, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(h1, h2, rtol=1e-10, atol=1e-10)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_log_scan_equals_linear_scan_in_float32_and_from_a_zero_state():
    """The two scan paths are one function: same parameters, float32, a fresh (zero) state and a
    carried one; outputs, final state and parameter gradients agree to float32 rounding, and the
    log path's gradient with respect to a zero state entry is 0, not NaN."""
    torch.manual_seed(3)
    lin = memory.make("mingru", 5, 7, num_layers=2)
    log = memory.make("mingru", 5, 7, num_layers=2, scan="log")
    log.load_state_dict(lin.state_dict())
    T, B = 50, 4
    x = 3 * torch.randn(T, B, 5)
    reset = torch.rand(T, B) < 0.1
    for h0 in (torch.zeros(B, 2, 7), torch.rand(B, 2, 7)):
        outs = []
        for m in (lin, log):
            hh = h0.clone().requires_grad_(True)
            y, (h,) = m(x, (hh,), reset)
            grads = torch.autograd.grad(y.square().sum() + h.sum(), [hh, *m.parameters()])
            outs.append((y, h, grads))
        (y1, h1, g1), (y2, h2, g2) = outs
        torch.testing.assert_close(y2, y1, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(h2, h1, rtol=1e-5, atol=1e-6)
        for a, b in zip(g2[1:], g1[1:]):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        assert torch.isfinite(g2[0]).all()
        if h0.any():
            torch.testing.assert_close(g2[0], g1[0], rtol=1e-4, atol=1e-5)
        else:
            assert torch.all(g2[0] == 0)


def test_log_candidate_activation_is_log_g():
    a = torch.linspace(-80, 80, 4001, dtype=F64, requires_grad=True)
    from memory.mingru import log_g_act

    lg = log_g_act(a)
    assert torch.isfinite(lg).all()
    torch.testing.assert_close(lg, torch.log(g_act(a)), rtol=1e-9, atol=1e-12)  # sigmoid's own rounding
    (grad,) = torch.autograd.grad(lg.sum(), a)
    assert torch.isfinite(grad).all()


def test_candidate_activation_is_positive_and_continuous():
    a = torch.linspace(-30, 30, 2001, dtype=F64)
    v = g_act(a)
    assert (v > 0).all()
    assert abs(g_act(torch.tensor(0.0)).item() - 0.5) < 1e-12
    assert abs(g_act(torch.tensor(-1e-9, dtype=F64)).item() - 0.5) < 1e-9
    assert torch.all(v[1:] >= v[:-1])  # increasing


def test_state_stays_between_zero_and_the_largest_candidate():
    """h_t is a convex combination of h_{t-1} and h~_t: from h_0 = 0 it stays in (0, max h~]."""
    m = _layer()
    x = torch.randn(60, 4, 5, dtype=F64)
    reset = torch.zeros(60, 4, dtype=torch.bool)
    y, _ = m(x, (torch.zeros(4, 1, 7, dtype=F64),), reset)
    _, cand = m.coefficients(x, 0)
    z = torch.sigmoid(m.proj[0](x).chunk(2, -1)[0])
    assert (y > 0).all()
    assert (y <= (cand / z).amax(0, keepdim=True) + 1e-12).all()


@pytest.mark.parametrize("gate_bias", [None, 0.0, -3.0])
def test_gate_bias_sets_only_the_gate_bias(gate_bias):
    opts = {} if gate_bias is None else {"gate_bias": gate_bias}
    m = memory.make("mingru", 5, 8, num_layers=2, **opts)
    want = -1.5 if gate_bias is None else gate_bias
    for p in m.proj:
        assert torch.all(p.bias[:8] == want)
        assert p.bias[8:].std() > 0  # the candidate's bias keeps torch's init


def test_options_and_errors():
    assert memory.parse_options("mingru", ["num_layers=3"]) == {"num_layers": 3}
    assert memory.parse_options("mingru", ["scan=log"]) == {"scan": "log"}
    assert memory.parse_options("mingru", ["gate_bias=-2"]) == {"gate_bias": -2.0}
    with pytest.raises(ValueError, match=r"scan must be one of \('linear', 'log'\), got 'cumsum'"):
        memory.make("mingru", 4, 8, scan="cumsum")
    assert "mingru" in memory.describe("mingru")
    with pytest.raises(ValueError, match="num_layers must be >= 1"):
        memory.make("mingru", 4, 8, num_layers=0)
    m = memory.make("mingru", 4, 8)
    x = torch.zeros(3, 2, 4)
    reset = torch.zeros(3, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"state must be \(h,\)"):
        m(x, m.initial_state(3), reset)
    y, s = m(torch.zeros(0, 2, 4), m.initial_state(2), torch.zeros(0, 2, dtype=torch.bool))
    assert y.shape == (0, 2, 8)
