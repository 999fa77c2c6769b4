"""The NoisyRecall task's sequences, as pure tensor functions (the gymnasium envs are in
envs/noisy_recall.py, which documents the task and the RL framing).

Randomness is counter-based: every random word of an episode is a hash of (env seed, episode index,
word index), so a sequence is a pure function of those three numbers, and ``generate`` can build any
batch of episodes in a few tensor ops.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

# ----------------------------------------------------------------------------------------------
# Counter-based random words
# ----------------------------------------------------------------------------------------------

_MASK32 = 0xFFFFFFFF
# Chris Wellons' "lowbias32" integer hash (a bijection of 32-bit words with good avalanche). Words
# live in int64 tensors in [0, 2^32); the second multiplier is > 2^31, so we multiply by it minus
# 2^32 (equal mod 2^32): every product then stays inside int64 with no signed overflow, and the
# mask takes the low 32 bits (two's complement makes that right for negative products too).
_MUL1 = 0x7FEB352D
_MUL2 = 0x846CA68B - (1 << 32)
# Domain-separation constants (hex digits of pi) so the two key chains below differ.
_SALT_A = 0x243F6A88
_SALT_B = 0x85A308D3
_SALT_J = 0x13198A2E


def hash32_(x: Tensor, scratch: Tensor | None = None) -> Tensor:
    """lowbias32, in place, on an int64 tensor holding 32-bit words; returns x. ``scratch`` (same
    shape) takes the shifted copies: on big tensors, fresh allocations cost more than the math."""
    tmp = torch.empty_like(x) if scratch is None else scratch
    x ^= torch.bitwise_right_shift(x, 16, out=tmp)
    x.mul_(_MUL1).bitwise_and_(_MASK32)
    x ^= torch.bitwise_right_shift(x, 15, out=tmp)
    x.mul_(_MUL2).bitwise_and_(_MASK32)
    x ^= torch.bitwise_right_shift(x, 16, out=tmp)
    return x


def hash32(x: Tensor) -> Tensor:
    """lowbias32 of a tensor of 32-bit words (in int64), as a new tensor."""
    return hash32_(x.clone())


def episode_keys(seed_lo: Tensor, seed_hi: Tensor, episode: Tensor) -> tuple[Tensor, Tensor]:
    """Two 32-bit keys per (64-bit seed, episode index), from two hash chains that read the
    inputs in different orders, so an episode's stream is named by 64 bits, not 32."""
    ep_lo, ep_hi = episode & _MASK32, (episode >> 32) & _MASK32
    k1 = hash32(hash32(hash32(hash32(seed_lo ^ _SALT_A) ^ seed_hi) ^ ep_lo) ^ ep_hi)
    k2 = hash32(hash32(hash32(hash32(seed_hi ^ _SALT_B) ^ seed_lo) ^ ep_hi) ^ ep_lo)
    return k1, k2


def random_words(seed_lo: Tensor, seed_hi: Tensor, episode: Tensor, num_words: int) -> Tensor:
    """Uniform 32-bit words [num_words, M] (int64 in [0, 2^32)) for M (seed, episode) pairs.

    Word j of an episode is hash(((hash(j) ^ k1) + k2) mod 2^32): a pure function of (seed,
    episode, j), so any subset of envs is regenerated in one batch with no per-env generator
    state. One hash round per word (the cost of generation); the hash is a bijection, so two
    episodes share a word only where their inputs coincide, and the whole stream of an episode
    repeats only if its 64-bit key (k1, k2) does.
    """
    k1, k2 = episode_keys(seed_lo, seed_hi, episode)  # [M], [M]
    j = torch.arange(num_words, dtype=torch.int64, device=seed_lo.device)
    hj = hash32(j ^ _SALT_J)[:, None]  # [W, 1]
    x = hj ^ k1  # [W, M]
    x += k2
    return hash32_(x.bitwise_and_(_MASK32))  # [W, M]


