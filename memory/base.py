"""The one interface every memory backbone implements (docs/design.md, contract 1).

Shapes: x [T, B, input_size] -> y [T, B, output_size]. T = 1 while acting, T = a whole sequence
while learning; the same call serves both. ``reset`` is bool [T, B]; reset[t, b] means x[t, b] is
the first step of an episode, so the state restarts from ``initial_state`` just before x[t, b] is
consumed. A state is a tuple of tensors with the batch on dim 0, so rollout storage can slice and
index it per env.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

State = tuple[Tensor, ...]


class Memory(nn.Module):
    """Base class of the backbones. Subclasses set ``input_size``/``output_size`` and implement
    ``initial_state`` and ``forward``; every computation path must equal the step-by-step
    recurrence (tests/test_memory_contract.py holds them to it)."""

    input_size: int
    output_size: int

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        raise NotImplementedError

    def forward(self, x: Tensor, state: State, reset: Tensor) -> tuple[Tensor, State]:
        raise NotImplementedError

    def diagnostics(self) -> dict[str, float]:
        """Scalars about the last forward (e.g. state norms) that training logs under
        ``memory/<key>``. Backbones with nothing to report return {}."""
        return {}


def check_inputs(module: Memory, x: Tensor, reset: Tensor) -> None:
    """Shared validation of forward() arguments: one clear ValueError naming the shapes."""
    if x.dim() != 3 or x.shape[-1] != module.input_size:
        raise ValueError(
            f"{type(module).__name__}: x must be [T, B, {module.input_size}], got {list(x.shape)}"
        )
    if reset.shape != x.shape[:2]:
        raise ValueError(
            f"{type(module).__name__}: reset must be [T, B] = {list(x.shape[:2])}, got {list(reset.shape)}"
        )
    if reset.dtype != torch.bool:
        raise ValueError(f"{type(module).__name__}: reset must be bool, got {reset.dtype}")


def check_state(what: str, state: State, want: list[tuple[int, ...]], fields: str) -> None:
    """Shared validation of a carried state: one ValueError naming the fields and their shapes."""
    got = [tuple(s.shape) for s in state] if isinstance(state, tuple) else None
    if got != want:
        raise ValueError(
            f"{what}: state must be ({fields}) with shapes {[list(w) for w in want]}, "
            f"got {[list(g) for g in got] if got is not None else type(state).__name__}"
        )
