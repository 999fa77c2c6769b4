"""A sweep's search space: each --space entry (a train.py flag and a distribution) as an Optuna
distribution and the train.py flags of a sampled value, checked against train.Args' field types;
--enqueue's fixed trials; and the fixed --train-args (flags sweep.py sets itself are refused)."""

from __future__ import annotations

import math
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

from experiments.grid import OWN_FLAGS as GRID_OWN_FLAGS
from experiments.grid import UsageError, parse_train_args

# train.py flags sweep.py sets itself (and the flag to use instead): compare.py's, named as sweep.py takes them.
OWN_FLAGS = {**GRID_OWN_FLAGS, "--env-id": "--env-id", "--backbone": "--backbone",
             "--memory-options": "--backbone NAME:key=value,..."}
# train.py settings that are not hyperparameters: never searched, never written into preset.toml.
NOT_SEARCHED = {"env_id", "backbone", "seed", "total_timesteps", "preset", "preset_applied", "runs_dir", "run_name",
                "resume", "torch_threads", "device", "async_rollouts", "checkpoint_every", "progress", "eval_episodes",
                "memory_options"}


def _flag(name: str) -> str:
    from agents.config import flag

    return flag(name)


@dataclass
class Param:
    name: str  # the train.py field, e.g. learning_rate
    spec: str  # the distribution as given, e.g. loguniform:1e-4:3e-3
    kind: type  # float, int, bool or str: the field's type
    dist: Any  # an optuna distribution
    values: list  # the values checked against train.py's ranges: the bounds, or every choice

    def flags(self, value) -> list[str]:
        flag = _flag(self.name)
        if self.kind is bool:
            return [flag if value else "--no-" + flag[2:]]
        return [flag, repr(float(value)) if self.kind is float else str(value)]


def fixed_train_args(text: str) -> list[str]:
    """--train-args as train.py flags (experiments.grid.parse_train_args: shell syntax, and none of
    the flags the tool sets itself), its refusal naming sweep.py's flags."""
    try:
        return parse_train_args(text)
    except UsageError as e:
        own = next((f for f in OWN_FLAGS if str(e).startswith(f"--train-args must not contain {f}:")), None)
        if own is None:
            raise
        raise UsageError(f"--train-args must not contain {own}: sweep.py sets it (use {OWN_FLAGS[own]})") from None


def fixed_fields(train_args: list[str]) -> set[str]:
    """The train.py fields the fixed flags set (agents.config.given_fields of the flags alone)."""
    from agents.config import Args as TrainArgs
    from agents.config import given_fields

    return given_fields(TrainArgs(), train_args)


