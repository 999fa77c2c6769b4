"""Backbones by name: ``memory.make(name, input_size, hidden_size, **options)``.

A backbone registers a constructor ``fn(input_size, hidden_size, **options) -> Memory``. Its
keyword options (with defaults and type hints) are what the command line exposes through
``--memory-options key=value ...``; ``options(name)`` lists them. ``test_variants`` are option sets
the contract tests run in addition to the defaults (e.g. every MRU parameterization).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

from memory.base import Memory


@dataclass
class Entry:
    name: str
    fn: Callable[..., Memory]
    doc: str
    test_variants: list[dict[str, Any]] = field(default_factory=list)


_REGISTRY: dict[str, Entry] = {}


def register(name: str, test_variants: list[dict[str, Any]] | None = None):
    """Decorator: register ``fn(input_size, hidden_size, **options)`` under ``name``."""

    def deco(fn: Callable[..., Memory]) -> Callable[..., Memory]:
        if name in _REGISTRY:
            raise ValueError(f"backbone {name!r} is already registered")
        doc = (inspect.getdoc(fn) or "").split("\n")[0]
        _REGISTRY[name] = Entry(name, fn, doc, list(test_variants or []))
        return fn

    return deco


def names() -> list[str]:
    return sorted(_REGISTRY)


def entry(name: str) -> Entry:
    if name not in _REGISTRY:
        raise ValueError(f"unknown backbone {name!r}; choose one of: {', '.join(names())}")
    return _REGISTRY[name]


def options(name: str) -> dict[str, inspect.Parameter]:
    """The keyword options of a backbone (everything after input_size and hidden_size)."""
    params = inspect.signature(entry(name).fn).parameters
    return {k: p for k, p in params.items() if k not in ("input_size", "hidden_size")}


def make(name: str, input_size: int, hidden_size: int, **opts: Any) -> Memory:
    """Build the backbone ``name``. Unknown names and options raise a ValueError listing the
    valid choices."""
    e = entry(name)
    valid = options(name)
    unknown = sorted(set(opts) - set(valid))
    if unknown:
        raise ValueError(
            f"backbone {name!r} has no option {', '.join(map(repr, unknown))}; "
            f"its options are: {', '.join(valid) or '(none)'}"
        )
    if input_size < 1 or hidden_size < 1:
        raise ValueError(f"input_size and hidden_size must be >= 1, got {input_size} and {hidden_size}")
    return e.fn(input_size, hidden_size, **opts)


def parse_options(name: str, items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Parse command-line ``key=value`` strings into typed options of backbone ``name``, using
    the type of each option's default (bool accepts true/false/1/0)."""
    valid = options(name)
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"memory option {item!r} is not key=value; options of {name!r}: {', '.join(valid) or '(none)'}")
        key, raw = item.split("=", 1)
        key = key.strip().replace("-", "_")
        if key not in valid:
            raise ValueError(
                f"backbone {name!r} has no option {key!r}; its options are: {', '.join(valid) or '(none)'}"
            )
        default = valid[key].default
        out[key] = _coerce(name, key, raw.strip(), default)
    return out


def _coerce(name: str, key: str, raw: str, default: Any) -> Any:
    try:
        if isinstance(default, bool):
            low = raw.lower()
            if low not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return low in ("true", "1", "yes")
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if default is None or isinstance(default, str):
            return raw
    except ValueError:
        pass
    else:
        return raw
    raise ValueError(f"option {key!r} of backbone {name!r} expects a {type(default).__name__}, got {raw!r}")


def describe(name: str) -> str:
    """One line per option: name=default."""
    opts = options(name)
    body = ", ".join(f"{k}={p.default!r}" for k, p in opts.items())
    return f"{name}: {entry(name).doc} [{body or 'no options'}]"
