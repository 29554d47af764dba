"""The shipped MNIST model and test samples, and an IDX file reader."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

__all__ = ["load_samples", "read_idx", "shipped_model_path"]

_DATA = Path(__file__).resolve().parent.parent / "data"
_IDX_TYPES: dict[int, np.dtype] = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
              0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def shipped_model_path() -> Path:
    """Return the path of the shipped MNIST CNN (Keras 3 HDF5; see pysmpc/data/README.md)."""
    return _DATA / "mnist_cnn.h5"


def load_samples() -> tuple[np.ndarray, np.ndarray]:
    """Return the 16 shipped MNIST test images and labels.

    Returns:
        (images, labels): float64 (16, 28, 28, 1) in [0, 1] (pixels / 255,
        NHWC, as the model expects) and int64 (16,) labels 0-9. They are the
        first 16 images of the official MNIST test set.
    """
    with np.load(_DATA / "mnist_samples.npz") as data:
        images, labels = data["images"], data["labels"]
    return (images.astype(np.float64) / 255.0)[..., None], labels.astype(np.int64)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (raw or gzipped, as MNIST is distributed) into an array.

    Raises:
        ValueError: bad magic number or a size that does not match the header.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        head = f.read(2)
    opener = gzip.open if head == b"\x1f\x8b" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise ValueError(f"{path}: not an IDX file (magic {data[:4].hex()})")
    dtype, ndim = _IDX_TYPES[data[2]], data[3]
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(data) - offset != expected:
        raise ValueError(f"{path}: header says {dims} ({expected} bytes) but {len(data) - offset} bytes follow")
    return np.frombuffer(data, dtype=dtype, offset=offset).reshape(dims).astype(dtype.newbyteorder("="))
