"""Observation encoders (agents/encoders.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium import spaces

import envs
from agents.encoders import GridCells, make_encoder


def _minigrid_space(view: int = 3) -> spaces.MultiDiscrete:
    env = envs.make_vec("MiniGrid-MemoryS7-v0", 1, seed=0, view_size=view, movement_only=True)
    space = env.single_observation_space
    env.close()
    return space


def test_onehot_encodes_ids_not_magnitudes():
    enc = make_encoder(spaces.MultiDiscrete([3, 2]))
    out = enc(torch.tensor([[2, 0], [0, 1]]))
    assert torch.equal(out, torch.tensor([[0.0, 0.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0, 1.0]]))


@pytest.mark.parametrize("view", [3, 5])
def test_grid_cells_layout_and_position_invariant_part(view):
    space = _minigrid_space(view)
    torch.manual_seed(0)
    enc = make_encoder(space, "cells")
    n, d = view * view, enc.dim
    assert enc.size == n * d + d + 4
    rng = np.random.default_rng(0)
    obs = torch.as_tensor(np.stack([space.sample() for _ in range(5)]))
    out = enc(obs)
    assert out.shape == (5, enc.size)
    # Each cell's embedding is the sum of its object, colour and state embeddings, shared by all cells.
    cells = obs[:, :-1].view(5, n, 3)
    want = sum(t.weight[cells[..., i]] for i, t in enumerate(enc.fields))
    torch.testing.assert_close(out[:, : n * d], want.flatten(1))
    torch.testing.assert_close(out[:, n * d : n * d + d], want.mean(1))
    assert torch.equal(out[:, -4:], torch.nn.functional.one_hot(obs[:, -1], 4).float())
    # Moving things around the view changes the flattened part, not the mean (what is in view).
    perm = torch.as_tensor(rng.permutation(n))
    moved = torch.cat([cells[:, perm].flatten(1), obs[:, -1:]], dim=1)
    out2 = enc(moved)
    torch.testing.assert_close(out2[:, n * d : n * d + d], out[:, n * d : n * d + d])
    assert not torch.allclose(out2[:, : n * d], out[:, : n * d])


def test_grid_cells_refuses_other_spaces():
    with pytest.raises(ValueError, match="needs MiniGrid's compact observation"):
        GridCells(np.array([11, 6, 3, 11, 6, 3]))  # no direction
    with pytest.raises(ValueError, match="needs MiniGrid's compact observation"):
        make_encoder(spaces.Discrete(8), "cells")
    with pytest.raises(ValueError, match="unknown obs encoder 'resnet'; choose one of: auto, onehot, cells, cnn"):
        make_encoder(spaces.Discrete(8), "resnet")
