"""Input layouts: the engine computes on NHWC images; models from PyTorch take NCHW.

A Graph always computes channels last (NHWC): its ``input_shape`` is
(H, W, C), as Keras and TensorFlow lay images out. A model imported from
ONNX, as PyTorch exports it, keeps the layout its callers use, channels
first (NCHW), in ``Graph.input_layout``. The user-facing ``Model``,
``SharedModel`` and ``Client`` take inputs in that layout and transpose
them once, in plaintext before anything is encoded or shared, so a PyTorch
user passes the same array to pysmpc as to the PyTorch model.
"""

from __future__ import annotations

import numpy as np

__all__ = ["LAYOUTS", "check_layout", "model_input_to_nhwc", "batch_to_nhwc", "shape_in_layout"]

#: The input layouts a Graph may record: channels last (the engine's) and channels first (PyTorch's).
LAYOUTS = ("NHWC", "NCHW")


def check_layout(layout: object, input_rank: int) -> str:
    """Return `layout` if it is one of LAYOUTS and fits an input of `input_rank` axes (no batch axis).

    Raises:
        ValueError: an unknown layout, or NCHW for an input that is not an image (H, W, C).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"input_layout must be one of {', '.join(map(repr, LAYOUTS))}, got {layout!r}")
    if layout == "NCHW" and input_rank != 3:
        raise ValueError(f"input_layout 'NCHW' is for image inputs (3 axes besides the batch axis); "
                         f"this input has {input_rank}")
    return str(layout)


def shape_in_layout(nhwc_shape: tuple, layout: str) -> tuple:
    """Return an input shape (no batch axis) as a caller in `layout` writes it: (H, W, C) -> (C, H, W) for NCHW."""
    shape = tuple(int(s) for s in nhwc_shape)
    if layout == "NCHW" and len(shape) == 3:
        h, w, c = shape
        return (c, h, w)
    return shape


def batch_to_nhwc(x: np.ndarray, layout: str) -> np.ndarray:
    """Return a batch given in `layout` as NHWC: (N, C, H, W) -> (N, H, W, C) for NCHW, else x itself."""
    if layout == "NCHW" and x.ndim == 4:
        return np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    return x


def model_input_to_nhwc(x, nhwc_shape: tuple, layout: str) -> np.ndarray:
    """Return `x`, an input in `layout` with or without a batch axis, as NHWC with the same axes.

    For NHWC, x is returned as an array unchanged (the executors check its
    shape). For NCHW, x must be (C, H, W) or (N, C, H, W).

    Raises:
        ValueError: an NCHW input of another shape; the message says when
            the array looks like the NHWC form of the input instead.
    """
    x = np.asarray(x)
    if layout != "NCHW":
        return x
    expected = shape_in_layout(nhwc_shape, layout)
    if x.shape == expected:
        return np.ascontiguousarray(x.transpose(1, 2, 0))
    if x.ndim == 4 and x.shape[1:] == expected:
        return batch_to_nhwc(x, layout)
    hint = ""
    if x.shape[-3:] == tuple(nhwc_shape):
        hint = ("; it looks channels-last (NHWC), but this model takes channels-first input like the PyTorch "
                "model it came from: pass x.transpose(0, 3, 1, 2)")
    raise ValueError(f"input shape {x.shape} does not fit the model's NCHW input {expected} "
                     f"(with or without a batch axis){hint}")
