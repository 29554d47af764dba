"""Read query images: .npy arrays and plain PNG files (no imaging library needed)."""

from __future__ import annotations

import os
import struct
import zlib

import numpy as np

__all__ = ["load_image"]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # PNG colour type -> samples per pixel


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Return an image as float64 (H, W, 1) in [0, 1] (MNIST style: 0 is background).

    .npy: used as is if float (values must already be in [0, 1]), divided by
    255 if uint8; (H, W) gains a channel axis. .png: 8-bit greyscale, RGB
    or with alpha, not interlaced; colour is averaged to grey.
    """
    path = os.fspath(path)
    if path.endswith(".npy"):
        image = np.load(path, allow_pickle=False)
        if image.dtype == np.uint8:
            image = image / 255.0
    elif path.lower().endswith(".png"):
        image = _read_png(path) / 255.0
    else:
        raise ValueError(f"{path}: query images must be .png or .npy files")
    image = np.asarray(image, dtype=np.float64)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3:
        raise ValueError(f"{path}: expected an (H, W) or (H, W, C) image, got shape {image.shape}")
    return image


def _read_png(path: str) -> np.ndarray:
    with open(path, "rb") as f:
        data = f.read()
    if not data.startswith(_PNG_SIGNATURE):
        raise ValueError(f"{path}: not a PNG file")
    pos, header, idat = len(_PNG_SIGNATURE), None, []
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        chunk = data[pos + 8 : pos + 8 + length]
        if len(chunk) != length:
            raise ValueError(f"{path}: truncated PNG chunk {kind!r}")
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat.append(chunk)
        elif kind == b"IEND":
            break
        pos += 12 + length
    if header is None or not idat:
        raise ValueError(f"{path}: PNG without header or image data")
    width, height, depth, colour, _, _, interlace = header
    if depth != 8 or colour not in _CHANNELS or interlace:
        raise ValueError(f"{path}: only 8-bit, non-interlaced grey/RGB(A) PNGs are read (depth {depth}, "
                         f"colour type {colour}, interlace {interlace})")
    channels = _CHANNELS[colour]
    try:
        raw = zlib.decompress(b"".join(idat))
    except zlib.error as exc:
        raise ValueError(f"{path}: corrupt PNG data: {exc}") from None
    stride = width * channels
    if len(raw) != height * (stride + 1):
        raise ValueError(f"{path}: PNG data has {len(raw)} bytes, expected {height * (stride + 1)}")
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(height, stride + 1)
    pixels = np.zeros((height, stride), dtype=np.int32)
    for y in range(height):
        _unfilter_row(rows[y, 0], rows[y, 1:].astype(np.int32), pixels, y, channels)
    image = pixels.reshape(height, width, channels).astype(np.float64)
    if channels in (2, 4):  # drop alpha
        image = image[..., :-1]
    return image.mean(axis=2)


def _unfilter_row(kind: int, row: np.ndarray, out: np.ndarray, y: int, bpp: int) -> None:
    prior = out[y - 1] if y > 0 else np.zeros_like(row)
    if kind == 0:
        out[y] = row
    elif kind == 2:
        out[y] = (row + prior) & 0xFF
    else:
        cur = out[y]
        for i in range(len(row)):
            left = cur[i - bpp] if i >= bpp else 0
            up = prior[i]
            if kind == 1:
                pred = left
            elif kind == 3:
                pred = (left + up) >> 1
            elif kind == 4:
                up_left = prior[i - bpp] if i >= bpp else 0
                p = left + up - up_left
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - up_left)
                pred = left if pa <= pb and pa <= pc else (up if pb <= pc else up_left)
            else:
                raise ValueError(f"unknown PNG filter type {kind}")
            cur[i] = (row[i] + pred) & 0xFF
