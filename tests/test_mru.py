"""MRU: the state-matrix parameterizations, the scan with resets, init, diagnostics, errors.

The generic backbone contract (step-by-step == sequence, resets, split calls, gradients) runs for
every kind in tests/test_memory_contract.py through the registry's test variants."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import memory
from memory.mru import DEFAULT_KIND, DET_ROOT_MIN, KINDS, build_state_matrix, log_frobenius_norm

DET_ONE = ("ldu", "qr-cayley", "qr-expm")
ORTHOGONAL = ("cayley", "expm")
PROPERTY = settings(max_examples=25, deadline=None)


def _random_a(seed: int, batch: tuple[int, ...], o: int, scale: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(*batch, o, o, generator=g, dtype=torch.float64)  # [..., o, o]


def _eye(o: int) -> torch.Tensor:
    return torch.eye(o, dtype=torch.float64)


# ---------------------------------------------------------------- build_state_matrix: properties

@PROPERTY
@given(
    seed=st.integers(0, 2**31 - 1),
    o=st.integers(1, 7),
    batch=st.lists(st.integers(1, 3), min_size=0, max_size=2).map(tuple),
    scale=st.floats(0.01, 1.5),
    kind=st.sampled_from(DET_ONE),
)
def test_det_is_one(seed, o, batch, scale, kind):
    a = _random_a(seed, batch, o, scale)
    m = build_state_matrix(a, kind)
    assert m.shape == a.shape and m.dtype == torch.float64
    # det = 1 as sign = +1 and log|det| = 0 (slogdet stays accurate where M has large entries).
    sign, logabs = torch.linalg.slogdet(m)
    torch.testing.assert_close(logabs, torch.zeros_like(logabs), atol=1e-8, rtol=0)
    assert (sign > 0).all()
    # float32 (the dtype the model computes in) builds the same matrix, up to float32 rounding
    # (its det drifts from 1 by rounding times M's condition number: up to 1e-2 seen at scale 1.5).
    m32 = build_state_matrix(a.float(), kind)
    assert m32.dtype == torch.float32
    torch.testing.assert_close(m32.double(), m, atol=1e-4 * float(m.abs().max()), rtol=1e-4)


@PROPERTY
@given(
    seed=st.integers(0, 2**31 - 1),
    o=st.integers(1, 7),
    batch=st.lists(st.integers(1, 3), min_size=0, max_size=2).map(tuple),
    scale=st.floats(0.01, 3.0),
    kind=st.sampled_from(ORTHOGONAL),
)
def test_orthogonal_kinds(seed, o, batch, scale, kind):
    a = _random_a(seed, batch, o, scale)
    m = build_state_matrix(a, kind)
    eye = _eye(o).expand_as(m)
    torch.testing.assert_close(m @ m.mT, eye, atol=1e-10, rtol=0)
    # They read only the strictly-lower entries: changing the rest changes nothing.
    b = torch.tril(a, -1) + torch.triu(torch.randn_like(a))
    torch.testing.assert_close(build_state_matrix(b, kind), m, atol=1e-12, rtol=0)
    # det +1 (a rotation: the identity's component of O(o), reachable from A = 0).
    torch.testing.assert_close(torch.linalg.det(m), torch.ones(m.shape[:-2], dtype=m.dtype))


@PROPERTY
@given(seed=st.integers(0, 2**31 - 1), o=st.integers(1, 7), scale=st.floats(0.01, 2.0))
def test_orthogonal_kinds_match_scipy(seed, o, scale):
    """Cayley and expm of K = S - S^T, S = tril(A, -1), against scipy/numpy."""
    a = _random_a(seed, (), o, scale)
    s = np.tril(a.numpy(), -1)
    k = s - s.T
    eye = np.eye(o)
    np.testing.assert_allclose(build_state_matrix(a, "expm").numpy(), scipy.linalg.expm(k), atol=1e-10)
    np.testing.assert_allclose(
        build_state_matrix(a, "cayley").numpy(), np.linalg.solve(eye - k, eye + k), atol=1e-10
    )


@PROPERTY
@given(seed=st.integers(0, 2**31 - 1), o=st.integers(1, 7), scale=st.floats(0.01, 1.0))
def test_qr_kinds_factor_as_orthogonal_times_positive_upper(seed, o, scale):
    """M = Q R with R = triu(A, 1) + diag(exp(d - mean d)): a QR with a positive diagonal is
    unique, so torch's QR of M (signs fixed) must give back exactly that R and the kind's Q."""
    a = _random_a(seed, (2,), o, scale)
    d = torch.diagonal(a, dim1=-2, dim2=-1)
    r_expected = torch.triu(a, 1) + torch.diag_embed(torch.exp(d - d.mean(-1, keepdim=True)))
    for kind in ("qr-cayley", "qr-expm"):
        m = build_state_matrix(a, kind)
        q, r = torch.linalg.qr(m)
        sgn = torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))  # [..., o]
        q, r = q * sgn[..., None, :], r * sgn[..., :, None]
        torch.testing.assert_close(r, r_expected, atol=1e-9, rtol=1e-9)
        torch.testing.assert_close(q, build_state_matrix(a, kind[3:]), atol=1e-9, rtol=1e-9)


def test_ldu_matches_hand_computed_2x2():
    """o = 2, A = [[a, b], [c, d]]: s = (e^{(a-d)/4}, e^{(d-a)/4}), M = [[s1^2, s1 b], [c s1, c b + s2^2]].
    Catches a missing sqrt (det 1 alone would not: exp(d - mean d) also has product 1)."""
    a, b, c, d = 0.3, -0.7, 1.1, -0.5
    s1, s2 = math.exp((a - d) / 4), math.exp((d - a) / 4)
    expected = torch.tensor([[s1 * s1, s1 * b], [c * s1, c * b + s2 * s2]], dtype=torch.float64)
    got = build_state_matrix(torch.tensor([[a, b], [c, d]], dtype=torch.float64), "ldu")
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)


@PROPERTY
@given(seed=st.integers(0, 2**31 - 1), o=st.integers(1, 7), scale=st.floats(0.01, 1.0))
def test_plain_and_det_norm(seed, o, scale):
    a = _random_a(seed, (3,), o, scale)
    p = a + _eye(o)
    torch.testing.assert_close(build_state_matrix(a, "plain"), p, atol=0, rtol=0)
    m = build_state_matrix(a, "det-norm")
    root = torch.linalg.det(p).abs() ** (1 / o)  # [3]
    ok = root > DET_ROOT_MIN
    # |det| = 1 wherever the det-root is above the clamp, and M is A + I scaled by a positive scalar.
    torch.testing.assert_close(torch.linalg.det(m[ok]).abs(), torch.ones(int(ok.sum()), dtype=m.dtype))
    torch.testing.assert_close(m, p / root.clamp(min=DET_ROOT_MIN)[:, None, None])


def test_det_norm_near_and_at_singular_is_finite_with_finite_gradient():
    o = 4
    # A = -I gives A + I = 0 (exactly singular); a rank-1 A + I is singular too; the third is
    # nearly singular but above the clamp.
    near = torch.diag(torch.tensor([1.0, 1.0, 1.0, 0.01], dtype=torch.float64)) - _eye(o)
    rank1 = torch.ones(o, o, dtype=torch.float64) - _eye(o)
    a = torch.stack([-_eye(o), rank1, near]).requires_grad_(True)
    m = build_state_matrix(a, "det-norm")
    assert torch.isfinite(m).all()
    # Clamped: scaled by exactly 1/DET_ROOT_MIN (and so still singular: it cannot be det-normed).
    torch.testing.assert_close(m[1], (a[1] + _eye(o)).detach() / DET_ROOT_MIN)
    torch.testing.assert_close(torch.linalg.det(m[2]).abs(), torch.tensor(1.0, dtype=m.dtype))
    m.square().sum().backward()
    assert torch.isfinite(a.grad).all()


@pytest.mark.parametrize("kind", KINDS)
def test_identity_at_zero_and_compute_dtype(kind):
    for o in (1, 3, 8):
        for dtype, want in [(torch.float64, torch.float64), (torch.float32, torch.float32), (torch.bfloat16, torch.float32)]:
            m = build_state_matrix(torch.zeros(2, o, o, dtype=dtype), kind)
            assert m.dtype == want
            torch.testing.assert_close(m, torch.eye(o, dtype=want).expand(2, o, o), atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_build_state_matrix_gradcheck(kind):
    """Analytic gradients equal finite differences (float64), away from A = 0 and at A = 0."""
    a = _random_a(3, (2,), 3, 0.4).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: build_state_matrix(x, kind), (a,))
    z = torch.zeros(3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: build_state_matrix(x, kind), (z,))


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_finite_float32_large_inputs(kind):
    a = (3.0 * torch.randn(16, 8, 8, generator=torch.Generator().manual_seed(0))).requires_grad_(True)
    m = build_state_matrix(a, kind)
    (m * torch.randn_like(m)).sum().backward()
    assert torch.isfinite(m).all() and torch.isfinite(a.grad).all()
    assert a.grad.abs().sum() > 0


def test_unknown_kind_and_bad_shape_raise():
    with pytest.raises(ValueError, match=r"unknown MRU kind 'lu'; choose one of: plain, cayley, .*det-norm"):
        build_state_matrix(torch.zeros(3, 3), "lu")
    with pytest.raises(ValueError, match=r"unknown MRU kind 'lu'; choose one of: plain"):
        memory.make("mru", 4, 8, kind="lu")
    with pytest.raises(ValueError, match="square"):
        build_state_matrix(torch.zeros(3, 4), "ldu")
    with pytest.raises(ValueError, match="num_heads must be >= 1"):
        memory.make("mru", 4, 8, num_heads=0)


def test_options_reachable_from_command_line():
    opts = memory.parse_options("mru", ["kind=qr-expm", "num_heads=2", "order=16", "down_cols=4", "skip=false"])
    assert opts == {"kind": "qr-expm", "num_heads": 2, "order": 16, "down_cols": 4, "skip": False}
    assert memory.parse_options("mru", ["stable=false", "readout=exact"]) == {"stable": False, "readout": "exact"}
    m = memory.make("mru", 5, 12, **opts)
    assert m.kind == "qr-expm" and m.initial_state(3)[0].shape == (3, 2, 16, 16)
    assert memory.options("mru")["kind"].default == DEFAULT_KIND == "ldu"


# ---------------------------------------------------------------- the layer

IN, HID, B = 5, 12, 3


def _model(kind, seed=0, perturb=0.3, **opts):
    torch.manual_seed(seed)
    m = memory.make("mru", IN, HID, kind=kind, num_heads=2, order=3, down_cols=2, **opts).double()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(perturb * torch.randn_like(p))
    return m


def _to_h(state):
    """The state matrix H [B, heads, o, o] of either layout: (H,) plain, (U, s) stable."""
    return state[0] if len(state) == 1 else state[0] * state[1].exp()[..., None, None]


# (stable, readout): the default, the stable path with the exact readout, the plain products.
MODES = [(True, "norm"), (True, "exact"), (False, "exact")]


def _inputs(T, seed=1, reset_p=0.2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, B, IN, generator=g, dtype=torch.float64)  # [T, B, IN]
    reset = torch.rand(T, B, generator=g) < reset_p  # [T, B]
    return x, reset


@pytest.mark.parametrize("stable, readout", MODES)
@pytest.mark.parametrize("kind", KINDS)
def test_scan_with_resets_against_loop_and_readout(kind, stable, readout):
    """The layer's states and outputs against a plain loop H = (I if reset else H) @ M_t and the
    readout written out by hand (norm: H rescaled to the identity's norm, H sqrt(o) / ||H||_F)."""
    m = _model(kind, stable=stable, readout=readout)
    x, reset = _inputs(17)
    reset[0] = torch.tensor([False, True, False])
    _, s_warm = m(x[:4], m.initial_state(B), reset[:4])  # a non-identity carried state
    h0 = _to_h(s_warm)  # [B, heads, o, o]
    y, s_last = m(x, s_warm, reset)
    h_last = _to_h(s_last)

    a = (x @ m.proj.weight.T).view(17, B, 2, 3, 3)  # [T, B, heads, o, o]
    ms = build_state_matrix(a, kind)
    eye = torch.eye(3, dtype=torch.float64)
    ys = []
    for b in range(B):
        hb = h0[b]  # [heads, o, o]
        yb = []
        for t in range(17):
            if reset[t, b]:
                hb = eye.expand(2, 3, 3)
            hb = hb @ ms[t, b]
            hr = hb if readout == "exact" else hb * math.sqrt(3) / torch.linalg.matrix_norm(hb)[:, None, None]
            feats = torch.stack([hr[k] @ m.down[k] for k in range(2)]).flatten()  # [heads*o*c]
            yb.append(m.readout(feats) + m.skip(x[t, b]))
        ys.append(torch.stack(yb))
        torch.testing.assert_close(h_last[b], hb, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(y, torch.stack(ys, 1), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("kind", KINDS)
def test_output_depends_on_the_past(kind):
    m = _model(kind)
    x, reset = _inputs(6, reset_p=0.0)
    y1, _ = m(x, m.initial_state(B), reset)
    x2 = x.clone()
    x2[0] += 1.0
    y2, _ = m(x2, m.initial_state(B), reset)
    assert not torch.allclose(y1[-1], y2[-1])


@pytest.mark.parametrize("stable, readout", MODES)
@pytest.mark.parametrize("kind", KINDS)
def test_default_init_states_are_identity_and_gradients_reach_projection(kind, stable, readout):
    """Zero-initialized projection: M = I, so H = I at every step. The output still varies with the
    input (the skip) and the loss gradient reaches the projection (through dM/dA at A = 0)."""
    torch.manual_seed(0)
    m = memory.make("mru", IN, HID, kind=kind, num_heads=2, order=3, down_cols=2, stable=stable, readout=readout)
    x, reset = _inputs(8)
    x = x.float()
    y, state = m(x, m.initial_state(B), reset)
    torch.testing.assert_close(_to_h(state), torch.eye(3).expand(B, 2, 3, 3))
    assert y.std(dim=(0, 1)).min() > 0  # the output varies with the input from the first step
    # A loss that rewards remembering x[0] at the last step.
    (y[-1] * x[0, :, :1]).sum().backward()
    g = m.proj.weight.grad
    assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0


def test_without_skip_the_init_output_is_constant():
    """Why skip defaults to True: without it, H = I at init makes y the same for every input."""
    torch.manual_seed(0)
    m = memory.make("mru", IN, HID, num_heads=2, order=3, down_cols=2, skip=False)
    x, reset = _inputs(8)
    y, _ = m(x.float(), m.initial_state(B), reset)
    torch.testing.assert_close(y, y[:1, :1].expand_as(y))


def test_products_run_in_float32_for_low_precision_models():
    torch.manual_seed(0)
    m = memory.make("mru", IN, HID, num_heads=2, order=3, down_cols=2).to(torch.bfloat16)
    with torch.no_grad():
        m.proj.weight.normal_(0, 0.3)
    x, reset = _inputs(8)
    s0 = m.initial_state(B)
    assert s0[0].dtype == torch.float32
    hs = m.states(x.to(torch.bfloat16), s0, reset)
    assert hs.dtype == torch.float32
    y, (u, s) = m(x.to(torch.bfloat16), s0, reset)
    assert y.dtype == torch.bfloat16 and u.dtype == s.dtype == torch.float32


def test_products_stay_float32_under_autocast():
    torch.manual_seed(0)
    m = memory.make("mru", IN, HID, num_heads=2, order=3, down_cols=2)
    with torch.no_grad():
        m.proj.weight.normal_(0, 0.3)
    x, reset = _inputs(8)
    x = x.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, (u, s) = m(x, m.initial_state(B), reset)
    assert u.dtype == s.dtype == torch.float32
    y32, (u32, s32) = m(x, m.initial_state(B), reset)
    torch.testing.assert_close(u, u32)  # bf16 products would differ at ~1e-2
    torch.testing.assert_close(s, s32)


@pytest.mark.parametrize("stable, readout", MODES)
def test_diagnostics_report_mean_log_state_norm(stable, readout):
    m = _model("plain", stable=stable, readout=readout)
    assert m.diagnostics() == {}
    x, reset = _inputs(9)
    s0 = m.initial_state(B)
    m(x, s0, reset)
    d = m.diagnostics()
    hs = m.states(x, s0, reset)  # [T, B, heads, o, o]
    expected = torch.linalg.matrix_norm(hs).log().mean().item()  # float64: no overflow here
    assert set(d) == {"state_log_norm"} and math.isfinite(d["state_log_norm"])
    assert d["state_log_norm"] == pytest.approx(expected, rel=1e-12)
    # At the zero init every H is I: log ||I||_F = log sqrt(o).
    z = memory.make("mru", IN, HID, num_heads=2, order=3, down_cols=2)
    z(x.float(), z.initial_state(B), reset)
    assert z.diagnostics()["state_log_norm"] == pytest.approx(0.5 * math.log(3), abs=1e-6)


def test_log_frobenius_norm_does_not_overflow_before_the_state():
    """A float32 state with entries of 1e30 is finite; its squared entries are not."""
    h = torch.randn(4, 3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for scale in (1e-30, 1.0, 1e30):
        want = torch.linalg.matrix_norm(h * scale).log()  # float64: no overflow
        torch.testing.assert_close(log_frobenius_norm((h * scale).float()), want.float(), atol=1e-5, rtol=1e-6)
    assert log_frobenius_norm(torch.zeros(2, 2)).item() == float("-inf")


@pytest.mark.parametrize("stable", [True, False])
def test_diagnostics_finite_for_a_large_but_finite_state(stable):
    m = memory.make("mru", IN, HID, num_heads=2, order=3, down_cols=2, stable=stable, readout="exact")
    x, reset = _inputs(2, reset_p=0.0)
    if stable:
        u, s = m.initial_state(B)
        big = (u, s + math.log(1e25))
    else:
        big = (1e25 * torch.eye(3).expand(B, 2, 3, 3),)
    m(x.float(), big, reset)
    assert m.diagnostics()["state_log_norm"] == pytest.approx(math.log(1e25 * math.sqrt(3)), rel=1e-5)


def test_bad_state_raises():
    x, reset = _inputs(4)
    m = _model("ldu", stable=False, readout="exact")
    with pytest.raises(ValueError, match=r"state must be \(H,\) with H \[B, 2, 3, 3\]"):
        m(x, (torch.zeros(B, 2, 4, 4, dtype=torch.float64),), reset)
    m = _model("ldu")
    with pytest.raises(ValueError, match=r"state must be \(U, s\) with U \[B, 2, 3, 3\] and s \[B, 2\]"):
        m(x, (torch.zeros(B, 2, 3, 3, dtype=torch.float64),), reset)
    with pytest.raises(ValueError, match=r"state must be \(U, s\)"):
        m(x, (torch.zeros(B, 2, 3, 3, dtype=torch.float64), torch.zeros(B, 3, dtype=torch.float64)), reset)


def test_bad_readout_options_raise():
    with pytest.raises(ValueError, match=r"unknown MRU readout 'scaled'; choose one of: norm, exact"):
        memory.make("mru", IN, HID, readout="scaled")
    with pytest.raises(ValueError, match=r"readout=norm needs stable=true"):
        memory.make("mru", IN, HID, stable=False, readout="norm")