def uniform_below(u: Tensor, n: int | Tensor) -> Tensor:
    """Integers in [0, n) from 32-bit words u by multiply-shift (bias < n / 2^32; n < 2^31, so the
    product fits in int64)."""
    return (u * n) >> 32


def split_seed(seed: int) -> tuple[int, int]:
    """A non-negative int seed (taken mod 2^64) as its low and high 32-bit words."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be a non-negative int or None, got {seed!r}")
    seed = int(seed)
    if seed < 0:
        raise ValueError(f"seed must be a non-negative int or None, got {seed}")
    seed &= (1 << 64) - 1
    return seed & _MASK32, seed >> 32


def fresh_seed() -> int:
    """A random 64-bit seed from OS entropy (what reset(seed=None) uses before any seed)."""
    lo, hi = np.random.SeedSequence().generate_state(2, dtype=np.uint32)
    return int(lo) | (int(hi) << 32)


# ----------------------------------------------------------------------------------------------
# The task and its generator
# ----------------------------------------------------------------------------------------------


def _check_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an int, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class NoisyRecallConfig:
    """The task parameters (MAD's names and defaults), validated on construction."""

    vocab_size: int = 32
    noise_vocab_size: int = 16
    seq_len: int = 128
    frac_noise: float = 0.2

    def __post_init__(self) -> None:
        vocab = _check_int("vocab_size", self.vocab_size)
        noise = _check_int("noise_vocab_size", self.noise_vocab_size)
        seq_len = _check_int("seq_len", self.seq_len)
        if noise < 0:
            raise ValueError(f"noise_vocab_size must be >= 0, got {noise}")
        ns = vocab - noise
        if ns < 2 or ns % 2:
            raise ValueError(
                "vocab_size - noise_vocab_size (keys + values) must be even and >= 2, got "
                f"{vocab} - {noise} = {ns}"
            )
        if seq_len < 4 or seq_len % 2:
            raise ValueError(f"seq_len must be even and >= 4, got {seq_len}")
        if max(vocab, seq_len) >= 2**31:  # uniform_below's products must fit in int64
            raise ValueError(f"vocab_size and seq_len must be < 2^31, got {vocab} and {seq_len}")
        if isinstance(self.frac_noise, bool) or not isinstance(self.frac_noise, (int, float)):
            raise ValueError(f"frac_noise must be a float in [0, 1), got {self.frac_noise!r}")
        frac = float(self.frac_noise)
        if not (0.0 <= frac < 1.0):  # also rejects NaN
            raise ValueError(f"frac_noise must be in [0, 1), got {self.frac_noise}")
        if frac > 0 and noise == 0:
            raise ValueError("noise_vocab_size must be > 0 when frac_noise > 0, got 0")
        # Normalize numpy scalars to Python numbers (the dataclass is frozen).
        object.__setattr__(self, "vocab_size", vocab)
        object.__setattr__(self, "noise_vocab_size", noise)
        object.__setattr__(self, "seq_len", seq_len)
        object.__setattr__(self, "frac_noise", frac)

    @property
    def num_keys(self) -> int:
        """ns/2: the number of keys, of values, and of actions."""
        return (self.vocab_size - self.noise_vocab_size) // 2

    @property
    def num_slots(self) -> int:
        """S = seq_len/2 - 1 two-token slots before the probe pair."""
        return self.seq_len // 2 - 1

    @property
    def episode_length(self) -> int:
        return self.seq_len - 1

    @property
    def noise_threshold(self) -> int:
        """A slot is noise where its 32-bit word is below this: P = frac_noise within 2^-32."""
        return int(self.frac_noise * 2**32)

    @property
    def num_words(self) -> int:
        # Per episode: S noise draws, S keys (or first noise tokens), S second noise tokens, the
        # mapping (one word per key), the forced pair slot, the probe choice.
        return 3 * self.num_slots + self.num_keys + 2


class Episodes(NamedTuple):
    """M whole episodes, time-major."""

    tokens: Tensor  # [L, M] int64: the sequences; step t observes tokens[t]
    targets: Tensor  # [L-1, M] int64: the right action at step t where scored, else -1
    num_scored: Tensor  # [M] int64: scored steps per episode (>= 1: the probe)


def generate(cfg: NoisyRecallConfig, seed_lo: Tensor, seed_hi: Tensor, episode: Tensor) -> Episodes:
    """The episodes named by (seed_lo [M], seed_hi [M], episode [M]), all on their device.

    The one definition of the task: both envs call it.
    """
    S, K, L = cfg.num_slots, cfg.num_keys, cfg.seq_len
    ns = cfg.vocab_size - cfg.noise_vocab_size
    M = seed_lo.shape[0]
    device = seed_lo.device
    u = random_words(seed_lo, seed_hi, episode, cfg.num_words)  # [W, M]
    u_noise, u_first, u_second = u[:S], u[S : 2 * S], u[2 * S : 3 * S]  # [S, M] each
    u_map = u[3 * S : 3 * S + K]  # [K, M]
    u_forced, u_probe = u[3 * S + K], u[3 * S + K + 1]  # [M], [M]

    slot = torch.arange(S, device=device)[:, None]  # [S, 1]
    forced = uniform_below(u_forced, S)  # [M]: this slot is a pair whatever its noise draw
    is_noise = (u_noise < cfg.noise_threshold) & (slot != forced)  # [S, M]
    keys = uniform_below(u_first, K)  # [S, M] in [0, K)
    mapping = K + uniform_below(u_map, K)  # [K, M]: value token of each key
    values = mapping.gather(0, keys)  # [S, M]
    if cfg.noise_vocab_size > 0:
        first = torch.where(is_noise, ns + uniform_below(u_first, cfg.noise_vocab_size), keys)
        second = torch.where(is_noise, ns + uniform_below(u_second, cfg.noise_vocab_size), values)
    else:  # frac_noise == 0 (validated), so no slot is noise
        first, second = keys, values

    # The first pair slot of each key: scatter-min of slot indices, noise slots sent to a spare
    # row K. A pair slot is a repeat (its key step is scored) iff its key showed up earlier.
    key_or_spare = keys.masked_fill(is_noise, K)  # [S, M]
    first_slot = torch.full((K + 1, M), S, dtype=torch.int64, device=device)
    first_slot.scatter_reduce_(0, key_or_spare, slot.expand(S, M), reduce="amin")  # [K+1, M]
    repeat = ~is_noise & (first_slot.gather(0, keys) < slot)  # [S, M]

    # Probe: the r-th (0-based) distinct key shown, r uniform over their count (>= 1: the forced
    # pair). The r-th True of `shown` is where the running count first exceeds r.
    shown = first_slot[:K] < S  # [K, M]
    r = uniform_below(u_probe, shown.sum(0))  # [M]
    probe = (shown.cumsum(0) <= r).sum(0)  # [M]
    probe_value = mapping.gather(0, probe[None])[0]  # [M]

    tokens = torch.empty((L, M), dtype=torch.int64, device=device)
    tokens[0 : 2 * S : 2] = first
    tokens[1 : 2 * S : 2] = second
    tokens[2 * S] = probe
    tokens[2 * S + 1] = probe_value
    targets = torch.full((L - 1, M), -1, dtype=torch.int64, device=device)
    targets[0 : 2 * S : 2] = (values - K).masked_fill_(~repeat, -1)
    targets[2 * S] = probe_value - K
    num_scored = repeat.sum(0) + 1
    return Episodes(tokens, targets, num_scored)


def _kind(token: int, cfg: NoisyRecallConfig) -> str:
    K, ns = cfg.num_keys, cfg.vocab_size - cfg.noise_vocab_size
    return f"k{token}" if token < K else (f"v{token}" if token < ns else f"n{token}")


# ----------------------------------------------------------------------------------------------
# Single env
# ----------------------------------------------------------------------------------------------
