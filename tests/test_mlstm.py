"""mlstm and mlstm-orth: every computation path equals the step-by-step recurrence (values and
gradients, float64, random resets, carried state), the stabilizer keeps large gate
pre-activations finite, the orthogonalized readout reads NS(C) and never writes it back, and the
cell matches mlstm_kernels' native torch kernels when that package is installed.

The backbone contract (tests/test_memory_contract.py) also runs for both names and their variants."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import memory
from memory.mlstm import _normalize, mlstm_chunkwise, mlstm_recurrent, mlstm_stabilizer, mlstm_states
from memory.ops import newton_schulz

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


def _leaves(tensors, s0):
    xs = [t.clone().requires_grad_(True) for t in tensors]
    ss = tuple(t.clone().requires_grad_(True) for t in s0)
    return xs, ss


def _loss(h, state, seed=5):
    """A loss touching every output and the final state with random weights (so no gradient
    can hide in a symmetric sum)."""
    g = torch.Generator().manual_seed(seed)
    out = (h * torch.randn(h.shape, generator=g, dtype=h.dtype)).sum()
    for s in state:
        out = out + (s * torch.randn(s.shape, generator=g, dtype=s.dtype)).sum()
    return out


def _grads(fn, tensors, reset, s0):
    xs, ss = _leaves(tensors, s0)
    h, state = fn(*xs, reset, ss)
    _loss(h, state).backward()
    return h.detach(), tuple(s.detach() for s in state), [t.grad for t in xs + list(ss)]


def _rec(q, k, v, ig, lf, reset, s):
    h, state, _ = mlstm_recurrent(q, k, v, ig, lf, reset, s)
    return h, state


def _close(a, b, tol=1e-9):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


# ---------------------------------------------------------------- chunkwise == recurrent (cell)


@settings(max_examples=40, deadline=None)
@given(
    T=st.integers(1, 40),
    chunk=st.integers(1, 17),
    reset_p=st.sampled_from([0.0, 0.1, 0.3, 0.7]),
    gate_scale=st.sampled_from([0.5, 3.0, 10.0]),
    seed=st.integers(0, 10_000),
)
def test_chunkwise_equals_recurrent_values_and_gradients(T, chunk, reset_p, gate_scale, seed):
    tensors, reset, s0 = _cell_inputs(T=T, reset_p=reset_p, gate_scale=gate_scale, seed=seed)
    h_r, s_r, g_r = _grads(_rec, tensors, reset, s0)
    chunkwise = lambda *a: mlstm_chunkwise(*a, chunk_size=chunk)  # noqa: E731
    h_c, s_c, g_c = _grads(chunkwise, tensors, reset, s0)
    _close(h_c, h_r)
    for a, b in zip(s_c, s_r):
        _close(a, b)
    for a, b in zip(g_c, g_r):
        _close(a, b)


@pytest.mark.parametrize(
    "pattern",
    ["first", "every", "consecutive", "chunk_edges", "last"],
)
def test_reset_patterns_exact(pattern):
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
    h_r, s_r, g_r = _grads(_rec, tensors, reset, s0)
    h_c, s_c, g_c = _grads(lambda *a: mlstm_chunkwise(*a, chunk_size=L), tensors, reset, s0)
    _close(h_c, h_r)
    for a, b in zip([*s_c, *g_c], [*s_r, *g_r]):
        _close(a, b)
    if pattern == "first":  # the carried state cannot matter at all
        assert all(g.abs().max() == 0 for g in g_c[-3:])


def test_reset_equals_fresh_state_cell():
    """Output after a reset equals running that episode alone from zeros (the cut is exact)."""
    T, t0 = 20, 9
    tensors, reset, s0 = _cell_inputs(T=T, reset_p=0.0, seed=4)
    reset[:, t0] = True
    h, s = mlstm_chunkwise(*tensors, reset, s0, chunk_size=4)
    zeros = tuple(torch.zeros_like(t) for t in s0)
    h2, s2 = mlstm_chunkwise(*[t[:, :, t0:] for t in tensors], reset[:, t0:], zeros, chunk_size=4)
    _close(h[:, :, t0:], h2, 1e-12)
    for a, b in zip(s, s2):
        _close(a, b, 1e-12)


def test_stabilizer_and_materialized_states_equal_recurrence():
    tensors, reset, s0 = _cell_inputs(T=29, reset_p=0.25, seed=7)
    q, k, v, ig, lf = tensors
    _, (C, n, m), C_all = mlstm_recurrent(q, k, v, ig, lf, reset, s0, keep_states=True)
    # The recurrence's m_t at every step, by running prefixes.
    prefix = lambda i: mlstm_recurrent(*[t[:, :, : i + 1] for t in tensors], reset[:, : i + 1], s0)  # noqa: E731
    m_steps = torch.stack([prefix(i)[1][2] for i in range(29)], -1)
    _close(mlstm_stabilizer(ig, lf, reset, s0[2], chunk_size=5), m_steps)
    C_tb, (C2, n2, m2) = mlstm_states(k, v, ig, lf, reset, s0, chunk_size=5)
    _close(C_tb.permute(1, 2, 0, 3, 4), C_all)
    _close(C2, C)
    _close(n2, n)
    _close(m2, m)


@pytest.mark.parametrize("dtype,tol", [(F64, 1e-9), (torch.float32, 2e-3)])
def test_large_gate_preactivations_stay_finite(dtype, tol):
    """|pre-activations| ~ 30-100: exp(100) would overflow float32; the stabilizer keeps every
    exponent <= 0. Chunkwise (float32 or float64) agrees with the float64 recurrence."""
    B, H, T, dk, dv = 2, 2, 48, 3, 4
    g = torch.Generator().manual_seed(11)
    sign = lambda: torch.where(torch.rand(B, H, T, generator=g) < 0.5, -1.0, 1.0)  # noqa: E731
    mag = lambda: 30 + 70 * torch.rand(B, H, T, generator=g)  # noqa: E731
    ig, fpre = (sign() * mag()).to(F64), (sign() * mag()).to(F64)
    tensors, reset, s0 = _cell_inputs(B=B, H=H, T=T, dk=dk, dv=dv, reset_p=0.1, seed=2, state=False)
    tensors[3], tensors[4] = ig, F.logsigmoid(fpre)
    h_ref, s_ref, g_ref = _grads(_rec, tensors, reset, s0)
    low = [t.to(dtype) for t in tensors]
    low_s0 = tuple(t.to(dtype) for t in s0)
    for fn in (_rec, lambda *a: mlstm_chunkwise(*a, chunk_size=16)):
        h, s, gr = _grads(fn, low, reset, low_s0)
        assert torch.isfinite(h).all() and all(torch.isfinite(t).all() for t in [*s, *gr])
        torch.testing.assert_close(h.double(), h_ref, rtol=tol, atol=tol)
        torch.testing.assert_close(s[0].double(), s_ref[0], rtol=tol, atol=tol)
        torch.testing.assert_close(s[2].double(), s_ref[2], rtol=tol, atol=tol)


@pytest.mark.parametrize("m_value", [0.0, -0.4, 0.7, -30.0, 25.0])
@pytest.mark.parametrize("qn_value", [0.3, -3.0])
def test_overflow_free_normalizer_equals_the_formula(m_value, qn_value):
    """_normalize rewrites num / (max(|qn|, exp(-m)) + eps) for m < 0; value and gradients are
    the formula's (in float64, where the formula itself does not overflow), at m = 0 too."""
    leaves = [torch.tensor(v, dtype=F64, requires_grad=True) for v in ([[1.3, -0.2]], [qn_value], [m_value])]
    num, qn, m = leaves
    a = _normalize(num, qn, m, 1e-6)
    b = num / (torch.maximum(qn.abs(), torch.exp(-m)) + 1e-6)[..., None]
    _close(a, b, 1e-12)
    for ga, gb in zip(torch.autograd.grad(a.sum(), leaves), torch.autograd.grad(b.sum(), leaves)):
        _close(ga, gb, 1e-12)


