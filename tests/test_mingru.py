"""mingru: the layer (one linear_scan per layer over the sequence) equals the paper's equations run
step by step (values and gradients, float64, random resets, a carried state); the candidate
activation is positive and continuous; options and errors.

The backbone contract (tests/test_memory_contract.py) also runs for mingru and its variants."""

from __future__ import annotations

import pytest
import torch

import memory
from memory.mingru import g_act

F64 = torch.float64


def _layer(num_layers=1, seed=0):
    torch.manual_seed(seed)
    m = memory.make("mingru", 5, 7, num_layers=num_layers).double()
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


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("T", [1, 9, 40])
def test_sequence_equals_reference_values_and_gradients(num_layers, T):
    m = _layer(num_layers)
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


def test_options_and_errors():
    assert memory.parse_options("mingru", ["num_layers=3"]) == {"num_layers": 3}
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
