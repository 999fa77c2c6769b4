"""ffm: the layer (one complex linear_scan over the sequence) equals the paper's aggregator run step
by step (values and gradients, float64, random resets, a carried state) and its closed form
sum_s gamma^(t-s) x~_s; decays stay inside the unit disk; initialization; options and errors.

The backbone contract (tests/test_memory_contract.py) also runs for ffm and its variants."""

from __future__ import annotations

import pytest
import torch

import memory

F64 = torch.float64


def _layer(seed=0, **opts):
    torch.manual_seed(seed)
    m = memory.make("ffm", 5, 7, memory_size=4, context_size=3, **opts).double()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return m


def _reference(m, x, s0, reset):
    """The module docstring's equations, one step at a time."""
    gamma = torch.exp(-m.alpha.abs()[:, None] + 1j * m.omega[None, :])  # [m, c]
    S = torch.view_as_complex(s0)
    ys = []
    for t in range(x.shape[0]):
        S = torch.where(reset[t][:, None, None], torch.zeros_like(S), S)
        a, b = (x[t] @ m.pre.weight.T + m.pre.bias).chunk(2, -1)
        xg = a / (1 + torch.exp(-b))
        S = gamma * S + xg[:, :, None]
        feats = torch.cat([S.real, S.imag], -1).reshape(x.shape[1], -1)
        z = feats @ m.mix.weight.T + m.mix.bias
        z = (z - z.mean(-1, keepdim=True)) / torch.sqrt(z.var(-1, unbiased=False, keepdim=True) + m.norm.eps)
        z = z * m.norm.weight + m.norm.bias
        g_pre, skip = (x[t] @ m.gate.weight.T + m.gate.bias).chunk(2, -1)
        g = 1 / (1 + torch.exp(-g_pre))
        ys.append(z * g + skip * (1 - g))
    return torch.stack(ys), torch.view_as_real(S)


@pytest.mark.parametrize("T", [1, 9, 40])
def test_sequence_equals_reference_values_and_gradients(T):
    m = _layer()
    g = torch.Generator().manual_seed(T)
    B = 3
    x = torch.randn(T, B, 5, generator=g, dtype=F64)
    reset = torch.rand(T, B, generator=g) < 0.2
    s0 = torch.randn(B, 4, 3, 2, generator=g, dtype=F64)
    w = torch.randn(T, B, 7, generator=g, dtype=F64)
    w_s = torch.randn(B, 4, 3, 2, generator=g, dtype=F64)
    results = []
    for fn in (lambda xx, ss: (lambda y, s: (y, s[0]))(*m(xx, (ss,), reset)), lambda xx, ss: _reference(m, xx, ss, reset)):
        xx = x.clone().requires_grad_(True)
        ss = s0.clone().requires_grad_(True)
        y, s = fn(xx, ss)
        loss = (y * w).sum() + (s * w_s).sum()
        results.append((y, s, torch.autograd.grad(loss, [xx, ss, *m.parameters()])))
    (y1, s1, g1), (y2, s2, g2) = results
    torch.testing.assert_close(y1, y2, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(s1, s2, rtol=1e-10, atol=1e-10)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_aggregator_is_the_closed_form_sum():
    """From a zero state, S_T = sum_s gamma^(T-1-s) x~_s (the paper's closed form)."""
    m = _layer()
    T, B = 25, 2
    x = torch.randn(T, B, 5, dtype=F64)
    _, (S,) = m(x, (m.initial_state(B)[0].double(),), torch.zeros(T, B, dtype=torch.bool))
    gamma = m.decays().detach()
    a, b = m.pre(x).chunk(2, -1)
    xg = (a * torch.sigmoid(b)).detach()  # [T, B, m]
    powers = gamma[None] ** torch.arange(T - 1, -1, -1, dtype=F64)[:, None, None]  # [T, m, c]
    closed = (powers[:, None] * xg[..., None]).sum(0)  # [B, m, c]
    torch.testing.assert_close(torch.view_as_complex(S.detach().contiguous()), closed, rtol=1e-10, atol=1e-10)


def test_initial_decays_and_frequencies():
    torch.manual_seed(0)
    m = memory.make("ffm", 4, 8, memory_size=6, context_size=4, max_horizon=100.0)
    gamma = m.decays().detach()
    mag = gamma.abs()[:, 0]
    # Horizons 1 .. 100 steps to 1%: |gamma|^tau = 0.01.
    torch.testing.assert_close(mag[0] ** 1, torch.tensor(0.01), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(mag[-1] ** 100, torch.tensor(0.01), rtol=1e-3, atol=1e-6)
    assert torch.all(mag[1:] > mag[:-1])
    torch.testing.assert_close(gamma.angle()[0], torch.pi * torch.arange(4) / 4)
    with torch.no_grad():
        m.alpha.uniform_(-5, 5)
    assert (m.decays().abs() <= 1).all()


def test_options_and_errors():
    assert memory.parse_options("ffm", ["memory_size=8", "context_size=2"]) == {"memory_size": 8, "context_size": 2}
    assert "ffm" in memory.describe("ffm")
    with pytest.raises(ValueError, match="memory_size and context_size must be >= 1"):
        memory.make("ffm", 4, 8, context_size=0)
    with pytest.raises(ValueError, match="max_horizon must be >= 1"):
        memory.make("ffm", 4, 8, max_horizon=0.5)
    m = memory.make("ffm", 4, 8)
    assert m.initial_state(2)[0].shape == (2, 32, 4, 2)
    with pytest.raises(ValueError, match=r"state must be \(S,\)"):
        m(torch.zeros(3, 2, 4), m.initial_state(3), torch.zeros(3, 2, dtype=torch.bool))
