"""A query's values against the input range the model was trained on: convert with a note, or refuse.

One rule for every way in (Client.query_model, SharedModel.predict, `pysmpc
query`), so an image gives the same answer whichever way it is sent: a uint8
array is pixels 0-255; for a model trained on [0, 1] it is divided by 255,
and the caller is told so. Anything else outside the model's range is
refused with both ranges named, never passed on to give logits 255 times
off.
"""

from __future__ import annotations

import numpy as np

from pysmpc.graph.graph import check_input_range

__all__ = ["to_model_input"]

# A uint8 array is read as 8-bit pixels; a model trained on [0, 1] takes them divided by this.
_PIXEL_MAX = 255.0


def to_model_input(x, input_range, what: str = "query") -> tuple[np.ndarray, str | None]:
    """Return x as the float64 values the model takes, and a note if they were converted (else None).

    input_range: (low, high) the model was trained on, or None (unknown).

    Raises:
        ValueError: values that are not finite; values outside a known
            range (the message names both ranges and how to convert); a
            uint8 array for a model whose range is unknown (dividing by
            255 or not cannot be decided: declare the range, or pass floats).
    """
    raw = np.asarray(x)
    if raw.dtype.kind not in "biuf":
        raise ValueError(f"{what} must be numbers, got an array of dtype {raw.dtype}")
    values = raw.astype(np.float64)
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{what} contains NaN or infinite values")
    input_range = check_input_range(input_range)
    note = None
    if raw.dtype == np.uint8:
        if input_range is None:
            raise ValueError(f"{what} is a uint8 array (pixels 0-255?), and the model declares no input range, so "
                             "whether to divide by 255 cannot be decided: pass floats in the range the model was "
                             "trained on, or have its owner declare the range (load_model(..., input_range=...))")
        if input_range[1] < _PIXEL_MAX:
            values = values / _PIXEL_MAX
            note = (f"{what}: uint8 pixels (0-255) divided by 255 for the model's input range "
                    f"[{input_range[0]:g}, {input_range[1]:g}]")
    if input_range is not None and values.size:
        low, high = float(values.min()), float(values.max())
        if low < input_range[0] or high > input_range[1]:
            hint = " (pixels 0-255 given as floats? divide by 255, or pass the uint8 array)" if high > 1 else ""
            raise ValueError(f"{what} values span [{low:g}, {high:g}], outside the model's input range "
                             f"[{input_range[0]:g}, {input_range[1]:g}]{hint}")
    return values, note
