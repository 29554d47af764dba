"""MNIST from IDX files, and a non-IID split across data owners."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pysmpc.models.samples import read_idx

__all__ = ["find_mnist", "load_mnist", "non_iid_split"]

_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _file(directory: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def find_mnist(directory=None) -> Path:
    """Return a directory holding the four MNIST IDX files (raw or .gz).

    Looks at ``directory`` if given, else $PYSMPC_MNIST_DIR, ./mnist,
    ./data/mnist and ../shared/data/mnist.

    Raises:
        FileNotFoundError: saying where it looked and what it needs.
    """
    candidates = [Path(directory)] if directory else [
        Path(p) for p in (os.environ.get("PYSMPC_MNIST_DIR"), "mnist", "data/mnist", "../shared/data/mnist") if p
    ]
    for d in candidates:
        if all(_file(d, stem) for pair in _FILES.values() for stem in pair):
            return d
    raise FileNotFoundError(
        "MNIST IDX files not found in " + ", ".join(str(d) for d in candidates)
        + ": put train-images-idx3-ubyte(.gz), train-labels-idx1-ubyte(.gz), t10k-images-idx3-ubyte(.gz) and "
        "t10k-labels-idx1-ubyte(.gz) in a directory and pass --data DIR (or set PYSMPC_MNIST_DIR)"
    )


def load_mnist(directory=None, split: str = "train", dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Return (images (N, 28, 28, 1) as pixels / 255 in ``dtype``, labels int64 (N,))."""
    d = find_mnist(directory)
    images_stem, labels_stem = _FILES[split]
    # find_mnist saw both files; one removed since makes read_idx name the missing path.
    images = read_idx(_file(d, images_stem) or d / images_stem)
    labels = read_idx(_file(d, labels_stem) or d / labels_stem)
    return (images.astype(dtype) / dtype(255.0))[..., None], labels.astype(np.int64)


def non_iid_split(labels: np.ndarray, owners: int, rng: np.random.Generator, skew: float = 0.8,
                  classes: int = 10) -> list[np.ndarray]:
    """Split example indices across owners so each holds mostly a few classes.

    The classes are divided into ``owners`` contiguous groups (3 owners:
    0-3, 4-6, 7-9). Of each class, a fraction ``skew`` goes to the owner of
    its group and the rest is spread evenly over the other owners. Returns
    one shuffled index array per owner.
    """
    if owners < 1:
        raise ValueError(f"owners must be >= 1, got {owners}")
    groups = np.array_split(np.arange(classes), owners)
    primary = {int(c): k for k, g in enumerate(groups) for c in g}
    parts: list[list[np.ndarray]] = [[] for _ in range(owners)]
    for c in range(classes):
        idx = rng.permutation(np.flatnonzero(labels == c))
        if owners == 1:
            parts[0].append(idx)
            continue
        main = int(round(skew * len(idx)))
        parts[primary[c]].append(idx[:main])
        others = [k for k in range(owners) if k != primary[c]]
        for k, chunk in zip(others, np.array_split(idx[main:], len(others))):
            parts[k].append(chunk)
    return [rng.permutation(np.concatenate(p)) for p in parts]
