"""ssm: the layer (causal conv + one linear_scan over [T, B, D, N]) equals the module docstring's
equations run step by step (values and gradients, float64, random resets, a carried state
including the conv history); the conv never reads across an episode start; Mamba's
initialization and the defaults' two departures from it (dt range, B/C scale); options and errors.

The backbone contract (tests/test_memory_contract.py) also runs for ssm and its variants."""

from __future__ import annotations

import pytest
import torch

import memory

F64 = torch.float64


def _layer(seed=0, **opts):
    torch.manual_seed(seed)
    m = memory.make("ssm", 5, 6, d_state=3, **opts).double()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return m


def _sig(a):
    return 1 / (1 + torch.exp(-a))


def _reference(m, x, state, reset):
    """One step at a time: the conv over a per-env window of the last K inputs of the episode."""
    h = state[0]
    K = m.conv_kernel
    window = state[1].clone() if K else None  # [B, K-1, D], oldest first
    D, N, R = m.d_inner, m.d_state, m.dt_rank
    ys = []
    for t in range(x.shape[0]):
        r_t = reset[t]
        h = torch.where(r_t[:, None, None], torch.zeros_like(h), h)
        u, z = (x[t] @ m.in_proj.weight.T).chunk(2, -1)
        if K:
            window = torch.where(r_t[:, None, None], torch.zeros_like(window), window)
            full = torch.cat([window, u[:, None]], 1)  # [B, K, D]
            u = (full * m.conv.weight[:, 0].T[None]).sum(1) + m.conv.bias
            window = full[:, 1:]
        u = u * _sig(u)
        proj = u @ m.x_proj.weight.T
        r, Bm, Cm = proj[:, :R], proj[:, R : R + N], proj[:, R + N :]
        dt = torch.log1p(torch.exp(r @ m.dt_proj.weight.T + m.dt_proj.bias))  # softplus [B, D]
        A = -torch.exp(m.A_log)
        h = torch.exp(dt[:, :, None] * A) * h + (dt * u)[:, :, None] * Bm[:, None, :]
        y = (h * Cm[:, None, :]).sum(-1) + m.D_skip * u
        ys.append((y * z * _sig(z)) @ m.out_proj.weight.T)
    return torch.stack(ys), ((h, window) if K else (h,))


@pytest.mark.parametrize("opts", [{}, {"conv_kernel": 0}, {"conv_kernel": 2, "expand": 2}])
@pytest.mark.parametrize("T", [1, 9, 30])
def test_sequence_equals_reference_values_and_gradients(opts, T):
    m = _layer(**opts)
    g = torch.Generator().manual_seed(T)
    B = 3
    x = torch.randn(T, B, 5, generator=g, dtype=F64)
    reset = torch.rand(T, B, generator=g) < 0.2
    s0 = tuple(torch.randn(s.shape, generator=g, dtype=F64) for s in m.initial_state(B))
    w = torch.randn(T, B, 6, generator=g, dtype=F64)
    w_s = [torch.randn(s.shape, generator=g, dtype=F64) for s in s0]
    results = []
    for fn in (m, lambda xx, ss, rr: _reference(m, xx, ss, rr)):
        xx = x.clone().requires_grad_(True)
        ss = tuple(s.clone().requires_grad_(True) for s in s0)
        y, s = fn(xx, ss, reset)
        loss = (y * w).sum() + sum((a * b).sum() for a, b in zip(s, w_s))
        results.append((y, s, torch.autograd.grad(loss, [xx, *ss, *m.parameters()])))
    (y1, s1, g1), (y2, s2, g2) = results
    torch.testing.assert_close(y1, y2, rtol=1e-10, atol=1e-10)
    for a, b in zip([*s1, *g1], [*s2, *g2]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_conv_history_never_crosses_an_episode_start():
    """After a reset at t0, outputs from t0 on do not depend on inputs (or the carried history)
    from before t0: their gradients there are exactly zero."""
    m = _layer()
    T, t0, B = 12, 5, 2
    x = torch.randn(T, B, 5, dtype=F64, requires_grad=True)
    s0 = tuple(torch.randn(s.shape, dtype=F64, requires_grad=True) for s in m.initial_state(B))
    reset = torch.zeros(T, B, dtype=torch.bool)
    reset[t0] = True
    y, _ = m(x, s0, reset)
    gx, *gs = torch.autograd.grad(y[t0:].sum(), [x, *s0])
    assert gx[:t0].abs().max() == 0 and all(t.abs().max() == 0 for t in gs)
    assert gx[t0:].abs().max() > 0


def test_initialization_follows_mamba():
    torch.manual_seed(0)
    m = memory.make("ssm", 4, 32, d_state=4, dt_min=1e-3, dt_max=0.1, bc_scale=1.0)
    torch.testing.assert_close(torch.exp(m.A_log[0]).detach(), torch.arange(1.0, 5.0))
    dt = torch.nn.functional.softplus(m.dt_proj.bias).detach()
    assert dt.min() >= 1e-3 * 0.999 and dt.max() <= 0.1 * 1.001
    assert torch.all(m.D_skip == 1)
    assert m.dt_rank == 2 and m.d_inner == 32
    assert m.x_proj.weight.abs().max() <= 32**-0.5  # torch's default: uniform in +-1/sqrt(fan_in)


def test_default_init_departures_dt_range_and_bc_scale():
    """The defaults depart from Mamba's in two places (module docstring): dt in [0.1, 1], and
    x_proj's B and C rows at 16 times torch's init, with the dt rows and everything else drawn
    as with bc_scale=1 (same seed, same parameters but those rows)."""
    torch.manual_seed(0)
    m = memory.make("ssm", 4, 32, d_state=4)
    dt = torch.nn.functional.softplus(m.dt_proj.bias).detach()
    assert dt.min() >= 0.1 * 0.999 and dt.max() <= 1.0 * 1.001
    torch.manual_seed(0)
    ref = memory.make("ssm", 4, 32, d_state=4, bc_scale=1.0)
    R = m.dt_rank
    torch.testing.assert_close(m.x_proj.weight[R:], 16 * ref.x_proj.weight[R:], rtol=0, atol=0)
    torch.testing.assert_close(m.x_proj.weight[:R], ref.x_proj.weight[:R], rtol=0, atol=0)
    for (name, p), q in zip(m.named_parameters(), ref.parameters()):
        if name != "x_proj.weight":
            assert torch.equal(p, q), name


def test_options_and_errors():
    assert memory.parse_options("ssm", ["d_state=16", "expand=2"]) == {"d_state": 16, "expand": 2}
    assert memory.parse_options("ssm", ["bc_scale=1"]) == {"bc_scale": 1.0}
    assert "ssm" in memory.describe("ssm")
    for opts, match in [
        ({"d_state": 0}, "must be >= 1"),
        ({"conv_kernel": 1}, "conv_kernel must be 0"),
        ({"dt_min": 0.2, "dt_max": 0.1}, "dt_min <= dt_max"),
        ({"bc_scale": 0.0}, "bc_scale must be > 0"),
    ]:
        with pytest.raises(ValueError, match=match):
            memory.make("ssm", 4, 8, **opts)
    m = memory.make("ssm", 4, 8)
    assert [list(s.shape) for s in m.initial_state(2)] == [[2, 8, 8], [2, 3, 8]]
    with pytest.raises(ValueError, match=r"state must be \(h, x_hist\)"):
        m(torch.zeros(3, 2, 4), m.initial_state(2)[:1], torch.zeros(3, 2, dtype=torch.bool))