def test_layer_with_large_gates_is_finite_in_float32():
    torch.manual_seed(0)
    m = memory.make("mlstm", 8, 16)
    mo = memory.make("mlstm-orth", 8, 16)
    for layer in (m, mo):
        with torch.no_grad():
            layer.gates.weight.normal_(0, 20.0)  # pre-activations of order +-100
        x = torch.randn(70, 3, 8, requires_grad=True)
        reset = torch.rand(70, 3) < 0.05
        y, s = layer(x, layer.initial_state(3), reset)
        y.sum().backward()
        assert torch.isfinite(y).all() and all(torch.isfinite(t).all() for t in s)
        assert torch.isfinite(x.grad).all()
        assert all(torch.isfinite(p.grad).all() for p in layer.parameters())


# ---------------------------------------------------------------- layer paths


def _layer_pair(name, seed=0, **opts):
    torch.manual_seed(seed)
    a = memory.make(name, 5, 12, **opts).double()
    with torch.no_grad():
        for p in a.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return a


@pytest.mark.parametrize("name", ["mlstm", "mlstm-orth"])
@pytest.mark.parametrize("path", ["chunkwise", "parallel"])
def test_layer_paths_equal_recurrent_with_gradients(name, path):
    T, B = 19, 3
    layer = _layer_pair(name, num_heads=2, chunk_size=6)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(T, B, 5, generator=g, dtype=F64)
    reset = torch.rand(T, B, generator=g) < 0.2
    fresh = tuple(s.double() for s in layer.initial_state(B))
    _, warm = layer(torch.randn(7, B, 5, generator=g, dtype=F64), fresh, torch.zeros(7, B, dtype=torch.bool))
    results = []
    for p in ("recurrent", path):
        layer.path = p
        layer.zero_grad()
        xs = x.clone().requires_grad_(True)
        s0 = tuple(s.detach().clone().requires_grad_(True) for s in warm)
        y, s = layer(xs, s0, reset)
        _loss(y, s).backward()
        results.append((y, s, [xs.grad, *[t.grad for t in s0]], [q.grad.clone() for q in layer.parameters()]))
    (y1, s1, g1, p1), (y2, s2, g2, p2) = results
    _close(y2, y1)
    for a, b in zip([*s2, *g2, *p2], [*s1, *g1, *p1]):
        _close(a, b)


