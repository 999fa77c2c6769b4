"""lru: the layer (one complex linear_scan over the sequence) equals the paper's recurrence run step
by step (values and gradients, float64, random resets, a carried state); the initialization puts
the eigenvalues on the ring and the normalization keeps the state's scale; options and errors.

The backbone contract (tests/test_memory_contract.py) also runs for lru and its variants."""

from __future__ import annotations

import math

import pytest
import torch

import memory

F64 = torch.float64


def _layer(seed=0, **opts):
    torch.manual_seed(seed)
    m = memory.make("lru", 5, 7, state_size=6, **opts).double()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return m


def _reference(m, u, x0, reset):
    """x_t = lambda x_{t-1} + gamma (B u_t), y_t = Re(C x_t) + D u_t, one step at a time."""
    lam = torch.exp(-torch.exp(m.nu_log) + 1j * torch.exp(m.theta_log))
    gamma = torch.exp(m.gamma_log)
    Bc = torch.complex(m.B_re, m.B_im)
    Cc = torch.complex(m.C_re, m.C_im)
    x = torch.view_as_complex(x0)
    ys = []
    for t in range(u.shape[0]):
        x = torch.where(reset[t][:, None], torch.zeros_like(x), x)
        x = lam * x + gamma * (u[t].to(Bc.dtype) @ Bc.T)
        ys.append((x @ Cc.T).real + u[t] @ m.D.weight.T)
    return torch.stack(ys), torch.view_as_real(x)


@pytest.mark.parametrize("T", [1, 9, 40])
def test_sequence_equals_reference_values_and_gradients(T):
    m = _layer()
    g = torch.Generator().manual_seed(T)
    B = 3
    u = torch.randn(T, B, 5, generator=g, dtype=F64)
    reset = torch.rand(T, B, generator=g) < 0.2
    x0 = torch.randn(B, 6, 2, generator=g, dtype=F64)
    w = torch.randn(T, B, 7, generator=g, dtype=F64)
    w_s = torch.randn(B, 6, 2, generator=g, dtype=F64)
    results = []
    for fn in (lambda uu, ss: (lambda y, s: (y, s[0]))(*m(uu, (ss,), reset)), lambda uu, ss: _reference(m, uu, ss, reset)):
        uu = u.clone().requires_grad_(True)
        ss = x0.clone().requires_grad_(True)
        y, s = fn(uu, ss)
        loss = (y * w).sum() + (s * w_s).sum()
        results.append((y, s, torch.autograd.grad(loss, [uu, ss, *m.parameters()])))
    (y1, s1, g1), (y2, s2, g2) = results
    torch.testing.assert_close(y1, y2, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(s1, s2, rtol=1e-10, atol=1e-10)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_initialization_ring_phases_and_normalization():
    torch.manual_seed(0)
    m = memory.make("lru", 4, 8, state_size=2000, r_min=0.5, r_max=0.95, max_phase=math.pi / 2)
    lam = m.eigenvalues().detach()
    r = lam.abs()
    assert r.min() >= 0.5 - 1e-6 and r.max() <= 0.95 + 1e-6
    # Uniform in area: the mean of |lambda|^2 is the middle of [r_min^2, r_max^2].
    assert abs((r**2).mean().item() - (0.25 + 0.9025) / 2) < 0.02
    phase = lam.angle()
    assert phase.min() >= 0 and phase.max() <= math.pi / 2 + 1e-6
    torch.testing.assert_close(torch.exp(m.gamma_log).detach(), torch.sqrt(1 - r**2), rtol=1e-5, atol=1e-6)


def test_eigenvalues_stay_inside_the_unit_disk_for_any_parameters():
    m = memory.make("lru", 4, 8)
    with torch.no_grad():
        m.nu_log.uniform_(-20, 5)
        m.theta_log.uniform_(-5, 5)
    assert (m.eigenvalues().abs() < 1).all()


def test_normalized_state_scale_is_independent_of_the_radius():
    """White-noise input, long sequence: E|x_t|^2 is about E|gamma B u|^2 / (1 - |lambda|^2), i.e.
    about E|B u|^2 for every radius, near 1 and near 0 alike."""
    torch.manual_seed(0)
    m = memory.make("lru", 16, 8, state_size=4, r_min=0.0, r_max=0.999)
    with torch.no_grad():
        m.nu_log.copy_(torch.log(-torch.log(torch.tensor([0.2, 0.9, 0.99, 0.999]))))
        m.gamma_log.copy_(0.5 * torch.log1p(-torch.tensor([0.2, 0.9, 0.99, 0.999]) ** 2))
    u = torch.randn(6000, 16, 16)
    with torch.no_grad():
        bu = torch.complex(u @ m.B_re.T, u @ m.B_im.T)
        _, (s,) = m(u, m.initial_state(16), torch.zeros(6000, 16, dtype=torch.bool))
    power = torch.view_as_complex(s.contiguous()).abs().square().mean(0)  # [4] over the batch
    ref = bu.abs().square().mean((0, 1))
    assert ((power / ref) - 1).abs().max() < 0.6  # 16 samples per radius: a loose band


def test_options_and_errors():
    assert memory.parse_options("lru", ["state_size=32", "r_min=0.9"]) == {"state_size": 32, "r_min": 0.9}
    assert "lru" in memory.describe("lru")
    for opts, match in [
        ({"r_min": 0.9, "r_max": 0.5}, "r_min < r_max < 1"),
        ({"r_max": 1.0}, "r_min < r_max < 1"),
        ({"max_phase": 0.0}, "max_phase must be > 0"),
        ({"state_size": -1}, "state_size must be >= 1"),
    ]:
        with pytest.raises(ValueError, match=match):
            memory.make("lru", 4, 8, **opts)
    m = memory.make("lru", 4, 8)
    assert m.initial_state(2)[0].shape == (2, 8, 2)
    with pytest.raises(ValueError, match=r"state must be \(x,\)"):
        m(torch.zeros(3, 2, 4), m.initial_state(3), torch.zeros(3, 2, dtype=torch.bool))
