"""One helper for the nested containers of tensors that flow through an agent: observations that are
a dict of tensors, memory states that are a tuple of them, rollouts that are a dataclass of both.

Written here rather than taken from torch.utils._pytree (a private module whose API has changed
between releases, and which maps dataclasses only once each type is registered) or tensordict (a
dependency for a dozen lines of code).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from torch import Tensor


def tree_map(fn: Callable[..., Any], tree: Any, *rest: Any) -> Any:
    """Apply ``fn`` to every tensor leaf of ``tree`` (with the matching leaves of ``rest``, which
    share its structure) and rebuild the structure: dicts, tuples, lists and dataclass instances
    are walked, tensors are leaves, anything else (None, numbers) is kept as it is."""
    if isinstance(tree, Tensor):
        return fn(tree, *rest)
    if isinstance(tree, dict):
        return {k: tree_map(fn, v, *(r[k] for r in rest)) for k, v in tree.items()}
    if isinstance(tree, (tuple, list)):
        return type(tree)(tree_map(fn, v, *(r[i] for r in rest)) for i, v in enumerate(tree))
    if dataclasses.is_dataclass(tree) and not isinstance(tree, type):
        return type(tree)(**{
            f.name: tree_map(fn, getattr(tree, f.name), *(getattr(r, f.name) for r in rest))
            for f in dataclasses.fields(tree)
        })
    return tree
