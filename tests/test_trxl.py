"""trxl: the layer (chunked window attention over cached keys and values) equals plain attention
written per step and per env over the episode's last W steps (values and gradients, float64,
random resets, a carried cache); the window bounds what a step can see; options and errors.

The backbone contract (tests/test_memory_contract.py) also runs for trxl and its variants."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import memory

F64 = torch.float64


def _layer(seed=0, **opts):
    torch.manual_seed(seed)
    m = memory.make("trxl", 5, 8, **opts).double()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return m


def _reference(m, x, state, reset):
    """Per env and step: a list of the episode's (k, v, step) so far, attention over the last W."""
    W, H, dh, E = m.window, m.num_heads, m.head_dim, m.output_size
    T, B, _ = x.shape
    k_c, v_c, valid = state
    ys = [[None] * B for _ in range(T)]
    finals = []
    for b in range(B):
        # Cached steps at relative times -(W-1) .. -1, kept only where valid.
        hist = [(k_c[b, i], v_c[b, i], i - (W - 1)) for i in range(W - 1) if valid[b, i] > 0]
        for t in range(T):
            if reset[t, b]:
                hist = []
            h = m.inp(x[t, b])
            q, k, v = m.qkv(F.layer_norm(h, (E,), m.norm1.weight, m.norm1.bias, m.norm1.eps)).chunk(3, -1)
            hist.append((k, v, t))
            seen = [(kk, vv, s) for kk, vv, s in hist if t - s < W]
            heads = []
            for i in range(H):
                sl = slice(i * dh, (i + 1) * dh)
                scores = torch.stack([q[sl] @ kk[sl] / dh**0.5 + m.rel_bias[i, t - s] for kk, vv, s in seen])
                wts = torch.softmax(scores, 0)
                heads.append(sum(w * vv[sl] for w, (kk, vv, s) in zip(wts, seen)))
            a = h + m.proj(torch.cat(heads))
            ys[t][b] = a + m.mlp(m.norm2(a))
        # The state: the last W-1 steps' keys/values (zeros where not in the current episode).
        cache_k = torch.zeros(W - 1, E, dtype=x.dtype)
        cache_v = torch.zeros(W - 1, E, dtype=x.dtype)
        ok = torch.zeros(W - 1, dtype=x.dtype)
        for kk, vv, s in hist:
            i = s - T + (W - 1)
            if 0 <= i < W - 1:
                cache_k = cache_k.index_put((torch.tensor([i]),), kk[None])
                cache_v = cache_v.index_put((torch.tensor([i]),), vv[None])
                ok[i] = 1.0
        finals.append((cache_k, cache_v, ok))
    y = torch.stack([torch.stack(row) for row in ys])
    return y, tuple(torch.stack([f[j] for f in finals]) for j in range(3))


@pytest.mark.parametrize("window,T", [(2, 7), (4, 1), (4, 11), (6, 20)])
def test_sequence_equals_reference_values_and_gradients(window, T):
    m = _layer(window=window, num_heads=2)
    g = torch.Generator().manual_seed(T)
    B = 3
    # A warm cache from an earlier call (some entries invalid).
    _, warm = m(torch.randn(5, B, 5, generator=g, dtype=F64), tuple(s.double() for s in m.initial_state(B)),
                torch.rand(5, B, generator=g) < 0.3)
    x = torch.randn(T, B, 5, generator=g, dtype=F64)
    reset = torch.rand(T, B, generator=g) < 0.2
    w = torch.randn(T, B, 8, generator=g, dtype=F64)
    w_s = [torch.randn(s.shape, generator=g, dtype=F64) for s in warm]
    results = []
    for fn in (m, lambda xx, ss, rr: _reference(m, xx, ss, rr)):
        xx = x.clone().requires_grad_(True)
        ss = tuple(s.detach().clone().requires_grad_(i < 2) for i, s in enumerate(warm))
        y, s = fn(xx, ss, reset)
        loss = (y * w).sum() + sum((a * b).sum() for a, b in zip(s[:2], w_s[:2]))
        results.append((y, s, torch.autograd.grad(loss, [xx, ss[0], ss[1], *m.parameters()])))
    (y1, s1, g1), (y2, s2, g2) = results
    torch.testing.assert_close(y1, y2, rtol=1e-10, atol=1e-10)
    for a, b in zip([*s1, *g1], [*s2, *g2]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_window_bounds_what_a_step_sees():
    """With no resets, y_t depends on x_s exactly for t - W < s <= t."""
    W, T = 4, 12
    m = _layer(window=W)
    x = torch.randn(T, 1, 5, dtype=F64, requires_grad=True)
    y, _ = m(x, tuple(s.double() for s in m.initial_state(1)), torch.zeros(T, 1, dtype=torch.bool))
    t = 9
    (gx,) = torch.autograd.grad(y[t].sum(), [x])
    seen = gx.abs().sum((1, 2)) > 0
    assert seen.tolist() == [t - W < s <= t for s in range(T)]


def test_long_call_equals_short_calls():
    """Query chunks of W steps: a 50-step call equals 50 single steps (window 8)."""
    m = _layer(window=8)
    x = torch.randn(50, 2, 5, dtype=F64)
    reset = torch.rand(50, 2) < 0.05
    s = tuple(t.double() for t in m.initial_state(2))
    y, s_seq = m(x, s, reset)
    ys = []
    for t in range(50):
        yt, s = m(x[t : t + 1], s, reset[t : t + 1])
        ys.append(yt)
    torch.testing.assert_close(y, torch.cat(ys), rtol=1e-10, atol=1e-10)
    for a, b in zip(s_seq, s):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_options_and_errors():
    assert memory.parse_options("trxl", ["window=64", "num_heads=2"]) == {"window": 64, "num_heads": 2}
    assert "trxl" in memory.describe("trxl")
    with pytest.raises(ValueError, match="window must be >= 2"):
        memory.make("trxl", 4, 8, window=1)
    with pytest.raises(ValueError, match="num_heads must be >= 1 and divide hidden_size"):
        memory.make("trxl", 4, 8, num_heads=3)
    m = memory.make("trxl", 4, 8, window=5)
    assert [list(s.shape) for s in m.initial_state(2)] == [[2, 4, 8], [2, 4, 8], [2, 4]]
    with pytest.raises(ValueError, match=r"state must be \(k, v, valid\)"):
        m(torch.zeros(3, 2, 4), m.initial_state(3), torch.zeros(3, 2, dtype=torch.bool))
