"""NoisyRecall: MAD's noisy in-context recall (multi-query variant) as a gymnasium environment.

The task (docs/design.md section 5, athms/mad-lab ``mad/data/instances.py``): with
ns = vocab_size - noise_vocab_size, keys are tokens [0, ns/2), values [ns/2, ns), noise
[ns, vocab_size). A sequence of seq_len tokens has S = seq_len/2 - 1 two-token slots and a final
probe pair. Each sequence draws its own key -> value mapping (each key's value uniform and
independent, so two keys may share a value). Each slot is a noise pair (two tokens uniform over
the noise vocabulary) with probability frac_noise, else a key-value pair (key uniform); one slot,
uniform over the S slots, is always a pair (MAD draws it among seq_len/2 indices while generating
only S slots, so about one sequence in seq_len/2 has no forced pair; we fix that). The probe key is uniform
over the distinct keys shown, followed by its value.

As RL: an episode is seq_len - 1 steps. Step t observes token t and its action predicts token
t + 1 (action j means value token ns/2 + j). Step t is scored where token t is a key already shown
earlier in the episode (every repeat, and the probe key on the last step): reward 1 for the right
value, else 0; unscored steps give 0 whatever the action. The last step returns the probe value as
its observation, terminates, and its info carries ``accuracy`` = correct / scored.

Randomness is counter-based: every random word of an episode is a hash of (env seed, episode
index, word index), so a sequence is a pure function of those three numbers. That is what lets the
vector env regenerate any batch of envs in a few tensor ops while env i of a vector env reset with
seed s draws exactly what a single env reset with seed s + i draws, episode after episode.

Both envs call the one generator, ``generate``; the vector env keeps whole episodes as [L, N]
tensors (time-major, so a step reads one contiguous row), and a step is an index and a compare.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, Sequence

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.error import ResetNeeded
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space
from torch import Tensor

ENV_ID = "memrl/NoisyRecall-v0"

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


class NoisyRecallEnv(gym.Env[np.int64, np.int64]):
    """One NoisyRecall env (for gymnasium.make and SyncVectorEnv); see the module docstring.

    Observations: Discrete(vocab_size), the current token. Actions: Discrete(ns/2), action j
    predicting value token ns/2 + j. reset(seed=s) starts episode 0 of seed s; reset() the next
    episode of the same seed (a fresh random seed if none was ever given).
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(
        self,
        vocab_size: int = 32,
        noise_vocab_size: int = 16,
        seq_len: int = 128,
        frac_noise: float = 0.2,
        render_mode: str | None = None,
    ) -> None:
        self.config = NoisyRecallConfig(vocab_size, noise_vocab_size, seq_len, frac_noise)
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or 'ansi', got {render_mode!r}")
        self.render_mode = render_mode
        self.observation_space = spaces.Discrete(self.config.vocab_size)
        self.action_space = spaces.Discrete(self.config.num_keys)
        self._seed_words = split_seed(fresh_seed())
        self._episode = -1  # reset() advances it
        self._tokens: np.ndarray | None = None  # [L]
        self._targets: np.ndarray | None = None  # [L-1]
        self._num_scored = 0
        self._t = 0
        self._correct = 0
        self._actions: list[int] = []

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.int64, dict[str, Any]]:
        if options:
            raise ValueError(f"NoisyRecallEnv.reset takes no options, got {sorted(options)}")
        seed_words = split_seed(seed) if seed is not None else None  # validates first
        super().reset(seed=seed)  # seeds self.np_random (unused by the task; gymnasium's checks)
        if seed_words is not None:
            self._seed_words = seed_words
            self._episode = 0
        else:
            self._episode += 1
        lo, hi = self._seed_words
        ep = generate(
            self.config,
            torch.tensor([lo], dtype=torch.int64),
            torch.tensor([hi], dtype=torch.int64),
            torch.tensor([self._episode], dtype=torch.int64),
        )
        self._tokens = ep.tokens[:, 0].numpy()
        self._targets = ep.targets[:, 0].numpy()
        self._num_scored = int(ep.num_scored[0])
        self._t = 0
        self._correct = 0
        self._actions = []
        return np.int64(self._tokens[0]), {}

    def step(self, action: Any) -> tuple[np.int64, float, bool, bool, dict[str, Any]]:
        if self._tokens is None or self._t == self.config.episode_length:
            raise ResetNeeded("NoisyRecallEnv: call reset() before step() (the episode ended)")
        if not self.action_space.contains(action):
            raise ValueError(
                f"action must be an int in [0, {self.config.num_keys}) (value token ns/2 + action),"
                f" got {action!r}"
            )
        action = int(action)
        hit = action == int(self._targets[self._t])  # unscored steps have target -1: never a hit
        self._correct += hit
        self._actions.append(action)
        self._t += 1
        terminated = self._t == self.config.episode_length
        info = {"accuracy": self._correct / self._num_scored} if terminated else {}
        return np.int64(self._tokens[self._t]), float(hit), terminated, False, info

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        cfg = self.config
        K, ns = cfg.num_keys, cfg.vocab_size - cfg.noise_vocab_size
        lines = [
            f"NoisyRecall seed-episode {self._episode}: keys k0-k{K - 1}, values v{K}-v{ns - 1}, "
            f"noise n{ns}-n{cfg.vocab_size - 1}; step {self._t}/{cfg.episode_length}, "
            f"correct {self._correct}"
        ]
        if self._tokens is None:
            return lines[0] + "\n(not reset)\n"
        lines.append("   t  token  prediction  target")
        for t, a in enumerate(self._actions):
            target = int(self._targets[t])
            mark = "" if target < 0 else f"  v{target + K} {'ok' if a == target else 'MISS'}"
            lines.append(f"{t:4d}  {_kind(int(self._tokens[t]), cfg):>5}  v{a + K:<10}{mark}")
        lines.append(f"{self._t:4d}  {_kind(int(self._tokens[self._t]), cfg):>5}  (current)")
        return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------
