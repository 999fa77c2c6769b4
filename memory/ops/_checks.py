"""Argument validation shared by the ops: one clear ValueError naming what was wrong and what is valid."""

from __future__ import annotations

import torch
from torch import Tensor


def _shape(t: Tensor) -> list[int]:
    return list(t.shape)


def check_reset(name: str, reset: Tensor, T: int, B: int) -> None:
    if not isinstance(reset, Tensor):
        raise ValueError(f"{name}: reset must be a bool tensor [T, B] = [{T}, {B}], got {type(reset).__name__}")
    if reset.dtype != torch.bool:
        raise ValueError(f"{name}: reset must be bool [T, B], got dtype {reset.dtype}")
    if reset.shape != (T, B):
        raise ValueError(f"{name}: reset must be [T, B] = [{T}, {B}], got {_shape(reset)}")


def check_float(name: str, what: str, t: Tensor) -> None:
    if not isinstance(t, Tensor):
        raise ValueError(f"{name}: {what} must be a floating-point tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise ValueError(f"{name}: {what} must be a floating-point tensor, got dtype {t.dtype}")


def check_float_or_complex(name: str, what: str, t: Tensor) -> None:
    if not isinstance(t, Tensor):
        raise ValueError(f"{name}: {what} must be a floating-point or complex tensor, got {type(t).__name__}")
    if not (t.is_floating_point() or t.is_complex()):
        raise ValueError(f"{name}: {what} must be a floating-point or complex tensor, got dtype {t.dtype}")


def check_linear_scan(gate: Tensor, x: Tensor, reset: Tensor, state0: Tensor | None) -> None:
    name = "linear_scan"
    check_float_or_complex(name, "x", x)
    check_float_or_complex(name, "gate", gate)
    if x.dim() < 2:
        raise ValueError(f"{name}: x must be [T, B, ...] (at least 2 dims), got {_shape(x)}")
    if gate.dim() != x.dim() or any(g != 1 and g != s for g, s in zip(gate.shape, x.shape)):
        raise ValueError(
            f"{name}: gate must have x's number of dims with each dim equal to x's or 1 "
            f"(x {_shape(x)}), got gate {_shape(gate)}"
        )
    if gate.dtype != x.dtype:
        raise ValueError(f"{name}: gate and x must share a dtype, got gate {gate.dtype} and x {x.dtype}")
    if gate.device != x.device:
        raise ValueError(f"{name}: gate and x must be on one device, got {gate.device} and {x.device}")
    check_reset(name, reset, x.shape[0], x.shape[1])
    if reset.device != x.device:
        raise ValueError(f"{name}: reset must be on x's device {x.device}, got {reset.device}")
    if state0 is not None:
        check_float_or_complex(name, "state0", state0)
        if state0.shape != x.shape[1:]:
            raise ValueError(f"{name}: state0 must be x.shape[1:] = {_shape(x)[1:]}, got {_shape(state0)}")
        if state0.dtype != x.dtype or state0.device != x.device:
            raise ValueError(
                f"{name}: state0 must match x's dtype/device ({x.dtype}, {x.device}), "
                f"got ({state0.dtype}, {state0.device})"
            )


def check_matrix_scan(m: Tensor, reset: Tensor, state0: Tensor | None, name: str = "matrix_scan") -> None:
    check_float(name, "m", m)
    if m.dim() < 4 or m.shape[-1] != m.shape[-2]:
        raise ValueError(f"{name}: m must be [T, B, ..., o, o] with square o x o matrices, got {_shape(m)}")
    check_reset(name, reset, m.shape[0], m.shape[1])
    if reset.device != m.device:
        raise ValueError(f"{name}: reset must be on m's device {m.device}, got {reset.device}")
    if state0 is not None:
        check_float(name, "state0", state0)
        if state0.shape != m.shape[1:]:
            raise ValueError(f"{name}: state0 must be m.shape[1:] = {_shape(m)[1:]}, got {_shape(state0)}")
        if state0.dtype != m.dtype or state0.device != m.device:
            raise ValueError(
                f"{name}: state0 must match m's dtype/device ({m.dtype}, {m.device}), "
                f"got ({state0.dtype}, {state0.device})"
            )


def check_stable_matrix_scan(m: Tensor, reset: Tensor, state0) -> None:
    name = "stable_matrix_scan"
    check_matrix_scan(m, reset, None, name)
    if state0 is None:
        return
    if not (isinstance(state0, tuple) and len(state0) == 2):
        raise ValueError(f"{name}: state0 must be a pair (U0, s0) or None, got {type(state0).__name__}")
    for what, t, shape in (("U0", state0[0], m.shape[1:]), ("s0", state0[1], m.shape[1:-2])):
        check_float(name, what, t)
        if t.shape != shape:
            raise ValueError(f"{name}: {what} must be {list(shape)}, got {_shape(t)}")
        if t.dtype != m.dtype or t.device != m.device:
            raise ValueError(f"{name}: {what} must match m's dtype/device ({m.dtype}, {m.device}), got ({t.dtype}, {t.device})")


def check_newton_schulz(x: Tensor, steps: int, eps: float) -> None:
    name = "newton_schulz"
    check_float(name, "x", x)
    if x.dim() < 2:
        raise ValueError(f"{name}: x must be [..., m, n] (at least 2 dims), got {_shape(x)}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"{name}: steps must be an int >= 0, got {steps!r}")
    if not eps > 0:
        raise ValueError(f"{name}: eps must be > 0, got {eps!r}")


def check_log_linear_scan(log_a: Tensor, log_b: Tensor, reset: Tensor, log_h0: Tensor | None) -> None:
    name = "log_linear_scan"
    check_float(name, "log_b", log_b)
    check_float(name, "log_a", log_a)
    if log_b.dim() < 2:
        raise ValueError(f"{name}: log_b must be [T, B, ...] (at least 2 dims), got {_shape(log_b)}")
    if log_a.dim() != log_b.dim() or any(g != 1 and g != s for g, s in zip(log_a.shape, log_b.shape)):
        raise ValueError(
            f"{name}: log_a must have log_b's number of dims with each dim equal to log_b's or 1 "
            f"(log_b {_shape(log_b)}), got log_a {_shape(log_a)}"
        )
    if log_a.dtype != log_b.dtype or log_a.device != log_b.device:
        raise ValueError(
            f"{name}: log_a and log_b must share a dtype and device, got ({log_a.dtype}, {log_a.device}) "
            f"and ({log_b.dtype}, {log_b.device})"
        )
    check_reset(name, reset, log_b.shape[0], log_b.shape[1])
    if reset.device != log_b.device:
        raise ValueError(f"{name}: reset must be on log_b's device {log_b.device}, got {reset.device}")
    if log_h0 is not None:
        check_float(name, "log_h0", log_h0)
        if log_h0.shape != log_b.shape[1:]:
            raise ValueError(f"{name}: log_h0 must be log_b.shape[1:] = {_shape(log_b)[1:]}, got {_shape(log_h0)}")
        if log_h0.dtype != log_b.dtype or log_h0.device != log_b.device:
            raise ValueError(
                f"{name}: log_h0 must match log_b's dtype/device ({log_b.dtype}, {log_b.device}), "
                f"got ({log_h0.dtype}, {log_h0.device})"
            )
