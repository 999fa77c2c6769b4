"""One GRU layer over a [T, B] sequence with episode resets, with a hand-written backward.

    hm_t = keep_t * h_{t-1}                          (keep_t = 0 where an episode starts at t)
    r, z = sigmoid(xw_r + hm W_r^T + b_r), sigmoid(xw_z + hm W_z^T + b_z)
    n    = tanh(xw_n + r * (hm W_n^T + b_n))
    h_t  = (1 - z) * n + z * hm                      (torch.nn.GRU's equations and gate order)

``xw`` is the input projection x W_ih^T + b_ih for all T at once (one matmul, left to autograd).
On CPU torch has no fused GRU kernel: nn.GRU and an autograd step loop both record ~20 autograd
nodes per step, and their backward is where a GRU's PPO update spends its time. Here the forward
writes the gates into preallocated [T, B, H] buffers and the backward is one reverse loop of
in-place element-wise ops plus one [B, 3H] x [3H, H] product per step; the weight gradients are
two big products after the loop. ``gru_layer_ref`` is the plain autograd loop it is tested against.
"""

from __future__ import annotations

import torch
from torch import Tensor


def gru_layer_ref(xw: Tensor, h0: Tensor, keep: Tensor, w_hh: Tensor, b_hh: Tensor) -> tuple[Tensor, Tensor]:
    """xw [T, B, 3H], h0 [B, H], keep [T, B] (float 0/1), w_hh [3H, H], b_hh [3H] -> y [T, B, H], h_T."""
    h, ys = h0, []
    for t in range(xw.shape[0]):
        h = h * keep[t, :, None]
        xr, xz, xn = xw[t].chunk(3, -1)
        hr, hz, hn = torch.addmm(b_hh, h, w_hh.t()).chunk(3, -1)
        r = torch.sigmoid(xr + hr)
        z = torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        h = n + z * (h - n)
        ys.append(h)
    return torch.stack(ys), h


class _GRULayer(torch.autograd.Function):
    @staticmethod
    def forward(ctx, xw: Tensor, h0: Tensor, keep: Tensor, w_hh: Tensor, b_hh: Tensor):
        T, B, H3 = xw.shape
        H = H3 // 3
        # Steps where some env starts an episode (known on the host: one sync per call). Only
        # those pay for the mask; elsewhere the state flows through untouched.
        resets = set((keep.view(T, B) == 0).any(1).nonzero().flatten().tolist())
        ys = xw.new_empty(T, B, H)
        rz = xw.new_empty(T, B, 2 * H)
        n = xw.new_empty(T, B, H)
        gh = xw.new_empty(T, B, H3)  # hm W^T + b per step; its n part is needed for dr
        w_t = w_hh.t()
        h = h0
        for t in range(T):
            if t in resets:
                h = h * keep[t]
            torch.addmm(b_hh, h, w_t, out=gh[t])
            torch.add(xw[t, :, : 2 * H], gh[t, :, : 2 * H], out=rz[t]).sigmoid_()
            torch.addcmul(xw[t, :, 2 * H:], rz[t, :, :H], gh[t, :, 2 * H:], out=n[t]).tanh_()
            torch.lerp(n[t], h, rz[t, :, H:], out=ys[t])  # n + z * (hm - n)
            h = ys[t]
        ctx.resets = resets
        ctx.save_for_backward(h0, ys, rz, n, gh, keep, w_hh)
        return ys, ys[-1].clone()

    @staticmethod
    def backward(ctx, dys: Tensor, dhT: Tensor):
        h0, ys, rz, n, gh, keep, w_hh = ctx.saved_tensors
        T, B, H = ys.shape
        # The masked input state of every step, rebuilt in one op instead of saved per step.
        hm = torch.cat([h0[None], ys[:-1]]).mul_(keep)
        r, z = rz[..., :H], rz[..., H:]
        # Whole-sequence factors, one op each instead of one per step.
        dsig_r, dsig_z = r * (1 - r), z * (1 - z)
        one_minus_z = 1 - z
        dtanh_n = 1 - n * n
        h_minus_n = hm - n
        ghn = gh[..., 2 * H:]
        dgh = ys.new_empty(T, B, 3 * H)  # d(hm W^T + b): pre-activation grads, n part scaled by r
        dnp = ys.new_empty(T, B, H)  # d(n pre-activation) = the n part of d(xw)
        dh = dhT.clone() if dhT is not None else ys.new_zeros(B, H)
        for t in reversed(range(T)):
            if dys is not None:
                dh.add_(dys[t])
            dr_, dz_, dn_ = dgh[t, :, :H], dgh[t, :, H: 2 * H], dgh[t, :, 2 * H:]
            torch.mul(dh, h_minus_n[t], out=dz_).mul_(dsig_z[t])  # h = n + z * (hm - n)
            torch.mul(dh, one_minus_z[t], out=dnp[t]).mul_(dtanh_n[t])
            torch.mul(dnp[t], ghn[t], out=dr_).mul_(dsig_r[t])
            torch.mul(dnp[t], r[t], out=dn_)
            dh.mul_(z[t])  # the direct path hm -> h
            dh.addmm_(dgh[t], w_hh)  # the path through the recurrent product
            if t in ctx.resets:
                dh.mul_(keep[t])
        flat = dgh.view(T * B, 3 * H)
        dw_hh = flat.t() @ hm.view(T * B, H)
        db_hh = flat.sum(0)
        dxw = torch.cat([dgh[..., : 2 * H], dnp], -1)
        return dxw, dh, None, dw_hh, db_hh


def gru_layer(xw: Tensor, h0: Tensor, keep: Tensor, w_hh: Tensor, b_hh: Tensor) -> tuple[Tensor, Tensor]:
    """The same computation as ``gru_layer_ref`` (forward and gradients), hand-differentiated.
    keep: [T, B] float, 1 where the state carries over, 0 where an episode starts."""
    if xw.dim() != 3 or xw.shape[-1] != w_hh.shape[0] or w_hh.shape[0] != 3 * w_hh.shape[1]:
        raise ValueError(f"gru_layer: xw [T, B, 3H] and w_hh [3H, H] expected, got {tuple(xw.shape)} and {tuple(w_hh.shape)}")
    if keep.shape != xw.shape[:2] or h0.shape != (xw.shape[1], w_hh.shape[1]):
        raise ValueError(f"gru_layer: keep {tuple(keep.shape)} must be [T, B] and h0 {tuple(h0.shape)} [B, H] for xw {tuple(xw.shape)}")
    if not torch.is_grad_enabled() or not any(t.requires_grad for t in (xw, h0, w_hh, b_hh)):
        with torch.no_grad():
            ys, hT = _GRULayer.forward(_NoCtx(), xw, h0, keep[..., None], w_hh, b_hh)
        return ys, hT
    return _GRULayer.apply(xw.contiguous(), h0.contiguous(), keep[..., None].contiguous(), w_hh, b_hh)


class _NoCtx:
    """Stands in for autograd's ctx when no gradient is needed (acting): saves nothing."""

    resets: set

    def save_for_backward(self, *args) -> None:
        pass