# ---------------------------------------------------------------- orthogonalized readout


def test_orth_reads_newton_schulz_of_the_state_and_never_writes_it_back():
    torch.manual_seed(0)
    plain = _layer_pair("mlstm", num_heads=2, chunk_size=8)
    orth = memory.make("mlstm-orth", 5, 12, num_heads=2, chunk_size=8).double()
    orth.load_state_dict(plain.state_dict())  # same weights
    T, B = 40, 3
    g = torch.Generator().manual_seed(2)
    x = torch.randn(T, B, 5, generator=g, dtype=F64)
    reset = torch.rand(T, B, generator=g) < 0.1
    s0 = tuple(s.double() for s in plain.initial_state(B))
    y_p, s_p = plain(x, s0, reset)
    y_o, s_o = orth(x, s0, reset)
    # The state handed back is the un-orthogonalized (C, n, m), identical to plain mlstm's.
    for a, b in zip(s_o, s_p):
        _close(a, b)
    assert not torch.allclose(y_o, y_p)  # but the readout differs

    C = plain.read_matrices(x, s0, reset)  # [T, B, H, dk, dv] the stored states C_t
    R = orth.read_matrices(x, s0, reset)
    _close(R, newton_schulz(C, steps=5))
    _close(C[-1], s_p[0])
    # Singular values of the read matrices are in Newton-Schulz's range for every direction the
    # state actually holds (relative singular value > 1e-2; tinier ones are not amplified enough
    # by 5 quintic steps, by design of Muon's coefficients).
    sv_C = torch.linalg.svdvals(C)
    rel = sv_C / sv_C.square().sum(-1, keepdim=True).sqrt()
    sv_R = torch.linalg.svdvals(R)
    held = rel > 1e-2
    assert held.float().mean() > 0.6  # most directions are held (the first steps are low rank)
    assert sv_R[held].min() > 0.5 and sv_R[held].max() < 1.5
    assert sv_C.max() > 1.5 or sv_C[held].min() < 0.5  # C itself is not in that range

    # forward's output is exactly y = out(headnorm(q^T NS(C_t)) * silu(z)).
    q, _, _, _, _, z, _ = orth._inputs(x, s0, reset)
    h = (q.permute(2, 0, 1, 3).unsqueeze(-2) @ R).squeeze(-2)  # [T, B, H, dv]
    h = F.layer_norm(h, (orth.dv,)) * orth.norm_weight
    _close(y_o, orth.out((h * F.silu(z)).reshape(T, B, -1)))


