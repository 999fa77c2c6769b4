"""mlstm and mlstm-orth layers: every path (chunkwise, parallel) equals the recurrent one (values
and gradients, float64, random resets, carried state), large gate pre-activations stay finite,
the orthogonalized readout reads NS(C) and never writes it back, options and errors.

The cell kernels (memory/ops/mlstm.py) are tested against the plain recurrence in
tests/test_ops.py; the backbone contract (tests/test_memory_contract.py) also runs for both names
and their variants."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import memory
from memory.ops import newton_schulz

F64 = torch.float64


def _loss(h, state, seed=5):
    """A loss touching every output and the final state with random weights (so no gradient
    can hide in a symmetric sum)."""
    g = torch.Generator().manual_seed(seed)
    out = (h * torch.randn(h.shape, generator=g, dtype=h.dtype)).sum()
    for s in state:
        out = out + (s * torch.randn(s.shape, generator=g, dtype=s.dtype)).sum()
    return out


def _close(a, b, tol=1e-9):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


# ---------------------------------------------------------------- layer numerics


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
