"""The stable matrix scan (memory.ops.stable_matrix_scan) and the MRU's stable path.

- the fast paths (loop with a hand-written backward, parallel) equal the reference loop, values and
  gradients, with resets and a carried state (hypothesis over shapes, lengths and resets);
- exp(s) U equals the plain products (matrix_scan_ref) in float64 where both are finite;
- on 4,096 steps of growing (and of shrinking) matrices the plain float32 products leave the range
  while the stable ones stay finite, with s equal to the float64 log-norm;
- the MRU: the stable exact readout equals the plain model in float64 (outputs and every parameter's
  gradient); the norm readout stays finite, gradients included, where the plain model overflows.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import memory
from memory.ops import matrix_scan, matrix_scan_ref, stable_matrix_scan, stable_matrix_scan_ref

PROPERTY = settings(max_examples=30, deadline=None)


def _case(seed: int, T: int, B: int, heads: int, o: int, reset_p: float, scale: float, carried: bool):
    g = torch.Generator().manual_seed(seed)
    eye = torch.eye(o, dtype=torch.float64)
    m = eye + scale * torch.randn(T, B, heads, o, o, generator=g, dtype=torch.float64)
    reset = torch.rand(T, B, generator=g) < reset_p
    state0 = None
    if carried:
        u0 = torch.randn(B, heads, o, o, generator=g, dtype=torch.float64)
        u0 = u0 / torch.linalg.matrix_norm(u0)[..., None, None]
        s0 = torch.randn(B, heads, generator=g, dtype=torch.float64)
        state0 = (u0, s0)
    return m, reset, state0


def _grads(fn, m, state0, wu, ws):
    leaves = [m.clone().requires_grad_()]
    st0 = None
    if state0 is not None:
        st0 = tuple(t.clone().requires_grad_() for t in state0)
        leaves += list(st0)
    u, s = fn(leaves[0], st0)
    loss = (u * wu).sum() + (s * ws).sum()
    return (u.detach(), s.detach()), torch.autograd.grad(loss, leaves)


@PROPERTY
@given(
    seed=st.integers(0, 2**31 - 1),
    T=st.integers(1, 40),
    B=st.integers(1, 3),
    heads=st.integers(1, 2),
    o=st.integers(1, 5),
    reset_p=st.sampled_from([0.0, 0.1, 0.5, 1.0]),
    scale=st.floats(0.05, 1.0),
    carried=st.booleans(),
)
def test_fast_paths_equal_reference_values_and_gradients(seed, T, B, heads, o, reset_p, scale, carried):
    m, reset, state0 = _case(seed, T, B, heads, o, reset_p, scale, carried)
    g = torch.Generator().manual_seed(seed + 1)
    wu = torch.randn(m.shape, generator=g, dtype=torch.float64)
    ws = torch.randn(m.shape[:-2], generator=g, dtype=torch.float64)
    (u_ref, s_ref), g_ref = _grads(lambda mm, s0: stable_matrix_scan_ref(mm, reset, s0), m, state0, wu, ws)
    # The unit-norm part and the log-scale are the plain products.
    h = matrix_scan_ref(m, reset, None if state0 is None else state0[0] * state0[1].exp()[..., None, None])
    torch.testing.assert_close(u_ref * s_ref.exp()[..., None, None], h, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(torch.linalg.matrix_norm(u_ref), torch.ones_like(s_ref))
    for method in ("loop", "parallel"):
        (u, s), grads = _grads(lambda mm, s0: stable_matrix_scan(mm, reset, s0, method=method), m, state0, wu, ws)
        torch.testing.assert_close(u, u_ref, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(s, s_ref, rtol=1e-10, atol=1e-10)
        for a, b in zip(grads, g_ref):
            torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("method", ["loop", "parallel"])
def test_gradient_of_the_products_equals_the_plain_scan(method):
    """A loss on H = exp(s) U: the stable path's gradient in m and in the carried state is the plain
    scan's (float64, every H finite)."""
    m, reset, (u0, s0) = _case(3, 30, 2, 2, 4, 0.15, 0.4, True)
    w = torch.randn(m.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    m1, h0 = m.clone().requires_grad_(), (u0 * s0.exp()[..., None, None]).requires_grad_()
    (matrix_scan(m1, reset, h0) * w).sum().backward()
    m2, u2, s2 = m.clone().requires_grad_(), u0.clone().requires_grad_(), s0.clone().requires_grad_()
    u, s = stable_matrix_scan(m2, reset, (u2, s2), method=method)
    (u * s.exp()[..., None, None] * w).sum().backward()
    torch.testing.assert_close(m2.grad, m1.grad, rtol=1e-8, atol=1e-10)
    # dL/dU0 and dL/ds0 from dL/dH0 by the chain rule through H0 = exp(s0) U0.
    torch.testing.assert_close(u2.grad, h0.grad * s0.exp()[..., None, None], rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(s2.grad, (h0.grad * h0).sum((-2, -1)), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("growth", [1.05, 0.95])
@pytest.mark.parametrize("method", ["loop", "parallel"])
def test_finite_on_4096_steps_where_the_plain_products_leave_float32(growth, method):
    """Matrices of norm growing (shrinking) by ~5% a step: after 4,096 steps ||H|| ~ e^{+-200}; the
    plain float32 products overflow to inf (underflow to denormals), the stable ones stay finite, and s is
    the log-norm the float64 products give. Gradients stay finite too."""
    T, B, heads, o = 4096, 2, 2, 4
    g = torch.Generator().manual_seed(0)
    q = torch.linalg.qr(torch.randn(T, B, heads, o, o, generator=g, dtype=torch.float64))[0]  # orthogonal
    m64 = growth * q @ (torch.eye(o, dtype=torch.float64) + 0.05 * torch.randn(T, B, heads, o, o, generator=g, dtype=torch.float64))
    reset = torch.zeros(T, B, dtype=torch.bool)
    plain = matrix_scan(m64.float(), reset)
    if growth > 1:
        assert not torch.isfinite(plain[-1]).all()
    else:  # below the smallest normal float32: zeros and denormals, the matrix's direction lost
        assert plain[-1].abs().max() < torch.finfo(torch.float32).tiny
    want = torch.linalg.matrix_norm(matrix_scan(m64, reset)).log()  # float64: e^{+-200} fits
    m = m64.float().requires_grad_()
    u, s = stable_matrix_scan(m, reset, method=method)
    assert torch.isfinite(u).all() and torch.isfinite(s).all()
    torch.testing.assert_close(s.double(), want, rtol=1e-4, atol=1e-2)
    assert abs(s[-1].mean().item() - T * math.log(growth)) < 20
    (u[-1].sum() + s[-1].sum()).backward()
    assert torch.isfinite(m.grad).all() and m.grad.abs().sum() > 0


def test_an_exactly_zero_product_stays_finite():
    m = torch.zeros(3, 1, 2, 2)
    u, s = stable_matrix_scan(m.requires_grad_(), torch.zeros(3, 1, dtype=torch.bool), method="loop")
    assert torch.isfinite(u).all() and (s < -80).all()


def test_bad_state0_raises():
    m, reset, _ = _case(0, 4, 2, 1, 3, 0.0, 0.1, False)
    with pytest.raises(ValueError, match=r"stable_matrix_scan: state0 must be a pair \(U0, s0\)"):
        stable_matrix_scan(m, reset, m[0])
    with pytest.raises(ValueError, match=r"stable_matrix_scan: s0 must be \[2, 1\], got \[2\]"):
        stable_matrix_scan(m, reset, (m[0], torch.zeros(2, dtype=torch.float64)))
    with pytest.raises(ValueError, match=r"stable_matrix_scan: method must be one of"):
        stable_matrix_scan(m, reset, method="fast")


# ---------------------------------------------------------------- the MRU's stable path

IN, HID, B = 5, 12, 3


def _pair(kind: str, seed: int = 0, perturb: float = 0.3):
    """The same perturbed weights as a plain (stable=False) and a stable exact-readout MRU, float64."""
    plain, stab = (memory.make("mru", IN, HID, kind=kind, num_heads=2, order=3, down_cols=2, stable=stable,
                               readout="exact").double() for stable in (False, True))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in plain.parameters():
            p.add_(perturb * torch.randn(p.shape, generator=g, dtype=p.dtype))
    stab.load_state_dict(plain.state_dict())
    return plain, stab


@pytest.mark.parametrize("kind", ["ldu", "plain", "det-norm", "cayley"])
def test_stable_exact_readout_equals_the_plain_model_in_float64(kind):
    plain, stab = _pair(kind)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(40, B, IN, generator=g, dtype=torch.float64)
    reset = torch.rand(40, B, generator=g) < 0.1
    y1, (h1,) = plain(x, plain.initial_state(B), reset)
    y2, (u2, s2) = stab(x, stab.initial_state(B), reset)
    torch.testing.assert_close(y2, y1, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(u2 * s2.exp()[..., None, None], h1, rtol=1e-9, atol=1e-9)
    w = torch.randn(y1.shape, generator=g, dtype=torch.float64)
    (y1 * w).sum().backward()
    (y2 * w).sum().backward()
    for (name, p), q in zip(plain.named_parameters(), stab.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-8, atol=1e-9, msg=name)
    assert plain.diagnostics()["state_log_norm"] == pytest.approx(stab.diagnostics()["state_log_norm"], rel=1e-9)


def test_norm_readout_stays_finite_where_the_plain_model_overflows():
    """A projection large enough that the plain float32 products overflow within 1,024 steps: the
    plain model's output is not finite; the default (stable, norm readout) gives finite outputs and
    finite gradients for every parameter, and reports the state's true log-norm (beyond float32)."""
    T = 1024
    g = torch.Generator().manual_seed(0)
    x = torch.randn(T, B, IN, generator=g)
    x[..., 0] = 1.0  # a constant input: a constant, growing M_t
    reset = torch.zeros(T, B, dtype=torch.bool)
    made = {}
    for name, opts in (("plain", dict(stable=False, readout="exact")), ("norm", {})):
        torch.manual_seed(0)
        m = memory.make("mru", IN, HID, kind="plain", num_heads=2, order=3, down_cols=2, **opts)
        with torch.no_grad():
            m.proj.weight.zero_()
            m.proj.weight[:, 0] = 0.2 * torch.eye(3).flatten().repeat(2)  # M = 1.2 I per head
        made[name] = m
    y_plain, _ = made["plain"](x, made["plain"].initial_state(B), reset)
    assert not torch.isfinite(y_plain).all()
    m = made["norm"]
    y, (u, s) = m(x, m.initial_state(B), reset)
    assert torch.isfinite(y).all() and torch.isfinite(u).all()
    y.square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters())
    # log ||H_t||_F = t log 1.2 + log sqrt(3); its mean over t = 1..T:
    want = math.log(1.2) * (T + 1) / 2 + 0.5 * math.log(3)
    assert m.diagnostics()["state_log_norm"] == pytest.approx(want, rel=1e-4)
