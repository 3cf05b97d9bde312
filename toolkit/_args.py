"""Checks of arguments shared by several public functions.

Layer: formats, I/O and runtime.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def size_pair(value, name: str) -> tuple[int, int]:
    """``n`` or ``(width, height)`` of positive whole numbers -> ``(width, height)``."""
    if isinstance(value, (int, np.integer)):
        value = (value, value)
    if (not isinstance(value, Sequence) or len(value) != 2
            or not all(isinstance(v, (int, np.integer)) and v > 0 for v in value)):
        raise ValueError(f"{name} must be a positive integer or a (width, height) pair, got {value!r}.")
    return int(value[0]), int(value[1])


def size_tuple(size) -> tuple[int, int]:
    """A chip size as ``(width, height)`` (an ``int`` is a square)."""
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
