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

from typing import Any, Sequence

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.error import ResetNeeded
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space
from torch import Tensor

from envs.recall_sequences import (  # noqa: F401  (Episodes and generate re-exported: the task's generator)
    _MASK32, Episodes, NoisyRecallConfig, _check_int, _kind, fresh_seed, generate, split_seed,
)

ENV_ID = "memrl/NoisyRecall-v0"



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
