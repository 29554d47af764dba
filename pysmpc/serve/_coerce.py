"""Whole numbers from the types other languages' bridges pass (R through reticulate)."""

from __future__ import annotations

import operator

import numpy as np


def whole_number(value, name: str) -> int:
    """Return value as an int: ints, and floats that are whole (R's `3` arrives as 3.0).

    Raises:
        ValueError: a float with a fractional part (2.5) or not finite.
        TypeError: anything else (strings, None, sequences).
    """
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a whole number, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        pass
    if isinstance(value, (float, np.floating)):
        if np.isfinite(value) and float(value).is_integer():
            return int(value)
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    raise TypeError(f"{name} must be a whole number, got {type(value).__name__} {value!r}")
