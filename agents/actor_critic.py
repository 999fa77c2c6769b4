"""The actor-critic: observation encoder -> memory backbone -> policy and value heads, and the
policy's action distribution (agents.distributions), which it owns as CleanRL's Agent owns its
Categorical: rollouts and the PPO loss go through ``agent.dist`` and assume no action space."""

from __future__ import annotations

import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor, nn

from agents.distributions import ActionDistribution, make_distribution
from agents.encoders import make_encoder
from agents.nested import tree_map
from memory import Memory, State


def layer_init(layer: nn.Linear, std: float = np.sqrt(2), bias: float = 0.0) -> nn.Linear:
    """CleanRL's init: orthogonal weights with gain ``std``, constant bias."""
    nn.init.orthogonal_(layer.weight, std)
    nn.init.constant_(layer.bias, bias)
    return layer


class ActorCritic(nn.Module):
    """Encoder -> Linear+ReLU -> memory -> [Linear+ReLU head] -> (policy parameters, value).

    ``action_space`` is a gymnasium space (Discrete, MultiDiscrete or Box; an int n means
    Discrete(n)); ``self.dist`` is its distribution, and the actor's output layer is as wide as
    that distribution's parameters (logits, or a Gaussian's mean).

    head_size > 0 puts one hidden layer (shared by policy and value) after the memory. Tasks
    that compare what is remembered with what is seen now (MiniGrid Memory: "is the object in
    front the one I saw?") need a nonlinear function of memory output and current input; with
    linear heads (CleanRL's LSTM agent) a recurrent cell must compute that XOR inside its own
    gates in one step: on the CueMatch test task an lstm stays at chance with linear heads and
    solves it with a 64-unit head (tests/test_learning.py).

    branch_size > 0 gives the policy and the value each their own hidden layer (Linear+ReLU) after
    that; relu_memory puts a ReLU on the memory output; actor_init_gain scales the orthogonal init
    of the policy's output layer (CleanRL: 0.01, a near-uniform first policy). Together they give
    the architecture of the public recurrent PPO baseline of docs/design.md section 8 (memory -> ReLU -> 512
    -> two 512 branches, output gain sqrt(2)); see the README's MiniGrid section.

    ``step`` serves acting (one step of a batch of envs); ``forward_sequence`` serves learning
    (whole [T, B] sequences from a stored start state). Both run the same memory forward, so the
    update recomputes exactly what acting computed."""

    def __init__(
        self, obs_space: spaces.Space, action_space: spaces.Space | int, memory: Memory, head_size: int = 0,
        branch_size: int = 0, relu_memory: bool = False, actor_init_gain: float = 0.01,
        obs_encoder: str = "auto",
    ):
        super().__init__()
        if head_size < 0:
            raise ValueError(f"head size must be >= 0 (0: linear heads), got {head_size}")
        if branch_size < 0:
            raise ValueError(f"branch size must be >= 0 (0: no branch layers), got {branch_size}")
        if not actor_init_gain > 0:
            raise ValueError(f"actor init gain must be > 0, got {actor_init_gain}")
        if isinstance(action_space, int):
            action_space = spaces.Discrete(action_space)
        dist = make_distribution(action_space)
        self.encoder = make_encoder(obs_space, obs_encoder)
        self.embed = nn.Sequential(layer_init(nn.Linear(self.encoder.size, memory.input_size)), nn.ReLU())
        self.memory = memory
        if head_size:
            self.head = nn.Sequential(layer_init(nn.Linear(memory.output_size, head_size)), nn.ReLU())
            width = head_size
        else:
            self.head = nn.Identity()
            width = memory.output_size
        self.relu_memory = relu_memory
        self.actor = _branch(width, branch_size, dist.param_size, actor_init_gain)
        self.critic = _branch(width, branch_size, 1, 1.0)
        self.dist: ActionDistribution = dist

    def initial_state(self, batch_size: int, device=None) -> State:
        return self.memory.initial_state(batch_size, device)

    def _features(self, obs, lead: tuple[int, ...]) -> Tensor:
        flat = _flatten_obs(obs, len(lead))
        return self.embed(self.encoder(flat)).view(*lead, -1)

    def forward_sequence(self, obs, state: State, reset: Tensor) -> tuple[Tensor, Tensor, State]:
        """obs [T, B, ...], reset bool [T, B] -> policy parameters [T, B, P], value [T, B], final state."""
        T, B = reset.shape
        y, state = self.memory(self._features(obs, (T, B)), state, reset)
        y = self.head_features(y)
        return self.actor(y), self.critic(y).squeeze(-1), state

    def head_features(self, y: Tensor) -> Tensor:
        """Memory output -> what the policy and value layers read."""
        return self.head(torch.relu(y) if self.relu_memory else y)

    def step(self, obs, state: State, reset: Tensor) -> tuple[Tensor, Tensor, State]:
        """obs [B, ...], reset bool [B] -> policy parameters [B, P], value [B], next state."""
        params, value, state = self.forward_sequence(_unsqueeze_obs(obs), state, reset.unsqueeze(0))
        return params[0], value[0], state


def _branch(width: int, branch_size: int, out: int, gain: float) -> nn.Module:
    """[Linear(width, branch_size) + ReLU ->] Linear(., out) with output init gain ``gain``."""
    if not branch_size:
        return layer_init(nn.Linear(width, out), std=gain)
    return nn.Sequential(layer_init(nn.Linear(width, branch_size)), nn.ReLU(), layer_init(nn.Linear(branch_size, out), std=gain))


def _flatten_obs(obs, n_lead: int):
    return tree_map(lambda o: o.reshape(-1, *o.shape[n_lead:]), obs)


def _unsqueeze_obs(obs):
    return tree_map(lambda o: o.unsqueeze(0), obs)
