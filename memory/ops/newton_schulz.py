"""Newton-Schulz orthogonalization (Muon's quintic iteration, docs/design.md section 3).

The fast path fuses each iteration into three batched products over all leading dims at once:
    A = X X^T;  B = b A + c A A  (one baddbmm);  X = a X + B X  (one baddbmm)
against six ops (three products, three element-wise) in the plain form, writing into
preallocated buffers (out=): on the project's CPU machines allocation dominated big batched
matrix work (docs/design.md section 8), every fresh [8192, 32, 32] temporary being mapped afresh
by glibc. With autograd, a custom backward does 4 products per step instead of autograd's 6.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from memory.ops._checks import check_newton_schulz
from memory.ops.reference import NS_COEFFS


def _normalized(x: Tensor, eps: float) -> tuple[Tensor, bool]:
    """x [..., m, n] -> X [N, k, l] with k <= l (tall matrices transposed), X / (||X||_F + eps)."""
    tall = x.shape[-2] > x.shape[-1]
    X = x.reshape(-1, *x.shape[-2:])  # [N, m, n]
    if tall:
        X = X.mT  # [N, n, m]: X X^T is the small (n x n) side
    X = X / (torch.linalg.matrix_norm(X, keepdim=True) + eps)
    return X, tall


class _NewtonSchulzIterations(torch.autograd.Function):
    """`steps` quintic iterations on normalized X [N, k, l] (k <= l) with a hand-written backward.

    Per step X' = a X + B X, B = b A + c A A, A = X X^T (A and B symmetric). Backward, with
    G = dL/dX': dB = G X^T; S = dB + dB^T; dL/dX = a G + B G + (b S + c (S A + (S A)^T)) X.
    That is 4 batched products per step (autograd through the three ops does 6 plus
    element-wise work), all written into reused buffers. Saved: X, A and B of every step, as
    autograd would save."""

    @staticmethod
    def forward(ctx, X: Tensor, steps: int) -> Tensor:
        a, b, c = NS_COEFFS
        N, k, l = X.shape
        Xs = X.new_empty(steps + 1, N, k, l)  # X_0 .. X_steps
        As = X.new_empty(steps, N, k, k)
        Bs = X.new_empty(steps, N, k, k)
        Xs[0].copy_(X)
        for i in range(steps):
            torch.bmm(Xs[i], Xs[i].mT, out=As[i])
            torch.baddbmm(As[i], As[i], As[i], beta=b, alpha=c, out=Bs[i])
            torch.baddbmm(Xs[i], Bs[i], Xs[i], beta=a, out=Xs[i + 1])
        ctx.save_for_backward(Xs, As, Bs)
        return Xs[steps].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        a, b, c = NS_COEFFS
        Xs, As, Bs = ctx.saved_tensors
        steps = As.shape[0]
        G = grad.contiguous()
        if steps == 0:
            return G.clone(), None
        dB, S, T1 = (torch.empty_like(As[0]) for _ in range(3))  # [N, k, k]
        dX = torch.empty_like(Xs[0])  # [N, k, l]
        # The new gradient alternates between two buffers, never the one being read (nor the
        # incoming gradient, which autograd owns).
        outs = (torch.empty_like(Xs[0]), torch.empty_like(Xs[0]))
        for j, i in enumerate(range(steps - 1, -1, -1)):
            X, A, B = Xs[i], As[i], Bs[i]
            torch.bmm(G, X.mT, out=dB)
            torch.baddbmm(G, B, G, beta=a, out=dX)  # a G + B G (B symmetric)
            torch.add(dB, dB.mT, out=S)
            torch.bmm(S, A, out=T1)
            torch.add(T1, T1.mT, out=dB)  # dB reused: S A + A S
            dB.mul_(c).add_(S, alpha=b)
            G = torch.baddbmm(dX, dB, X, out=outs[j % 2])
        return G, None


def _iterate_inplace(X: Tensor, steps: int) -> Tensor:
    """No-grad variant: A, B and the next X are written into reused buffers."""
    a, b, c = NS_COEFFS
    X = X.contiguous()
    N, k, _ = X.shape
    A = X.new_empty(N, k, k)
    Bm = X.new_empty(N, k, k)
    Y = torch.empty_like(X)
    for _ in range(steps):
        torch.bmm(X, X.mT, out=A)
        torch.baddbmm(A, A, A, beta=b, alpha=c, out=Bm)
        torch.baddbmm(X, Bm, X, beta=a, out=Y)
        X, Y = Y, X
    return X


def newton_schulz(x: Tensor, steps: int = 5, eps: float = 1e-7, dtype: torch.dtype | None = None) -> Tensor:
    """Approximately orthogonalize every matrix of x [..., m, n] -> [..., m, n] (about U S' V^T
    with S' in roughly [0.5, 1.5]): X = x / (||x||_F + eps), then `steps` quintic iterations with
    (a, b, c) = (3.4445, -4.7750, 2.0315). Tall matrices are transposed internally so the inner
    products are the small side. Batched over all leading dims in one call; differentiable.

    dtype: the compute dtype (None: x's dtype; torch.bfloat16 is Muon's choice on GPU, slow or
    unsupported for bmm on many CPUs). The result is returned in x's dtype."""
    check_newton_schulz(x, steps, eps)
    y = x if dtype is None else x.to(dtype)
    X, tall = _normalized(y, eps)
    if torch.is_grad_enabled() and y.requires_grad:
        X = _NewtonSchulzIterations.apply(X, steps)
    else:
        X = _iterate_inplace(X, steps)
    if tall:
        X = X.mT
    return X.reshape(x.shape).to(x.dtype)
