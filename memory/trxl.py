"""Transformer-XL-style memory: causal attention over a sliding window of the last W steps, with
the cached keys and values of the previous W-1 steps as the recurrent state (Dai, Yang, Yang,
Carbonell, Le, Salakhutdinov, "Transformer-XL: Attentive Language Models Beyond a Fixed-Length
Context", ACL 2019; as used for memory in RL by e.g. Parisotto et al. 2020).

One pre-norm transformer block over the input projected to hidden size E, H heads of size dh:

    h_t   = W_in x_t
    q, k, v = W_q LN_1(h_t), W_k LN_1(h_t), W_v LN_1(h_t)
    a_t   = h_t + W_o concat_heads( softmax_{s in window(t)} (q_t . k_s / sqrt(dh) + b[t - s]) v_s )
    y_t   = a_t + MLP(LN_2(a_t))                      # MLP: E -> 2E -> E, GELU

window(t) = the steps s with t - W < s <= t of the same episode as t (steps before the current
episode's start are masked out exactly, never attended with a large negative constant). b[d] is
a learned bias per head and distance d = 0..W-1 (relative positions, as Transformer-XL's
relative encoding intends; here a table rather than its sinusoid-based terms). Keys and values
of steps before the call come from the cache, so a sequence of T steps equals T single steps.
Attention over a call is computed in query chunks of W steps (each against its W-1+W keys), so
memory grows with T * W, not T^2.

State: (k [B, W-1, E], v [B, W-1, E], valid [B, W-1]): the last W-1 steps' keys and values,
oldest first, and 1.0 where that step belongs to the current episode (entries of earlier
episodes, or before the first step, are 0 and zeroed, so a fresh state is all zeros).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from memory.base import Memory, State, check_inputs, check_state
from memory.registry import register


class TrXL(Memory):
    """One transformer block with sliding-window attention over cached keys and values."""

    def __init__(self, input_size: int, hidden_size: int, num_heads: int = 4, window: int = 32):
        super().__init__()
        if num_heads < 1 or hidden_size % num_heads:
            raise ValueError(f"trxl: num_heads must be >= 1 and divide hidden_size {hidden_size}, got {num_heads}")
        if window < 2:
            raise ValueError(f"trxl: window must be >= 2 (the current step and at least one before), got {window}")
        self.input_size, self.output_size = input_size, hidden_size
        self.num_heads, self.window, self.head_dim = num_heads, window, hidden_size // num_heads
        E = hidden_size
        self.inp = nn.Linear(input_size, E)
        self.norm1 = nn.LayerNorm(E)
        self.qkv = nn.Linear(E, 3 * E)
        self.rel_bias = nn.Parameter(torch.zeros(num_heads, window))  # b[head, distance]
        self.proj = nn.Linear(E, E)
        self.norm2 = nn.LayerNorm(E)
        self.mlp = nn.Sequential(nn.Linear(E, 2 * E), nn.GELU(), nn.Linear(2 * E, E))

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        W, E = self.window, self.output_size
        return (
            torch.zeros(batch_size, W - 1, E, device=device),
            torch.zeros(batch_size, W - 1, E, device=device),
            torch.zeros(batch_size, W - 1, device=device),
        )

    def _check_state(self, state: State, B: int) -> None:
        W, E = self.window, self.output_size
        want = [(B, W - 1, E), (B, W - 1, E), (B, W - 1)]
        check_state("trxl", state, want, "k, v, valid")

    def forward(self, x: Tensor, state: State, reset: Tensor) -> tuple[Tensor, State]:
        check_inputs(self, x, reset)
        T, B, _ = x.shape
        self._check_state(state, B)
        if T == 0:
            return x.new_zeros(0, B, self.output_size), state
        W, H, dh, E = self.window, self.num_heads, self.head_dim, self.output_size
        k_cache, v_cache, valid = state
        h = self.inp(x)  # [T, B, E]
        q, k, v = self.qkv(self.norm1(h)).chunk(3, -1)  # [T, B, E] each
        # Keys of the cache and of this call, oldest first: position j = W-1 + t is step t.
        k_all = torch.cat([k_cache, k.transpose(0, 1)], 1).view(B, W - 1 + T, H, dh).transpose(1, 2)
        v_all = torch.cat([v_cache, v.transpose(0, 1)], 1).view(B, W - 1 + T, H, dh).transpose(1, 2)
        q = q.transpose(0, 1).reshape(B, T, H, dh).transpose(1, 2) * dh**-0.5  # [B, H, T, dh]
        # Episode segment of every key and query: cache entries are segment 0 (valid or not),
        # step t of the call is the number of resets in steps 0..t.
        seg = reset.transpose(0, 1).long().cumsum(1)  # [B, T]
        seg_all = torch.cat([torch.zeros(B, W - 1, dtype=seg.dtype, device=seg.device), seg], 1)
        ok_all = torch.cat([valid > 0, torch.ones(B, T, dtype=torch.bool, device=x.device)], 1)
        outs = []
        for t0 in range(0, T, W):
            t1 = min(T, t0 + W)
            Q, nk = t1 - t0, t1 - t0 + W - 1
            keys = slice(t0, t0 + nk)  # key positions t0 .. t1-1 + W-1
            dist = (torch.arange(Q, device=x.device)[:, None] + W - 1) - torch.arange(nk, device=x.device)[None, :]
            in_window = (dist >= 0) & (dist < W)  # [Q, nk]
            same = seg[:, t0:t1, None] == seg_all[:, None, keys]  # [B, Q, nk]
            mask = in_window & same & ok_all[:, None, keys]
            scores = q[:, :, t0:t1] @ k_all[:, :, keys].transpose(-1, -2)  # [B, H, Q, nk]
            scores = scores + self.rel_bias[:, dist.clamp(0, W - 1)]  # b[head, t - s]
            scores = torch.where(mask[:, None], scores, float("-inf"))  # the step itself is always allowed
            outs.append(torch.softmax(scores, -1) @ v_all[:, :, keys])  # [B, H, Q, dh]
        att = torch.cat(outs, 2).transpose(1, 2).reshape(B, T, E).transpose(0, 1)  # [T, B, E]
        a = h + self.proj(att)
        y = a + self.mlp(self.norm2(a))
        # New cache: the last W-1 positions; valid where in the episode of the call's last step.
        keep_valid = (ok_all & (seg_all == seg[:, -1:]))[:, -(W - 1):].to(valid.dtype)  # [B, W-1]
        k_new = torch.cat([k_cache, k.transpose(0, 1)], 1)[:, -(W - 1):] * keep_valid[..., None]
        v_new = torch.cat([v_cache, v.transpose(0, 1)], 1)[:, -(W - 1):] * keep_valid[..., None]
        return y, (k_new, v_new, keep_valid)


@register("trxl", test_variants=[{"window": 2}, {"window": 5, "num_heads": 2}])
def make_trxl(input_size: int, hidden_size: int, num_heads: int = 4, window: int = 32) -> Memory:
    """Transformer-XL-style memory: attention over the last `window` steps, cached keys/values as state.

    num_heads: attention heads (dividing hidden_size). window: steps attended, the current one
    included (the state caches the previous window - 1)."""
    return TrXL(input_size, hidden_size, num_heads, window)

