"""Helpers on batches whose observations may be tensors or (nested) dicts of tensors."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any


def tree_map(fn: Callable[[Any], Any], tree: Any) -> Any:
    """Apply `fn` to every leaf of nested dicts (observations may be dicts: image, proprio, language)."""
    if isinstance(tree, Mapping):
        return {key: tree_map(fn, value) for key, value in tree.items()}
    return fn(tree)
