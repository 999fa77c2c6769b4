"""Depthwise causal convolution over time with episode resets (docs/design.md section 6).

mlstm (xLSTM's conv in front of q and k) and ssm (Mamba's conv in front of the scan) both run a
short depthwise conv over the last K inputs. Under resets a lag that reaches before the episode's
first step must contribute nothing, and the K-1 inputs carried to the next call must be zeroed
where they precede the last episode start, so a rollout cut into chunks gives the same outputs
as one call. Reference: ``memory.ops.reference.causal_conv_ref`` (one step at a time).
"""

from __future__ import annotations

import torch
from torch import Tensor


def causal_conv(u: Tensor, hist: Tensor, reset: Tensor, weight: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
    """Depthwise causal conv of u [T, B, D] with the K-1 carried inputs hist [B, K-1, D]; weight
    [D, K] (weight[:, K-1] multiplies the current step, as nn.Conv1d's cross-correlation does),
    bias [D], reset [T, B] (True: step t starts an episode). A lag reaching before the episode's
    first step contributes nothing. Returns out [T, B, D] and the new history (the last K-1
    inputs, zeroed where they precede the last episode start). No activation is applied."""
    K, T = weight.shape[1], u.shape[0]
    us = torch.cat([hist.transpose(0, 1), u], 0)  # [K-1+T, B, D]; us[t + K-1] = u[t]
    idx = torch.arange(T, device=u.device)
    # First step of the episode step t belongs to (-K: it started before this call, every lag valid).
    start = torch.where(reset, idx[:, None], torch.full_like(idx[:, None], -K)).cummax(0).values  # [T, B]
    since = (idx[:, None] - start).unsqueeze(-1)  # [T, B, 1] steps since the episode start
    out = bias + us[K - 1 :] * weight[:, K - 1]
    for lag in range(1, K):
        out = out + us[K - 1 - lag : K - 1 - lag + T] * (since >= lag).to(u.dtype) * weight[:, K - 1 - lag]
    tau = torch.arange(T - K + 1, T, device=u.device)[:, None]  # [K-1, 1] positions of the kept inputs
    new_hist = us[T:] * (tau >= start[-1]).unsqueeze(-1).to(u.dtype)  # [K-1, B, D]
    return out, new_hist.transpose(0, 1)
