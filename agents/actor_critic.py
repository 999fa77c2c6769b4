"""The actor-critic: observation encoder -> memory backbone -> policy and value heads."""

from __future__ import annotations

import numpy as np
from gymnasium import spaces
from torch import Tensor, nn

from agents.encoders import make_encoder
from memory import Memory, State


def layer_init(layer: nn.Linear, std: float = np.sqrt(2), bias: float = 0.0) -> nn.Linear:
    """CleanRL's init: orthogonal weights with gain ``std``, constant bias."""
    nn.init.orthogonal_(layer.weight, std)
    nn.init.constant_(layer.bias, bias)
    return layer


class ActorCritic(nn.Module):
    """Encoder -> Linear+ReLU -> memory -> [Linear+ReLU head] -> (policy logits, value).

    head_size > 0 puts one hidden layer (shared by policy and value) after the memory. Tasks
    that compare what is remembered with what is seen now (MiniGrid Memory: "is the object in
    front the one I saw?") need a nonlinear function of memory output and current input; with
    linear heads (CleanRL's LSTM agent) a recurrent cell must compute that XOR inside its own
    gates in one step: on the CueMatch test task an lstm stays at chance with linear heads and
    solves it with a 64-unit head (tests/test_learning.py).

    ``step`` serves acting (one step of a batch of envs); ``forward_sequence`` serves learning
    (whole [T, B] sequences from a stored start state). Both run the same memory forward, so the
    update recomputes exactly what acting computed."""

    def __init__(self, obs_space: spaces.Space, num_actions: int, memory: Memory, head_size: int = 0):
        super().__init__()
        if head_size < 0:
            raise ValueError(f"head size must be >= 0 (0: linear heads), got {head_size}")
        self.encoder = make_encoder(obs_space)
        self.embed = nn.Sequential(layer_init(nn.Linear(self.encoder.size, memory.input_size)), nn.ReLU())
        self.memory = memory
        if head_size:
            self.head = nn.Sequential(layer_init(nn.Linear(memory.output_size, head_size)), nn.ReLU())
            width = head_size
        else:
            self.head = nn.Identity()
            width = memory.output_size
        self.actor = layer_init(nn.Linear(width, num_actions), std=0.01)
        self.critic = layer_init(nn.Linear(width, 1), std=1.0)

    def initial_state(self, batch_size: int, device=None) -> State:
        return self.memory.initial_state(batch_size, device)

    def _features(self, obs, lead: tuple[int, ...]) -> Tensor:
        flat = _flatten_obs(obs, len(lead))
        return self.embed(self.encoder(flat)).view(*lead, -1)

    def forward_sequence(self, obs, state: State, reset: Tensor) -> tuple[Tensor, Tensor, State]:
        """obs [T, B, ...], reset bool [T, B] -> logits [T, B, A], value [T, B], final state."""
        T, B = reset.shape
        y, state = self.memory(self._features(obs, (T, B)), state, reset)
        y = self.head(y)
        return self.actor(y), self.critic(y).squeeze(-1), state

    def step(self, obs, state: State, reset: Tensor) -> tuple[Tensor, Tensor, State]:
        """obs [B, ...], reset bool [B] -> logits [B, A], value [B], next state."""
        logits, value, state = self.forward_sequence(_unsqueeze_obs(obs), state, reset.unsqueeze(0))
        return logits[0], value[0], state


def _flatten_obs(obs, n_lead: int):
    if isinstance(obs, dict):
        return {k: _flatten_obs(v, n_lead) for k, v in obs.items()}
    return obs.reshape(-1, *obs.shape[n_lead:])


def _unsqueeze_obs(obs):
    if isinstance(obs, dict):
        return {k: v.unsqueeze(0) for k, v in obs.items()}
    return obs.unsqueeze(0)
