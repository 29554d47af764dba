"""The error a model reader raises for a file it cannot make sense of."""

from __future__ import annotations

__all__ = ["ModelFormatError"]


class ModelFormatError(ValueError):
    """A model file (or config) is corrupt, truncated or malformed for its format.

    The message names the file and, where it can, the layer or node. An
    unsupported but well-formed layer is a plain ValueError instead, and a
    graph whose shapes do not fit a GraphError (also a ValueError).
    """