# Native vector env
# ----------------------------------------------------------------------------------------------


class NoisyRecallVectorEnv(VectorEnv):
    """num_envs NoisyRecall envs as batched torch tensors, with no per-env Python loop.

    Every episode lasts exactly seq_len - 1 steps and every reset resets all envs, so the envs
    stay in lockstep: one step counter, and at an episode end all envs regenerate in one batch.
    Autoreset is SAME_STEP: the step that ends an episode returns the next episode's first
    observation, with the probe value (the final observation) in info["final_obs"] and the
    episode's accuracy in info["accuracy"] and info["final_info"]["accuracy"] (masks "_final_obs",
    "_accuracy", "_final_info", gymnasium's convention). Other steps return an empty info.

    device=None returns numpy arrays (obs int64 [N], rewards float32 [N], bool flags); a device
    ("cpu", "cuda", ...) returns torch tensors on it (actions may be tensors or arrays). Actions
    out of [0, ns/2) raise a ValueError, except on a non-CPU device where checking would force
    a host sync: there an out-of-range action just never scores.
    """

    metadata = {"render_modes": [], "autoreset_mode": AutoresetMode.SAME_STEP}

    def __init__(
        self,
        num_envs: int = 1,
        vocab_size: int = 32,
        noise_vocab_size: int = 16,
        seq_len: int = 128,
        frac_noise: float = 0.2,
        device: str | torch.device | None = None,
        render_mode: str | None = None,
    ) -> None:
        self.config = NoisyRecallConfig(vocab_size, noise_vocab_size, seq_len, frac_noise)
        num_envs = _check_int("num_envs", num_envs)
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if render_mode is not None:
            raise ValueError(f"NoisyRecallVectorEnv has no render modes, got {render_mode!r}")
        self.num_envs = num_envs
        self.render_mode = None
        self.device = None if device is None else torch.device(device)
        self._torch_out = self.device is not None
        self._dev = self.device if self._torch_out else torch.device("cpu")  # where the core runs
        self._check_range = self._dev.type == "cpu"
        self.single_observation_space = spaces.Discrete(self.config.vocab_size)
        self.single_action_space = spaces.Discrete(self.config.num_keys)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)

        base_lo, base_hi = split_seed(fresh_seed())
        self._seed_lo, self._seed_hi = self._seed_range(base_lo, base_hi)  # [N], [N]
        self._episode = torch.full((num_envs,), -1, dtype=torch.int64, device=self._dev)
        self._tokens: Tensor | None = None  # [L, N]
        self._targets: Tensor | None = None  # [L-1, N]
        self._num_scored: Tensor | None = None  # [N]
        # Correct predictions this episode [N], float32 like the rewards it sums (exact to 2^24).
        self._correct = torch.zeros(num_envs, dtype=torch.float32, device=self._dev)
        self._gen_chunk = 1024 if self._dev.type == "cpu" else num_envs
        self._t = 0
        # numpy mode steps on numpy views of the CPU tensors: same values, a fraction of
        # torch's per-op overhead on these small arrays (the hot path is ~5 ops).
        self._tokens_np: np.ndarray | None = None
        self._targets_np: np.ndarray | None = None
        self._correct_np = self._correct.numpy() if not self._torch_out else None

    # -- pickling (train.py checkpoints the env) -------------------------------------------------

    def __getstate__(self) -> dict:
        # The numpy arrays are views of the tensors; pickled separately they would become copies
        # that no longer see the tensors' in-place updates. Drop them and re-derive on load.
        state = self.__dict__.copy()
        for k in ("_tokens_np", "_targets_np", "_correct_np"):
            state[k] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if not self._torch_out:
            self._correct_np = self._correct.numpy()
            if self._tokens is not None:
                self._tokens_np, self._targets_np = self._tokens.numpy(), self._targets.numpy()

    # -- seeding -------------------------------------------------------------------------------

    def _seed_range(self, lo: int, hi: int) -> tuple[Tensor, Tensor]:
        """The 64-bit seeds (lo, hi) + i for i in [0, N), as their 32-bit words [N], [N]."""
        i = torch.arange(self.num_envs, dtype=torch.int64, device=self._dev)
        low = lo + i
        return low & _MASK32, (hi + (low >> 32)) & _MASK32

    def _apply_seed(self, seed: int | Sequence[int | None] | None) -> None:
        if seed is None:
            self._episode += 1
            return
        if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
            self._seed_lo, self._seed_hi = self._seed_range(*split_seed(seed))
            self._episode.zero_()
            return
        if not isinstance(seed, (list, tuple)) or len(seed) != self.num_envs:
            raise ValueError(
                f"seed must be None, an int, or a list of {self.num_envs} ints/None, got {seed!r}"
            )
        # One seed per env; None continues that env's seed with its next episode (as the single
        # env's reset() does). Built on the host once per reset: not a hot path.
        given = [s is not None for s in seed]
        words = [split_seed(s) if s is not None else (0, 0) for s in seed]
        given_t = torch.tensor(given, device=self._dev)
        lo = torch.tensor([w[0] for w in words], dtype=torch.int64, device=self._dev)
        hi = torch.tensor([w[1] for w in words], dtype=torch.int64, device=self._dev)
        self._seed_lo = torch.where(given_t, lo, self._seed_lo)
        self._seed_hi = torch.where(given_t, hi, self._seed_hi)
        self._episode = torch.where(given_t, 0, self._episode + 1)

    def _regenerate(self) -> None:
        n, chunk = self.num_envs, self._gen_chunk
        if n <= chunk:
            ep = generate(self.config, self._seed_lo, self._seed_hi, self._episode)
        else:
            # On CPU, batches of ~1k envs keep generate's [W, M] intermediates in cache: at 16k
            # envs this ran ~1.5x faster than one batch (one measurement on the shared 2-core CPU).
            # Sequences do not depend on the batching.
            names = (self._seed_lo, self._seed_hi, self._episode)
            parts = [
                generate(self.config, *(x[i : i + chunk] for x in names)) for i in range(0, n, chunk)
            ]
            ep = Episodes(*(torch.cat(p, dim=-1) for p in zip(*parts)))
        self._tokens, self._targets, self._num_scored = ep
        self._correct.zero_()
        self._t = 0
        if not self._torch_out:
            self._tokens_np = self._tokens.numpy()
            self._targets_np = self._targets.numpy()

    # -- API -----------------------------------------------------------------------------------

    def reset(
        self,
        *,
        seed: int | Sequence[int | None] | None = None,
        options: dict[str, Any] | None = None,
    ) -> tuple[Any, dict[str, Any]]:
        if options:
            raise ValueError(
                "NoisyRecallVectorEnv.reset takes no options (all envs always reset together, "
                f"every episode lasting seq_len - 1 steps), got {sorted(options)}"
            )
        self._apply_seed(seed)
        self._regenerate()
        obs = self._tokens[0].clone()  # [N]
        return (obs if self._torch_out else obs.numpy()), {}

    def step(self, actions: Any) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        if self._tokens is None:
            raise ResetNeeded("NoisyRecallVectorEnv: call reset() before step()")
        if self._torch_out:
            return self._step_torch(actions)
        return self._step_numpy(actions)

    def _bad_actions(self, actions: Any) -> ValueError:
        return ValueError(
            f"actions must be integers in [0, {self.config.num_keys}) with shape ({self.num_envs},),"
            f" got {actions!r}"
        )

    def _step_numpy(self, actions: Any) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        a = np.asarray(actions)  # [N]
        if a.shape != (self.num_envs,) or a.dtype.kind not in "iu":
            raise self._bad_actions(actions)
        if a.min() < 0 or a.max() >= self.config.num_keys:
            raise self._bad_actions(actions)
        t = self._t
        hit = a == self._targets_np[t]  # [N] bool; unscored targets are -1, never hit
        reward = hit.astype(np.float32)
        self._correct_np += reward
        t += 1
        self._t = t
        obs = self._tokens_np[t].copy()  # [N]; a copy: the buffer is reused
        truncated = np.zeros(self.num_envs, dtype=np.bool_)
        if t < self.config.episode_length:
            return obs, reward, np.zeros(self.num_envs, dtype=np.bool_), truncated, {}
        accuracy = self._correct_np / self._num_scored.numpy()  # float64, as SyncVectorEnv's
        self._episode += 1
        self._regenerate()
        everyone = np.ones(self.num_envs, dtype=np.bool_)
        info = self._final_info(obs, accuracy, lambda: everyone.copy())
        return self._tokens_np[0].copy(), reward, everyone, truncated, info

    def _step_torch(self, actions: Any) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        if isinstance(actions, Tensor):
            a = actions.to(self._dev, non_blocking=True)
        else:
            a = torch.as_tensor(np.asarray(actions), device=self._dev)
        if a.shape != (self.num_envs,) or a.dtype.is_floating_point or a.dtype == torch.bool:
            raise self._bad_actions(actions)
        if self._check_range:
            lo, hi = torch.aminmax(a)
            if lo.item() < 0 or hi.item() >= self.config.num_keys:
                raise self._bad_actions(actions)
        t = self._t
        hit = a == self._targets[t]  # [N] bool; unscored targets are -1, never hit
        reward = hit.to(torch.float32)
        self._correct += reward
        t += 1
        self._t = t
        obs = self._tokens[t].clone()  # [N]
        n, dev = self.num_envs, self._dev
        truncated = torch.zeros(n, dtype=torch.bool, device=dev)
        if t < self.config.episode_length:
            return obs, reward, torch.zeros(n, dtype=torch.bool, device=dev), truncated, {}
        accuracy = self._correct / self._num_scored
        self._episode += 1
        self._regenerate()
        everyone = torch.ones(n, dtype=torch.bool, device=dev)
        info = self._final_info(obs, accuracy, lambda: everyone.clone())
        return self._tokens[0].clone(), reward, everyone, truncated, info

    @staticmethod
    def _final_info(final_obs: Any, accuracy: Any, mask: Any) -> dict[str, Any]:
        """The info of the step that ends every env's episode: gymnasium's SAME_STEP layout
        (final_obs, final_info) plus accuracy at the top level. Fresh mask objects each."""
        return {
            "final_obs": final_obs,
            "_final_obs": mask(),
            "final_info": {"accuracy": accuracy, "_accuracy": mask()},
            "_final_info": mask(),
            "accuracy": accuracy.copy() if isinstance(accuracy, np.ndarray) else accuracy.clone(),
            "_accuracy": mask(),
        }

    def __repr__(self) -> str:
        c = self.config
        return (
            f"NoisyRecallVectorEnv(num_envs={self.num_envs}, vocab_size={c.vocab_size}, "
            f"noise_vocab_size={c.noise_vocab_size}, seq_len={c.seq_len}, "
            f"frac_noise={c.frac_noise}, device={self.device})"
        )


# ----------------------------------------------------------------------------------------------
# Registration
# ----------------------------------------------------------------------------------------------


def register_envs() -> None:
    """Register ``memrl/NoisyRecall-v0`` with gymnasium (idempotent)."""
    if ENV_ID in gym.envs.registry:
        return
    gym.register(
        id=ENV_ID,
        entry_point="envs.noisy_recall:NoisyRecallEnv",
        vector_entry_point="envs.noisy_recall:NoisyRecallVectorEnv",
    )
