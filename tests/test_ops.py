"""memory.ops: every fast path (and the parallel/GPU-form implementations, run on CPU here) equals
its plain reference loop in values and gradients; float64 gradcheck on small sizes; Newton-Schulz
output spectra; the mLSTM cell kernels against the plain recurrence (resets, large gates, the
overflow-free normalizer, mlstm_kernels when installed); the log-space linear scan against the
ordinary-space recurrence; clear errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from memory.ops import (
    causal_conv,
    causal_conv_ref,
    gru_layer,
    gru_layer_ref,
    linear_scan,
    linear_scan_ref,
    log_linear_scan,
    log_linear_scan_ref,
    matrix_scan,
    matrix_scan_ref,
    mlstm_chunkwise,
    mlstm_recurrent,
    mlstm_ref,
    mlstm_stabilizer,
    mlstm_states,
    newton_schulz,
    newton_schulz_ref,
)
from memory.ops import scan as scan_mod
from memory.ops.mlstm import _normalize

METHODS = ["loop", "parallel", "auto"]
F32 = dict(rtol=1e-4, atol=1e-5)


def _reset(kind: str, T: int, B: int, g: torch.Generator) -> torch.Tensor:
    if kind == "none":
        return torch.zeros(T, B, dtype=torch.bool)
    if kind == "all":
        return torch.ones(T, B, dtype=torch.bool)
    if kind == "first":
        r = torch.zeros(T, B, dtype=torch.bool)
        r[0] = True
        return r
    return torch.rand(T, B, generator=g) < 0.3  # "random": several per sequence on average


RESETS = st.sampled_from(["none", "all", "first", "random"])


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    """float32 tolerance relative to the scale of the values (long products grow)."""
    scale = max(1.0, b.abs().max().item()) if b.numel() else 1.0
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * scale)


def _grads(out: torch.Tensor, inputs: list[torch.Tensor], w: torch.Tensor) -> list[torch.Tensor]:
    return list(torch.autograd.grad((out * w).sum(), inputs))


# ----------------------------------------------------------------------------------- linear_scan


@settings(max_examples=40, deadline=None)
@given(
    T=st.integers(1, 40),
    B=st.integers(1, 4),
    trailing=st.sampled_from([(), (3,), (2, 3), (2, 3, 4)]),
    bmask=st.integers(0, 31),
    reset_kind=RESETS,
    with_state0=st.booleans(),
    method=st.sampled_from(METHODS),
    seed=st.integers(0, 2**16),
)
def test_linear_scan_matches_reference(T, B, trailing, bmask, reset_kind, with_state0, method, seed):
    g = torch.Generator().manual_seed(seed)
    xshape = (T, B, *trailing)
    # Each dim of the gate is x's or 1 (bit i of bmask set: dim i broadcast), T and B included.
    gshape = tuple(1 if (bmask >> i) & 1 else s for i, s in enumerate(xshape))
    x = torch.randn(xshape, generator=g).requires_grad_()
    gate = torch.rand(gshape, generator=g).requires_grad_()
    reset = _reset(reset_kind, T, B, g)
    state0 = torch.randn(xshape[1:], generator=g).requires_grad_() if with_state0 else None
    inputs = [gate, x] + ([state0] if with_state0 else [])
    w = torch.randn(xshape, generator=g)

    ref = linear_scan_ref(gate, x, reset, state0)
    out = linear_scan(gate, x, reset, state0, method=method)
    _close(out, ref)
    for a, b in zip(_grads(out, inputs, w), _grads(ref, inputs, w)):
        _close(a, b)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    "gshape", [(5, 2, 3, 1, 1), (5, 2, 3, 2, 4), (1, 2, 3, 1, 4), (5, 1, 1, 1, 1), (5, 2, 1, 2, 1)]
)
def test_linear_scan_gradcheck(method, gshape):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 2, 3, 2, 4, dtype=torch.float64, generator=g, requires_grad=True)
    gate = torch.rand(gshape, dtype=torch.float64, generator=g, requires_grad=True)
    s0 = torch.randn(2, 3, 2, 4, dtype=torch.float64, generator=g, requires_grad=True)
    reset = torch.tensor([[False, True], [False, False], [True, False], [False, False], [True, True]])
    assert torch.autograd.gradcheck(lambda a, b, c: linear_scan(a, b, reset, c, method=method), (gate, x, s0))
    assert torch.autograd.gradcheck(lambda a, b: linear_scan(a, b, reset, method=method), (gate, x))


@pytest.mark.parametrize("method", METHODS)
def test_linear_scan_semantics(method):
    T, B = 6, 3
    x = torch.randn(T, B, 4)
    gate = torch.full((T, B, 1), 0.5)
    s0 = torch.randn(B, 4)
    # All resets: state never carried, h == x, and state0 is ignored.
    torch.testing.assert_close(linear_scan(gate, x, torch.ones(T, B, dtype=torch.bool), s0, method=method), x)
    # No resets, gate 1: a cumulative sum starting from state0.
    h = linear_scan(torch.ones(T, B, 1), x, torch.zeros(T, B, dtype=torch.bool), s0, method=method)
    torch.testing.assert_close(h, s0 + x.cumsum(0))
    # The mLSTM's shapes: gate [T, B, H, 1] with x [T, B, H, dk] and gate [T, B, H, 1, 1] with x
    # [T, B, H, dk, dv]; state0 carried into t = 0 only where reset[0] is False.
    reset = torch.zeros(T, B, dtype=torch.bool)
    reset[0, 1] = True
    C = torch.randn(T, B, 2, 3, 5)
    f = torch.rand(T, B, 2, 1, 1)
    C0 = torch.randn(B, 2, 3, 5)
    out = linear_scan(f, C, reset, C0, method=method)
    torch.testing.assert_close(out[0, 1], C[0, 1])
    torch.testing.assert_close(out[0, 0], f[0, 0] * C0[0] + C[0, 0])
    torch.testing.assert_close(out, linear_scan_ref(f, C, reset, C0), **F32)


@settings(max_examples=30, deadline=None)
@given(
    T=st.integers(1, 40),
    trailing=st.sampled_from([(3,), (2, 3)]),
    gate_bcast=st.booleans(),
    reset_kind=RESETS,
    with_state0=st.booleans(),
    method=st.sampled_from(METHODS),
    seed=st.integers(0, 2**16),
)
def test_linear_scan_complex_matches_reference(T, trailing, gate_bcast, reset_kind, with_state0, method, seed):
    """Complex gates and inputs (the diagonal complex recurrences, lru and ffm): values and
    gradients (torch's conjugate convention) equal the reference's."""
    g = torch.Generator().manual_seed(seed)
    B = 3
    xshape = (T, B, *trailing)
    gshape = (T, B, *trailing[:-1], 1) if gate_bcast else xshape
    c = lambda *s: torch.complex(torch.randn(*s, generator=g), torch.randn(*s, generator=g))  # noqa: E731
    x = c(*xshape).requires_grad_()
    gate = (0.9 * torch.polar(torch.rand(gshape, generator=g), 6.3 * torch.rand(gshape, generator=g))).requires_grad_()
    reset = _reset(reset_kind, T, B, g)
    state0 = c(*xshape[1:]).requires_grad_() if with_state0 else None
    inputs = [gate, x] + ([state0] if with_state0 else [])
    w = c(*xshape)
    ref = linear_scan_ref(gate, x, reset, state0)
    out = linear_scan(gate, x, reset, state0, method=method)
    _close(out, ref)
    # A real loss of complex outputs: Re(sum(w * h)).
    ga = torch.autograd.grad((out * w).real.sum(), inputs)
    gb = torch.autograd.grad((ref * w).real.sum(), inputs)
    for a, b in zip(ga, gb):
        _close(a, b)


@pytest.mark.parametrize("method", METHODS)
def test_linear_scan_complex_gradcheck(method):
    g = torch.Generator().manual_seed(0)
    c = lambda *s: torch.complex(torch.randn(*s, generator=g, dtype=torch.float64), torch.randn(*s, generator=g, dtype=torch.float64))  # noqa: E731
    x = c(5, 2, 3).requires_grad_()
    gate = (0.5 * c(5, 2, 1)).requires_grad_()
    s0 = c(2, 3).requires_grad_()
    reset = torch.tensor([[False, True], [False, False], [True, False], [False, False], [False, True]])
    assert torch.autograd.gradcheck(lambda a, b, s: linear_scan(a, b, reset, s, method=method), (gate, x, s0))


def test_linear_scan_non_contiguous_and_inputs_untouched():
    x = torch.randn(3, 7, 4).transpose(0, 1)  # [T=7, B=3, 4], non-contiguous
    gate = torch.rand(7, 3, 1)
    reset = torch.rand(7, 3) < 0.3
    x_copy = x.clone()
    for method in METHODS:
        torch.testing.assert_close(linear_scan(gate, x, reset, method=method), linear_scan_ref(gate, x, reset), **F32)
    assert torch.equal(x, x_copy)


# ------------------------------------------------------------------------------- log_linear_scan


@settings(max_examples=40, deadline=None)
@given(
    T=st.integers(1, 40),
    B=st.integers(1, 4),
    trailing=st.sampled_from([(), (3,), (2, 3)]),
    bmask=st.integers(0, 15),
    reset_kind=RESETS,
    with_state0=st.booleans(),
    method=st.sampled_from(METHODS),
    seed=st.integers(0, 2**16),
)
def test_log_linear_scan_equals_linear_recurrence(T, B, trailing, bmask, reset_kind, with_state0, method, seed):
    """On positive a, b, h0: exp(log_linear_scan(log a, log b, reset, log h0)) is the plain linear
    recurrence in ordinary space (linear_scan_ref), values and gradients with respect to a, b and
    h0 through the logs, float64; broadcast gates, random resets, a carried state."""
    g = torch.Generator().manual_seed(seed)
    f64 = dict(generator=g, dtype=torch.float64)
    xshape = (T, B, *trailing)
    gshape = tuple(1 if (bmask >> i) & 1 else s for i, s in enumerate(xshape))
    a = (0.05 + 0.95 * torch.rand(gshape, **f64)).requires_grad_()
    b = torch.exp(2 * torch.randn(xshape, **f64)).requires_grad_()  # several orders of magnitude
    reset = _reset(reset_kind, T, B, g)
    h0 = torch.exp(torch.randn(xshape[1:], **f64)).requires_grad_() if with_state0 else None
    inputs = [a, b] + ([h0] if with_state0 else [])
    w = torch.randn(xshape, **f64)

    ref = linear_scan_ref(a, b, reset, h0)
    out = log_linear_scan(a.log(), b.log(), reset, None if h0 is None else h0.log(), method=method).exp()
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=0)
    for x, y in zip(_grads(out, inputs, w), _grads(ref, inputs, w)):
        torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-12)
    # And the log-space reference loop (torch.logaddexp step by step) gives the same logs.
    lref = log_linear_scan_ref(a.log(), b.log(), reset, None if h0 is None else h0.log())
    torch.testing.assert_close(out.log(), lref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("gshape", [(6, 2, 3), (6, 2, 1), (1, 2, 3), (6, 1, 1)])
def test_log_linear_scan_gradcheck(method, gshape):
    g = torch.Generator().manual_seed(0)
    lb = torch.randn(6, 2, 3, dtype=torch.float64, generator=g, requires_grad=True)
    la = (-torch.rand(gshape, dtype=torch.float64, generator=g) * 3).requires_grad_()
    lh0 = torch.randn(2, 3, dtype=torch.float64, generator=g, requires_grad=True)
    reset = torch.tensor([[False, True], [False, False], [True, False], [False, False], [True, True], [False, False]])
    assert torch.autograd.gradcheck(lambda x, y, z: log_linear_scan(x, y, reset, z, method=method), (la, lb, lh0))
    assert torch.autograd.gradcheck(lambda x, y: log_linear_scan(x, y, reset, method=method), (la, lb))


@pytest.mark.parametrize("method", METHODS)
def test_log_linear_scan_semantics_and_minus_infinity(method):
    T, B = 6, 3
    lb = torch.randn(T, B, 4)
    la = torch.full((T, B, 1), -0.7)
    lh0 = torch.randn(B, 4)
    # All resets: nothing carried, l == log_b, log_h0 ignored.
    torch.testing.assert_close(log_linear_scan(la, lb, torch.ones(T, B, dtype=torch.bool), lh0, method=method), lb)
    # No resets, a = 1: log of a cumulative sum starting from h0.
    none = torch.zeros(T, B, dtype=torch.bool)
    l = log_linear_scan(torch.zeros(T, B, 1), lb, none, lh0, method=method)
    torch.testing.assert_close(l, torch.log(lh0.exp() + lb.exp().cumsum(0)))
    # A zero state (log_h0 = -inf, as a fresh minGRU state) and a zero gate (-inf) are exact, and
    # the gradient there is 0, not NaN (torch.logaddexp's own backward gives NaN at (-inf, -inf)).
    lb_, la_ = lb.clone().requires_grad_(), torch.randn(T, B, 4).requires_grad_()
    lh0_ = torch.full((B, 4), float("-inf"), requires_grad=True)
    la_in = torch.where(torch.arange(T)[:, None, None] == 2, float("-inf"), la_)
    l = log_linear_scan(la_in, lb_, none, lh0_, method=method)
    torch.testing.assert_close(l[0], lb[0])
    first = torch.zeros(T - 2, B, dtype=torch.bool)
    first[0] = True
    torch.testing.assert_close(l[2:], log_linear_scan(la_[2:], lb[2:], first, method=method))
    gl0, gla, glb = torch.autograd.grad(l.sum(), [lh0_, la_, lb_])
    assert torch.all(gl0 == 0) and torch.all(gla[0] == 0) and torch.all(gla[2] == 0)
    assert torch.isfinite(gla).all() and torch.isfinite(glb).all()


@pytest.mark.parametrize("method", ["loop", "parallel"])
def test_log_linear_scan_float32_where_linear_space_underflows(method):
    """Terms of size e^-150 (0 in float32) and products of 400 gates of e^-0.5 (e^-200): in float32
    the log scan keeps the logs to float32 precision (against the float64 log reference), where the
    ordinary-space scan of the same numbers returns log 0 = -inf."""
    g = torch.Generator().manual_seed(1)
    T, B = 400, 2
    la = -0.5 + 0.1 * torch.randn(T, B, 3, generator=g, dtype=torch.float64)
    lb = -150 + 5 * torch.randn(T, B, 3, generator=g, dtype=torch.float64)
    lb[0] = -20  # the first term dominates for a while, then decays by e^-0.5 per step
    reset = torch.zeros(T, B, dtype=torch.bool)
    reset[200, 1] = True
    ref = log_linear_scan_ref(la, lb, reset)
    out = log_linear_scan(la.float(), lb.float(), reset, method=method)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-3)
    assert torch.isinf(linear_scan(la.float().exp(), lb.float().exp(), reset).log()).any()


def test_log_linear_scan_errors():
    T, B = 4, 2
    lb = torch.randn(T, B, 3)
    r = torch.zeros(T, B, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"log_linear_scan: reset must be bool \[T, B\]"):
        log_linear_scan(torch.zeros(T, B, 1), lb, r.float())
    with pytest.raises(ValueError, match=r"log_a must have log_b's number of dims.*got log_a \[4, 2, 2\]"):
        log_linear_scan(torch.zeros(T, B, 2), lb, r)
    with pytest.raises(ValueError, match=r"log_h0 must be log_b.shape\[1:\] = \[2, 3\], got \[4, 2, 3\]"):
        log_linear_scan(torch.zeros(T, B, 1), lb, r, lb)
    with pytest.raises(ValueError, match="log_a and log_b must share a dtype"):
        log_linear_scan(torch.zeros(T, B, 1, dtype=torch.float64), lb, r)
    with pytest.raises(ValueError, match="log_b must be a floating-point tensor, got dtype torch.complex64"):
        log_linear_scan(torch.zeros(T, B, 1), lb.to(torch.complex64), r)
    with pytest.raises(ValueError, match="method must be one of"):
        log_linear_scan(torch.zeros(T, B, 1), lb, r, method="cumsum")


# ----------------------------------------------------------------------------------- causal_conv


@settings(max_examples=40, deadline=None)
@given(
    T=st.integers(1, 9), B=st.integers(1, 3), D=st.integers(1, 4), K=st.integers(2, 5),
    reset_kind=RESETS, split=st.integers(0, 9), seed=st.integers(0, 2**16),
)
def test_causal_conv_matches_reference_whole_and_in_chunks(T, B, D, K, reset_kind, split, seed):
    """Values and gradients equal the step-by-step window; two calls carrying the history equal one."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(T, B, D, generator=g, dtype=torch.float64, requires_grad=True)
    hist = torch.randn(B, K - 1, D, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(D, K, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(D, generator=g, dtype=torch.float64, requires_grad=True)
    reset = _reset(reset_kind, T, B, g)
    out, new_hist = causal_conv(u, hist, reset, w, b)
    ref, ref_hist = causal_conv_ref(u, hist, reset, w, b)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(new_hist, ref_hist)
    wo, wh = torch.randn_like(out), torch.randn_like(new_hist)
    loss, loss_ref = (out * wo).sum() + (new_hist * wh).sum(), (ref * wo).sum() + (ref_hist * wh).sum()
    for a, r in zip(torch.autograd.grad(loss, [u, hist, w, b]), torch.autograd.grad(loss_ref, [u, hist, w, b])):
        torch.testing.assert_close(a, r)
    if T < 2:
        return
    s = 1 + split % (T - 1)  # both chunks non-empty
    o1, h1 = causal_conv(u[:s], hist, reset[:s], w, b)
    o2, h2 = causal_conv(u[s:], h1, reset[s:], w, b)
    torch.testing.assert_close(torch.cat([o1, o2]), out)
    torch.testing.assert_close(h2, new_hist)


def test_causal_conv_by_hand():
    """K = 3, weights (1, 10, 100) on lags (2, 1, 0): an episode start at t = 2 cuts the lags."""
    u = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(4, 1, 1)
    hist = torch.tensor([5.0, 6.0]).view(1, 2, 1)  # the two inputs before this call, oldest first
    reset = torch.tensor([False, False, True, False]).view(4, 1)
    w, b = torch.tensor([[1.0, 10.0, 100.0]]), torch.zeros(1)
    out, new_hist = causal_conv(u, hist, reset, w, b)
    assert out.flatten().tolist() == [100 + 60 + 5, 200 + 10 + 6, 300, 400 + 30]
    assert new_hist.flatten().tolist() == [3.0, 4.0]
    _, h = causal_conv(u[:3], hist, reset[:3], w, b)
    assert h.flatten().tolist() == [0.0, 3.0]  # input 2 precedes the start at t = 2: zeroed


# ----------------------------------------------------------------------------------- matrix_scan


def _mats(shape, g, dtype=torch.float32):
    o = shape[-1]
    return torch.eye(o, dtype=dtype) + 0.4 / o**0.5 * torch.randn(shape, generator=g, dtype=dtype)


@settings(max_examples=40, deadline=None)
@given(
    T=st.integers(1, 40),
    B=st.integers(1, 4),
    heads=st.sampled_from([(), (2,), (2, 3)]),
    o=st.integers(1, 5),
    reset_kind=RESETS,
    with_state0=st.booleans(),
    method=st.sampled_from(METHODS),
    seed=st.integers(0, 2**16),
)
def test_matrix_scan_matches_reference(T, B, heads, o, reset_kind, with_state0, method, seed):
    g = torch.Generator().manual_seed(seed)
    shape = (T, B, *heads, o, o)
    m = _mats(shape, g).requires_grad_()
    reset = _reset(reset_kind, T, B, g)
    state0 = _mats(shape[1:], g).requires_grad_() if with_state0 else None
    inputs = [m] + ([state0] if with_state0 else [])
    w = torch.randn(shape, generator=g)

    ref = matrix_scan_ref(m, reset, state0)
    out = matrix_scan(m, reset, state0, method=method)
    _close(out, ref)
    for a, b in zip(_grads(out, inputs, w), _grads(ref, inputs, w)):
        _close(a, b)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("T", [1, 2, 7])
def test_matrix_scan_gradcheck(method, T):
    g = torch.Generator().manual_seed(T)
    m = _mats((T, 2, 2, 3, 3), g, torch.float64).requires_grad_()
    s0 = _mats((2, 2, 3, 3), g, torch.float64).requires_grad_()
    reset = torch.rand(T, 2, generator=g) < 0.4
    reset[0, 0] = False
    assert torch.autograd.gradcheck(lambda a, b: matrix_scan(a, reset, b, method=method), (m, s0))
    assert torch.autograd.gradcheck(lambda a: matrix_scan(a, reset, method=method), (m,))
    # Gradient w.r.t. state0 alone (m not requiring grad takes another branch of the backward).
    assert torch.autograd.gradcheck(lambda b: matrix_scan(m.detach(), reset, b, method=method), (s0,))


@pytest.mark.parametrize("method", METHODS)
def test_matrix_scan_semantics(method):
    T, B, o = 5, 2, 3
    g = torch.Generator().manual_seed(1)
    m = _mats((T, B, o, o), g)
    s0 = _mats((B, o, o), g)
    reset = torch.zeros(T, B, dtype=torch.bool)
    reset[3, 0] = True
    H = matrix_scan(m, reset, s0, method=method)
    torch.testing.assert_close(H[0], s0 @ m[0])
    torch.testing.assert_close(H[2, 1], s0[1] @ m[0, 1] @ m[1, 1] @ m[2, 1], **F32)
    torch.testing.assert_close(H[4, 0], m[3, 0] @ m[4, 0], **F32)  # restarted from I at t = 3
    all_reset = torch.ones(T, B, dtype=torch.bool)
    torch.testing.assert_close(matrix_scan(m, all_reset, s0, method=method), m)


def test_auto_method_on_cpu():
    # Small steps: the parallel form (per-op overhead dominates); big steps: the loop.
    assert scan_mod._choose("auto", torch.zeros(64, 2, 3), "linear_scan") == "parallel"
    assert scan_mod._choose("auto", torch.zeros(64, 16, 4, 16, 16), "linear_scan") == "loop"
    assert scan_mod._choose("auto", torch.zeros(1, 2, 3), "linear_scan") == "loop"
    assert scan_mod._choose("parallel", torch.zeros(64, 16, 4, 16, 16), "linear_scan") == "parallel"
    with pytest.raises(ValueError, match="method must be one of"):
        linear_scan(torch.ones(2, 1, 1), torch.zeros(2, 1, 1), torch.zeros(2, 1, dtype=torch.bool), method="fft")


# -------------------------------------------------------------------------------- newton_schulz


def _well_conditioned(shape, g):
    """U diag(s) V^T with singular values in [1, 3] (condition number <= 3)."""
    *lead, m, n = shape
    k = min(m, n)
    U = torch.linalg.qr(torch.randn(*lead, m, k, generator=g, dtype=torch.float64))[0]
    V = torch.linalg.qr(torch.randn(*lead, n, k, generator=g, dtype=torch.float64))[0]
    s = 1 + 2 * torch.rand(*lead, k, generator=g, dtype=torch.float64)
    return (U * s.unsqueeze(-2) @ V.mT).float()


@pytest.mark.parametrize("shape", [(16, 16), (32, 8), (8, 32), (3, 4, 12, 12), (5, 24, 6), (2, 3, 6, 24)])
def test_newton_schulz_singular_values(shape):
    g = torch.Generator().manual_seed(0)
    x = _well_conditioned(shape, g)
    y = newton_schulz(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    s = torch.linalg.svdvals(y)
    assert s.min() > 0.5 and s.max() < 1.5, (s.min().item(), s.max().item())
    # And x's singular vectors: y = U S' V^T for x = U S V^T, so against the polar factor
    # Q = U V^T, Q^T y = V S' V^T (y Q^T = U S' U^T when wide) is symmetric with eigenvalues S'.
    U, _, Vh = torch.linalg.svd(x.double(), full_matrices=False)
    Q = U @ Vh
    P = Q.mT @ y.double() if shape[-2] >= shape[-1] else y.double() @ Q.mT
    torch.testing.assert_close(P, P.mT, rtol=0, atol=1e-4)
    e = torch.linalg.eigvalsh(P)
    assert e.min() > 0.5 and e.max() < 1.5, (e.min().item(), e.max().item())


@settings(max_examples=25, deadline=None)
@given(
    lead=st.sampled_from([(), (3,), (2, 2)]),
    m=st.integers(1, 12),
    n=st.integers(1, 12),
    steps=st.integers(0, 6),
    grad=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_newton_schulz_matches_reference(lead, m, n, steps, grad, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*lead, m, n, generator=g).requires_grad_(grad)
    ref = newton_schulz_ref(x, steps)
    out = newton_schulz(x, steps)
    torch.testing.assert_close(out, ref, **F32)
    # Tall matrices are transposed internally: orthogonalizing x^T gives the transpose.
    torch.testing.assert_close(newton_schulz(x.mT, steps), out.mT, **F32)
    if grad:
        w = torch.randn(out.shape, generator=g)
        torch.testing.assert_close(_grads(out, [x], w)[0], _grads(ref, [x], w)[0], rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("shape", [(3, 4, 4), (2, 6, 3), (3, 5)])
def test_newton_schulz_gradcheck(shape):
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: newton_schulz(a, steps=3), (x,))


def test_newton_schulz_dtype_option():
    x = torch.randn(4, 8, 8)
    y64 = newton_schulz(x, dtype=torch.float64)
    assert y64.dtype == torch.float32
    torch.testing.assert_close(y64, newton_schulz(x), **F32)
    # bfloat16 compute (Muon's GPU choice) still lands in the band; result in x's dtype.
    xb = _well_conditioned((6, 16, 16), torch.Generator().manual_seed(1)).requires_grad_()
    yb = newton_schulz(xb, dtype=torch.bfloat16)
    assert yb.dtype == torch.float32
    s = torch.linalg.svdvals(yb.detach())
    assert s.min() > 0.45 and s.max() < 1.55
    yb.sum().backward()
    assert xb.grad.dtype == torch.float32 and torch.isfinite(xb.grad).all()
    # Zero matrices stay zero (eps keeps the normalization finite).
    assert torch.equal(newton_schulz(torch.zeros(2, 3, 3)), torch.zeros(2, 3, 3))


# ------------------------------------------------------------------------------------- gru_layer


def _gru_inputs(T: int, B: int, H: int, kind: str, seed: int, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    xw = torch.randn(T, B, 3 * H, generator=g, dtype=dtype)
    h0 = torch.randn(B, H, generator=g, dtype=dtype)
    w = torch.randn(3 * H, H, generator=g, dtype=dtype) / H**0.5
    b = torch.randn(3 * H, generator=g, dtype=dtype) * 0.1
    keep = (~_reset(kind, T, B, g)).to(dtype)
    return xw, h0, keep, w, b


@settings(max_examples=40, deadline=None)
@given(
    T=st.integers(1, 12), B=st.integers(1, 4), H=st.integers(1, 9), reset_kind=RESETS,
    outputs=st.sampled_from(["sequence", "final", "both"]), seed=st.integers(0, 2**16),
)
def test_gru_layer_matches_reference(T, B, H, reset_kind, outputs, seed):
    xw, h0, keep, w, b = _gru_inputs(T, B, H, reset_kind, seed)
    leaves = [t.clone().requires_grad_(True) for t in (xw, h0, w, b)]
    results = []
    for fn in (gru_layer, gru_layer_ref):
        ins = [t.clone().requires_grad_(True) for t in leaves]
        y, hT = fn(ins[0], ins[1], keep, ins[2], ins[3])
        g = torch.Generator().manual_seed(seed + 1)
        wy, wh = torch.randn(y.shape, generator=g), torch.randn(hT.shape, generator=g)
        loss = {"sequence": (y * wy).sum(), "final": (hT * wh).sum(), "both": (y * wy).sum() + (hT * wh).sum()}[outputs]
        results.append((y, hT, torch.autograd.grad(loss, ins)))
    (y1, h1, g1), (y2, h2, g2) = results
    _close(y1, y2)
    _close(h1, h2)
    for a, c in zip(g1, g2):
        _close(a, c)


@pytest.mark.parametrize("reset_kind", ["none", "first", "random"])
def test_gru_layer_gradcheck(reset_kind):
    xw, h0, keep, w, b = _gru_inputs(6, 3, 4, reset_kind, 0, torch.float64)
    ins = [t.requires_grad_(True) for t in (xw, h0, w, b)]
    assert torch.autograd.gradcheck(lambda a, h, ww, bb: gru_layer(a, h, keep, ww, bb), ins)


def test_gru_layer_without_grad_equals_with_grad_and_keeps_inputs():
    xw, h0, keep, w, b = _gru_inputs(7, 3, 5, "random", 4)
    before = [t.clone() for t in (xw, h0, keep, w, b)]
    with torch.no_grad():
        y0, h0_out = gru_layer(xw, h0, keep, w, b)
    y1, h1 = gru_layer(xw.requires_grad_(True), h0, keep, w, b)
    assert torch.equal(y0, y1.detach()) and torch.equal(h0_out, h1.detach())
    for a, c in zip((xw, h0, keep, w, b), before):
        assert torch.equal(a.detach(), c)


def test_gru_layer_errors():
    xw, h0, keep, w, b = _gru_inputs(4, 2, 3, "none", 0)
    with pytest.raises(ValueError, match=r"xw \[T, B, 3H\] and w_hh \[3H, H\] expected, got \(4, 2, 9\) and \(9, 4\)"):
        gru_layer(xw, h0, keep, torch.randn(9, 4), b)
    with pytest.raises(ValueError, match=r"keep \(4, 3\) must be \[T, B\]"):
        gru_layer(xw, h0, torch.ones(4, 3), w, b)


# ----------------------------------------------------------------------------------------- errors


def test_errors_are_clear():
    T, B = 4, 2
    x = torch.randn(T, B, 3)
    r = torch.zeros(T, B, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"reset must be bool \[T, B\], got dtype torch.float32"):
        linear_scan(torch.ones(T, B, 1), x, r.float())
    with pytest.raises(ValueError, match=r"reset must be \[T, B\] = \[4, 2\], got \[4, 3\]"):
        linear_scan(torch.ones(T, B, 1), x, torch.zeros(T, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"gate must have x's number of dims.*got gate \[4, 2, 2\]"):
        linear_scan(torch.ones(T, B, 2), x, r)
    with pytest.raises(ValueError, match=r"gate must have x's number of dims.*got gate \[4, 2\]"):
        linear_scan(torch.ones(T, B), x, r)
    with pytest.raises(ValueError, match=r"state0 must be x.shape\[1:\] = \[2, 3\], got \[4, 2, 3\]"):
        linear_scan(torch.ones(T, B, 1), x, r, x)
    with pytest.raises(ValueError, match="gate and x must share a dtype"):
        linear_scan(torch.ones(T, B, 1, dtype=torch.float64), x, r)
    with pytest.raises(ValueError, match="x must be a floating-point or complex tensor, got dtype torch.int64"):
        linear_scan(torch.ones(T, B, 1), torch.ones(T, B, 1, dtype=torch.long), r)
    with pytest.raises(ValueError, match=r"square o x o matrices, got \[4, 2, 3, 5\]"):
        matrix_scan(torch.randn(T, B, 3, 5), r)
    with pytest.raises(ValueError, match=r"square o x o matrices, got \[4, 3\]"):
        matrix_scan(torch.randn(T, 3), r)
    with pytest.raises(ValueError, match=r"reset must be bool \[T, B\], got dtype torch.int64"):
        matrix_scan(torch.randn(T, B, 3, 3), r.long())
    with pytest.raises(ValueError, match=r"state0 must be m.shape\[1:\] = \[2, 3, 3\], got \[2, 2, 2\]"):
        matrix_scan(torch.randn(T, B, 3, 3), r, torch.randn(B, 2, 2))
    with pytest.raises(ValueError, match=r"x must be \[\.\.\., m, n\].*got \[5\]"):
        newton_schulz(torch.randn(5))
    with pytest.raises(ValueError, match="steps must be an int >= 0"):
        newton_schulz(torch.randn(3, 3), steps=-1)


# ------------------------------------------------------------------------------------ mLSTM cell
# Kernels (memory/ops/mlstm.py) against the plain recurrence mlstm_ref, in float64, with random
# resets and a non-trivial carried state. Layout: q, k [B, H, T, dk], v [B, H, T, dv], gates
# [B, H, T], reset [B, T].

F64 = torch.float64


def _cell_inputs(B=2, H=2, T=23, dk=3, dv=4, reset_p=0.2, gate_scale=3.0, seed=0, dtype=F64, state=True):
    """Random cell inputs: q (scaled), k, v, ig, lf, reset [B, T] and a non-trivial carried state."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    q, k, v = r(B, H, T, dk) * dk**-0.5, r(B, H, T, dk), r(B, H, T, dv)
    ig = r(B, H, T) * gate_scale
    lf = F.logsigmoid(r(B, H, T) * gate_scale + 1.0)
    reset = torch.rand(B, T, generator=g) < reset_p
    if state:
        s0 = (r(B, H, dk, dv), r(B, H, dk), r(B, H))
    else:
        s0 = tuple(torch.zeros(*shape, dtype=dtype) for shape in [(B, H, dk, dv), (B, H, dk), (B, H)])
    return [q, k, v, ig, lf], reset, s0


def _cell_loss(outs, seed=5):
    """A loss touching every output with random weights (so no gradient can hide in a sum)."""
    g = torch.Generator().manual_seed(seed)
    return sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum() for o in outs)


def _cell_grads(fn, tensors, reset, s0):
    """fn(*tensors, reset, state) -> a flat list of outputs; returns (outputs, grads of every
    input tensor and state tensor)."""
    xs = [t.clone().requires_grad_(True) for t in tensors]
    ss = tuple(t.clone().requires_grad_(True) for t in s0)
    outs = fn(*xs, reset, ss)
    leaves = xs + list(ss)
    grads = torch.autograd.grad(_cell_loss(outs), leaves, allow_unused=True)
    grads = [torch.zeros_like(t) if gr is None else gr for t, gr in zip(leaves, grads)]
    return [o.detach() for o in outs], grads


def _close64(a, b, tol=1e-9):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def _all_close64(xs, ys, tol=1e-9):
    assert len(xs) == len(ys)
    for a, b in zip(xs, ys):
        _close64(a, b, tol)


def _ref_h(*a):
    h, state, _, _ = mlstm_ref(*a)
    return [h, *state]


def _rec_h(*a):
    h, state, _ = mlstm_recurrent(*a)
    return [h, *state]


def _chunk_h(chunk):
    def fn(*a):
        h, state = mlstm_chunkwise(*a, chunk_size=chunk)
        return [h, *state]

    return fn


@settings(max_examples=30, deadline=None)
@given(
    T=st.integers(1, 30),
    reset_p=st.sampled_from([0.0, 0.2, 0.7]),
    gate_scale=st.sampled_from([0.5, 3.0, 10.0]),
    seed=st.integers(0, 10_000),
)
def test_mlstm_recurrent_matches_reference(T, reset_p, gate_scale, seed):
    tensors, reset, s0 = _cell_inputs(T=T, reset_p=reset_p, gate_scale=gate_scale, seed=seed)
    out_ref, g_ref = _cell_grads(_ref_h, tensors, reset, s0)
    out, g = _cell_grads(_rec_h, tensors, reset, s0)
    _all_close64(out, out_ref)
    _all_close64(g, g_ref)
    # keep_states: every C_t, as the reference's.
    _, _, C_all = mlstm_recurrent(*tensors, reset, s0, keep_states=True)
    _close64(C_all, mlstm_ref(*tensors, reset, s0)[2])


@settings(max_examples=40, deadline=None)
@given(
    T=st.integers(1, 40),
    chunk=st.integers(1, 17),
    reset_p=st.sampled_from([0.0, 0.1, 0.3, 0.7]),
    gate_scale=st.sampled_from([0.5, 3.0, 10.0]),
    seed=st.integers(0, 10_000),
)
def test_mlstm_chunkwise_matches_reference(T, chunk, reset_p, gate_scale, seed):
    tensors, reset, s0 = _cell_inputs(T=T, reset_p=reset_p, gate_scale=gate_scale, seed=seed)
    out_ref, g_ref = _cell_grads(_ref_h, tensors, reset, s0)
    out, g = _cell_grads(_chunk_h(chunk), tensors, reset, s0)
    _all_close64(out, out_ref)
    _all_close64(g, g_ref)


@pytest.mark.parametrize("pattern", ["first", "every", "consecutive", "chunk_edges", "last"])
def test_mlstm_reset_patterns_exact(pattern):
    """Resets at the awkward places: the first step (carried state dropped), every step, runs
    of consecutive resets, exactly at chunk starts/ends, the last step."""
    T, L = 16, 4
    tensors, _, s0 = _cell_inputs(T=T, seed=3)
    reset = torch.zeros(2, T, dtype=torch.bool)
    if pattern == "first":
        reset[:, 0] = True
    elif pattern == "every":
        reset[:] = True
    elif pattern == "consecutive":
        reset[0, 5:9] = True
        reset[1, 2:4] = True
    elif pattern == "chunk_edges":
        reset[0, ::L] = True
        reset[1, L - 1 :: L] = True
    else:
        reset[:, -1] = True
    out_ref, g_ref = _cell_grads(_ref_h, tensors, reset, s0)
    for fn in (_rec_h, _chunk_h(L)):
        out, g = _cell_grads(fn, tensors, reset, s0)
        _all_close64(out, out_ref)
        _all_close64(g, g_ref)
        if pattern == "first":  # the carried state cannot matter at all
            assert all(t.abs().max() == 0 for t in g[-3:])


def test_mlstm_reset_equals_fresh_state():
    """Output after a reset equals running that episode alone from zeros (the cut is exact)."""
    T, t0 = 20, 9
    tensors, reset, s0 = _cell_inputs(T=T, reset_p=0.0, seed=4)
    reset[:, t0] = True
    h, s = mlstm_chunkwise(*tensors, reset, s0, chunk_size=4)
    zeros = tuple(torch.zeros_like(t) for t in s0)
    h2, s2 = mlstm_chunkwise(*[t[:, :, t0:] for t in tensors], reset[:, t0:], zeros, chunk_size=4)
    _close64(h[:, :, t0:], h2, 1e-12)
    _all_close64(s, s2, 1e-12)


@pytest.mark.parametrize("chunk", [1, 5, 64])
def test_mlstm_stabilizer_matches_reference(chunk):
    """m_t at every step (values and gradients in ig, lf, m0) equals the recurrence's."""
    tensors, reset, s0 = _cell_inputs(T=29, reset_p=0.25, seed=7)
    stab = lambda q, k, v, ig, lf, reset, s: [mlstm_stabilizer(ig, lf, reset, s[2], chunk_size=chunk)]  # noqa: E731
    ref = lambda *a: [mlstm_ref(*a)[3]]  # noqa: E731
    out_ref, g_ref = _cell_grads(ref, tensors, reset, s0)
    out, g = _cell_grads(stab, tensors, reset, s0)
    _all_close64(out, out_ref)
    _all_close64(g, g_ref)


@pytest.mark.parametrize("chunk", [1, 5, 64])
def test_mlstm_states_match_reference(chunk):
    """Every C_t (time first) and the final (C, n, m), values and gradients."""
    tensors, reset, s0 = _cell_inputs(T=29, reset_p=0.25, seed=7)

    def states(q, k, v, ig, lf, reset, s):
        C_all, final = mlstm_states(k, v, ig, lf, reset, s, chunk_size=chunk)
        return [C_all, *final]

    def ref(*a):
        _, final, C_all, _ = mlstm_ref(*a)
        return [C_all.permute(2, 0, 1, 3, 4), *final]

    out_ref, g_ref = _cell_grads(ref, tensors, reset, s0)
    out, g = _cell_grads(states, tensors, reset, s0)
    _all_close64(out, out_ref)
    _all_close64(g, g_ref)


@pytest.mark.parametrize("dtype,tol", [(F64, 1e-9), (torch.float32, 2e-3)])
def test_mlstm_large_gate_preactivations_stay_finite(dtype, tol):
    """|pre-activations| ~ 30-100: exp(100) would overflow float32; the stabilizer keeps every
    exponent <= 0. The kernels (float32 or float64) agree with the float64 reference."""
    B, H, T, dk, dv = 2, 2, 48, 3, 4
    g = torch.Generator().manual_seed(11)
    sign = lambda: torch.where(torch.rand(B, H, T, generator=g) < 0.5, -1.0, 1.0)  # noqa: E731
    mag = lambda: 30 + 70 * torch.rand(B, H, T, generator=g)  # noqa: E731
    ig, fpre = (sign() * mag()).to(F64), (sign() * mag()).to(F64)
    tensors, reset, s0 = _cell_inputs(B=B, H=H, T=T, dk=dk, dv=dv, reset_p=0.1, seed=2, state=False)
    tensors[3], tensors[4] = ig, F.logsigmoid(fpre)
    (h_ref, *s_ref), _ = _cell_grads(_ref_h, tensors, reset, s0)
    low = [t.to(dtype) for t in tensors]
    low_s0 = tuple(t.to(dtype) for t in s0)
    for fn in (_rec_h, _chunk_h(16)):
        (h, *s), gr = _cell_grads(fn, low, reset, low_s0)
        assert torch.isfinite(h).all() and all(torch.isfinite(t).all() for t in [*s, *gr])
        torch.testing.assert_close(h.double(), h_ref, rtol=tol, atol=tol)
        torch.testing.assert_close(s[0].double(), s_ref[0], rtol=tol, atol=tol)
        torch.testing.assert_close(s[2].double(), s_ref[2], rtol=tol, atol=tol)


@pytest.mark.parametrize("m_value", [0.0, -0.4, 0.7, -30.0, 25.0])
@pytest.mark.parametrize("qn_value", [0.3, -3.0])
def test_mlstm_overflow_free_normalizer_equals_the_formula(m_value, qn_value):
    """_normalize rewrites num / (max(|qn|, exp(-m)) + eps) for m < 0; value and gradients are
    the formula's (in float64, where the formula itself does not overflow), at m = 0 too."""
    leaves = [torch.tensor(v, dtype=F64, requires_grad=True) for v in ([[1.3, -0.2]], [qn_value], [m_value])]
    num, qn, m = leaves
    a = _normalize(num, qn, m, 1e-6)
    b = num / (torch.maximum(qn.abs(), torch.exp(-m)) + 1e-6)[..., None]
    _close64(a, b, 1e-12)
    for ga, gb in zip(torch.autograd.grad(a.sum(), leaves), torch.autograd.grad(b.sum(), leaves)):
        _close64(ga, gb, 1e-12)


def test_mlstm_cell_matches_mlstm_kernels_native_torch():
    """mlstm_kernels (NX-AI) native-torch kernels on random inputs without resets (they have no
    reset argument), with a carried initial state: our recurrence and chunkwise form vs their
    recurrent sequence and chunkwise kernels. Their kernels take raw q (scaled inside) and the
    forget-gate pre-activation."""
    rec_mod = pytest.importorskip("mlstm_kernels.torch.recurrent.native_sequence")
    chunk_mod = pytest.importorskip("mlstm_kernels.torch.chunkwise.native")
    B, H, T, dk, dv = 2, 3, 32, 4, 5
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, dtype=F64)  # noqa: E731
    q, k, v = r(B, H, T, dk), r(B, H, T, dk), r(B, H, T, dv)
    ig, fpre = 3 * r(B, H, T), 3 * r(B, H, T) + 2
    s0 = (r(B, H, dk, dv), r(B, H, dk), r(B, H))
    no_reset = torch.zeros(B, T, dtype=torch.bool)
    h_rec, (C, n, m), _ = mlstm_recurrent(q * dk**-0.5, k, v, ig, F.logsigmoid(fpre), no_reset, s0)
    h_chk, (C2, n2, m2) = mlstm_chunkwise(q * dk**-0.5, k, v, ig, F.logsigmoid(fpre), no_reset, s0, chunk_size=8)
    h_ref, (C_ref, n_ref, m_ref) = rec_mod.mlstm_recurrent_sequence__native_fw(
        q, k, v, ig, fpre, c_initial=s0[0], n_initial=s0[1], m_initial=s0[2][..., None],
        return_last_states=True, dtype_state=F64,
    )
    _close64(h_rec, h_ref, 1e-12)
    _close64(h_chk, h_ref, 1e-10)
    for a, b in [(C, C_ref), (n, n_ref), (m, m_ref.squeeze(-1)), (C2, C_ref), (m2, m_ref.squeeze(-1))]:
        _close64(a, b, 1e-10)
    h_ck, (C_ck, n_ck, m_ck) = chunk_mod.mlstm_chunkwise__native_autograd(
        q, k, v, ig, fpre, c_initial=s0[0], n_initial=s0[1], m_initial=s0[2],
        return_last_states=True, chunk_size=8,
    )
    _close64(h_chk, h_ck, 1e-10)
    _close64(C2, C_ck, 1e-10)
    _close64(n2, n_ck, 1e-10)
    _close64(m2, m_ck.reshape(m2.shape), 1e-10)


# -------------------------------------------------------------------------------------------- GPU


@pytest.mark.gpu
def test_gpu_paths_match_reference():
    dev = torch.device("cuda")
    g = torch.Generator(device="cpu").manual_seed(0)
    T, B = 100, 8
    reset = (torch.rand(T, B, generator=g) < 0.05).to(dev)
    x = torch.randn(T, B, 4, 8, 8, generator=g).to(dev).requires_grad_()
    gate = torch.rand(T, B, 4, 1, 1, generator=g).to(dev).requires_grad_()
    w = torch.randn(x.shape, generator=g).to(dev)
    for method in ["auto", *METHODS]:
        out, ref = linear_scan(gate, x, reset, method=method), linear_scan_ref(gate, x, reset)
        torch.testing.assert_close(out, ref, **F32)
        for a, b in zip(_grads(out, [gate, x], w), _grads(ref, [gate, x], w)):
            torch.testing.assert_close(a, b, **F32)
    m = _mats((T, B, 4, 8, 8), g).to(dev).requires_grad_()
    w = torch.randn(m.shape, generator=g).to(dev)
    for method in ["auto", *METHODS]:
        out, ref = matrix_scan(m, reset, method=method), matrix_scan_ref(m, reset)
        torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-4)
        torch.testing.assert_close(_grads(out, [m], w)[0], _grads(ref, [m], w)[0], rtol=1e-3, atol=1e-3)
    y = _well_conditioned((64, 16, 16), g).to(dev)
    s = torch.linalg.svdvals(newton_schulz(y, dtype=torch.bfloat16).float())
    assert s.min() > 0.4 and s.max() < 1.6


@pytest.mark.gpu
def test_gru_layer_on_gpu_matches_reference():
    dev = torch.device("cuda")
    xw, h0, keep, w, b = (t.to(dev) for t in _gru_inputs(64, 8, 32, "random", 0))
    outs = []
    for fn in (gru_layer, gru_layer_ref):
        ins = [t.clone().requires_grad_(True) for t in (xw, h0, w, b)]
        y, hT = fn(ins[0], ins[1], keep, ins[2], ins[3])
        outs.append((y, hT, torch.autograd.grad(y.sin().sum() + hT.sum(), ins)))
    (y1, h1, g1), (y2, h2, g2) = outs
    _close(y1, y2)
    _close(h1, h2)
    for a, c in zip(g1, g2):
        _close(a, c)