def test_orth_bfloat16_newton_schulz_option():
    """ns_dtype=bfloat16 (Muon's choice) reads about the same as float32 on average and keeps the
    state exact. (Not elementwise: bf16 rounding in directions a low-rank C does not hold is
    amplified by Newton-Schulz, so early-episode reads differ by up to ~0.3.)"""
    torch.manual_seed(0)
    a = memory.make("mlstm-orth", 5, 12, num_heads=2)
    b = memory.make("mlstm-orth", 5, 12, num_heads=2, ns_dtype="bfloat16")
    b.load_state_dict(a.state_dict())
    x = torch.randn(30, 2, 5)
    reset = torch.zeros(30, 2, dtype=torch.bool)
    ya, sa = a(x, a.initial_state(2), reset)
    yb, sb = b(x, b.initial_state(2), reset)
    assert yb.dtype == torch.float32
    assert (ya - yb).abs().mean() < 0.15 * ya.abs().mean() and not torch.equal(ya, yb)
    for u, w in zip(sa, sb):
        torch.testing.assert_close(u, w)


def test_orth_ns_checkpoint_same_gradients_less_saved_memory():
    """ns_checkpoint recomputes Newton-Schulz in backward: identical values and gradients,
    and far fewer bytes kept for backward."""
    T, B = 24, 3
    x = torch.randn(T, B, 5, dtype=F64)
    reset = torch.rand(T, B) < 0.1
    out = []
    for ckpt in (False, True):
        layer = _layer_pair("mlstm-orth", num_heads=1, chunk_size=5, ns_checkpoint=ckpt)  # 5 pieces
        saved: dict[int, int] = {}

        def pack(t):
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        xs = x.clone().requires_grad_(True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            y, s = layer(xs, tuple(t.double() for t in layer.initial_state(B)), reset)
        _loss(y, s).backward()
        out.append((y, xs.grad, [p.grad for p in layer.parameters()], sum(saved.values())))
    (y0, g0, p0, m0), (y1, g1, p1, m1) = out
    _close(y1, y0)
    for a, b in zip([g1, *p1], [g0, *p0]):
        _close(a, b)
    assert m1 < 0.5 * m0


def test_empty_sequence_returns_the_state():
    m = memory.make("mlstm", 4, 8)
    s = m.initial_state(2)
    y, s2 = m(torch.zeros(0, 2, 4), s, torch.zeros(0, 2, dtype=torch.bool))
    assert y.shape == (0, 2, 8) and s2 is s


def test_orth_ns_steps_option_changes_the_readout():
    a = _layer_pair("mlstm-orth", ns_steps=5)
    b = _layer_pair("mlstm-orth", ns_steps=2)
    x = torch.randn(9, 2, 5, dtype=F64)
    reset = torch.zeros(9, 2, dtype=torch.bool)
    s0 = tuple(s.double() for s in a.initial_state(2))
    ya, sa = a(x, s0, reset)
    yb, sb = b(x, s0, reset)
    assert not torch.allclose(ya, yb)
    _close(sa[0], sb[0])


# ---------------------------------------------------------------- construction


def test_gate_initialization_follows_the_reference():
    m = memory.make("mlstm", 10, 128, num_heads=4)
    H = 4
    assert torch.count_nonzero(m.gates.weight) == 0
    _close(m.gates.bias[H:].detach(), torch.linspace(3.0, 6.0, H), 1e-7)
    ib = m.gates.bias[:H].detach()
    assert ib.abs().max() < 0.5 and ib.abs().sum() > 0
    assert (m.dk, m.dv) == (16, 32)  # qk dim = half the value dim by default (xLSTM-7B)
    s = m.initial_state(3)
    assert [list(t.shape) for t in s] == [[3, 4, 16, 32], [3, 4, 16], [3, 4], [3, 3, 10]]  # + conv history
    assert all(t.abs().sum() == 0 for t in s)


@pytest.mark.parametrize(
    "name,opts,match",
    [
        ("mlstm", {"path": "fast"}, "path must be one of auto, recurrent, chunkwise, parallel"),
        ("mlstm", {"num_heads": 5}, "not divisible by num_heads 5"),
        ("mlstm", {"num_heads": 0}, "num_heads must be >= 1"),
        ("mlstm", {"chunk_size": 0}, "chunk_size must be >= 1"),
        ("mlstm", {"eps": 0.0}, "eps must be > 0"),
        ("mlstm", {"qk_head_dim": -1}, "qk_head_dim and v_head_dim must be >= 1"),
        ("mlstm-orth", {"ns_steps": 0}, "ns_steps must be >= 1"),
        ("mlstm-orth", {"ns_dtype": "int8"}, "ns_dtype must be one of same, float32, bfloat16, float16"),
    ],
)
def test_bad_options_raise(name, opts, match):
    with pytest.raises(ValueError, match=match):
        memory.make(name, 4, 16, **opts)


def test_bad_state_raises():
    m = memory.make("mlstm", 4, 16)
    x = torch.zeros(3, 2, 4)
    reset = torch.zeros(3, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"state must be \(C, n, m, x_hist\)"):
        m(x, m.initial_state(3), reset)
    with pytest.raises(ValueError, match=r"state must be \(C, n, m, x_hist\)"):
        m(x, m.initial_state(2)[:2], reset)


def test_options_reach_the_command_line():
    assert memory.parse_options("mlstm-orth", ["ns_steps=3", "path=recurrent", "num_heads=2"]) == {
        "ns_steps": 3,
        "path": "recurrent",
        "num_heads": 2,
    }
    assert memory.parse_options("mlstm", ["eps=1e-5", "chunk_size=32"]) == {"eps": 1e-5, "chunk_size": 32}


# ---------------------------------------------------------------- against mlstm_kernels


def test_cell_matches_mlstm_kernels_native_torch():
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
    _close(h_rec, h_ref, 1e-12)
    _close(h_chk, h_ref, 1e-10)
    for a, b in [(C, C_ref), (n, n_ref), (m, m_ref.squeeze(-1)), (C2, C_ref), (m2, m_ref.squeeze(-1))]:
        _close(a, b, 1e-10)
    h_ck, (C_ck, n_ck, m_ck) = chunk_mod.mlstm_chunkwise__native_autograd(
        q, k, v, ig, fpre, c_initial=s0[0], n_initial=s0[1], m_initial=s0[2],
        return_last_states=True, chunk_size=8,
    )
    _close(h_chk, h_ck, 1e-10)
    _close(C2, C_ck, 1e-10)
    _close(n2, n_ck, 1e-10)
    _close(m2, m_ck.reshape(m2.shape), 1e-10)