def _field_kind(hint) -> tuple[type | None, tuple | None]:
    """(int/float/bool/str, the Literal's choices or None) of a train.Args field; (None, None) for
    tuples and anything else a sweep cannot set."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        choices = typing.get_args(hint)
        return type(choices[0]), choices
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        return _field_kind(inner[0]) if len(inner) == 1 else (None, None)
    return (hint, None) if hint in (int, float, bool, str) else (None, None)


def _number(text: str, what: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise UsageError(f"{what}: {text!r} is not a number") from None
    if not math.isfinite(v):
        raise UsageError(f"{what}: {text!r} is not finite")
    return v


def _value(text: str, kind: type, choices: tuple | None, what: str):
    """One choice or enqueued value, typed as the field."""
    t = text.strip()
    if kind is bool:
        if t.lower() not in ("true", "false"):
            raise UsageError(f"{what}: {t!r} is not true or false")
        return t.lower() == "true"
    if kind is int:
        try:
            return int(t)
        except ValueError:
            raise UsageError(f"{what}: {t!r} is not an integer") from None
    if kind is float:
        return _number(t, what)
    if choices is not None and t not in choices:
        raise UsageError(f"{what}: {t!r} is not one of {', '.join(map(str, choices))}")
    return t


def parse_param(item: str) -> Param:
    """'learning_rate=loguniform:1e-4:3e-3' -> Param (checked against train.Args' field types)."""
    import optuna.distributions as D

    from agents.config import Args as TrainArgs

    key, sep, spec = item.partition("=")
    name = key.strip().replace("-", "_")
    if not sep or not name or not spec.strip():
        raise UsageError(f"--space entry {item!r} is not KEY=DIST (e.g. learning_rate=loguniform:1e-4:3e-3)")
    hints = typing.get_type_hints(TrainArgs)
    if name not in hints:
        raise UsageError(f"--space {key.strip()!r} is not a train.py flag (python train.py --help lists them)")
    kind, choices = _field_kind(hints[name])
    flag = _flag(name)
    if name in NOT_SEARCHED or kind is None:
        raise UsageError(f"--space {name}: sweep.py does not search {flag}"
                         + (f" (it sets it: use {OWN_FLAGS[flag]})" if flag in OWN_FLAGS else ""))
    spec = spec.strip()
    dist_kind, _, rest = spec.partition(":")
    what = f"--space {name}={spec}"
    parts = rest.split(":") if rest else []
    if dist_kind in ("uniform", "loguniform"):
        if kind is not float:
            raise UsageError(f"{what}: {flag} takes {'an integer: use int:A:B' if kind is int else 'one of a list: use choice:A,B'}")
        if len(parts) != 2:
            raise UsageError(f"{what}: write {dist_kind}:LOW:HIGH")
        lo, hi = (_number(p, what) for p in parts)
        if not lo < hi:
            raise UsageError(f"{what}: LOW must be < HIGH")
        if dist_kind == "loguniform" and lo <= 0:
            raise UsageError(f"{what}: loguniform needs LOW > 0")
        return Param(name, spec, float, D.FloatDistribution(lo, hi, log=dist_kind == "loguniform"), [lo, hi])
    if dist_kind == "int":
        if kind not in (int, float):
            raise UsageError(f"{what}: {flag} is not a number; use choice:A,B")
        if len(parts) not in (2, 3):
            raise UsageError(f"{what}: write int:LOW:HIGH or int:LOW:HIGH:STEP")
        lo, hi, step = (int(_value(p, int, None, what)) for p in (*parts, "1")[:3])
        if not lo < hi or step < 1 or (hi - lo) % step:
            raise UsageError(f"{what}: needs LOW < HIGH, STEP >= 1 and HIGH - LOW a multiple of STEP")
        return Param(name, spec, kind, D.IntDistribution(lo, hi, step=step), [lo, hi])
    if dist_kind == "choice":
        vals = [_value(v, kind, choices, what) for v in rest.split(",") if v.strip()]
        if len(vals) < 2 or len(set(vals)) != len(vals):
            raise UsageError(f"{what}: choice needs two or more different values (a fixed value goes in --train-args)")
        return Param(name, spec, kind, D.CategoricalDistribution(vals), vals)
    raise UsageError(f"{what}: unknown distribution {dist_kind!r}; use uniform:A:B, loguniform:A:B, int:A:B[:STEP] or choice:V1,V2,...")


def parse_enqueue(item: str, params: list[Param]) -> dict:
    """'learning_rate=1e-3,update_epochs=4' -> the trial's params (each inside its --space)."""
    by_name = {p.name: p for p in params}
    out = {}
    for kv in item.split(","):
        k, sep, v = kv.partition("=")
        k = k.strip().replace("-", "_")
        if not sep or k not in by_name:
            raise UsageError(f"--enqueue {item!r}: {kv!r} is not KEY=VALUE with KEY in --space ({', '.join(by_name)})")
        p = by_name[k]
        val = _value(v, p.kind, None, f"--enqueue {k}")
        try:
            inside = p.dist._contains(p.dist.to_internal_repr(val))
        except (ValueError, TypeError):
            inside = False
        if not inside:
            raise UsageError(f"--enqueue {k}={v.strip()} is outside --space {k}={p.spec}")
        out[k] = val
    return out
