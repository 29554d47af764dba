"""Read query images: .npy arrays and plain PNG files (no imaging library needed)."""

from __future__ import annotations

import os
import struct
import tokenize
import zlib

import numpy as np

__all__ = ["MAX_PIXELS", "load_image"]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # PNG colour type -> samples per pixel
#: The most pixels a query image may have. A query image is small (MNIST: 28 x 28); a larger
#: one is refused before it is decoded, so a few bytes of PNG cannot inflate to gigabytes.
MAX_PIXELS = 1 << 20


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Return an image as stored, (H, W, C): uint8 pixels 0-255 from a PNG or a uint8 .npy, else as the .npy holds it.

    No scaling here: the query path (Client.query_model, serve/inputs.py)
    fits every input to the served model's input range the same way, so a
    file and an array give the same answer (a uint8 image is divided by
    255 for a model trained on [0, 1], with a note). .npy: real or bool
    dtypes; (H, W) gains a channel axis. .png: 8-bit greyscale, RGB or
    with alpha, not interlaced; colour is averaged to grey (rounded to
    uint8). At most MAX_PIXELS pixels.

    Raises:
        ValueError: not a readable .npy or PNG file, the wrong dtype, shape
            or size, or values that are not finite; the message names the
            file and the problem.
    """
    path = os.fspath(path)
    if path.endswith(".npy"):
        image = _read_npy(path)
    elif path.lower().endswith(".png"):
        image = _read_png(path)
    else:
        raise ValueError(f"{path}: query images must be .png or .npy files")
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or min(image.shape) < 1:
        raise ValueError(f"{path}: expected an (H, W) or (H, W, C) image, got shape {image.shape}")
    if image.dtype.kind == "f" and not np.all(np.isfinite(image)):
        raise ValueError(f"{path}: the image contains NaN or infinite values")
    return image


class _NotAnImage(Exception):
    """A well-formed .npy file that holds no image (its message goes to the caller's ValueError)."""


def _read_npy(path: str) -> np.ndarray:
    """Read a .npy array, checking its header (dtype, shape, size) before reading the data."""
    fmt = np.lib.format
    try:
        with open(path, "rb") as f:
            version = fmt.read_magic(f)
            if version not in ((1, 0), (2, 0), (3, 0)):
                raise ValueError(f"unknown .npy format version {version}")
            read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, fortran_order, dtype = read_header(f)
            if dtype.kind not in "buif" or dtype.fields is not None or dtype.subdtype is not None:
                raise _NotAnImage(f"image dtype {dtype} is not a real number type")
            count = int(np.prod(shape, dtype=object))
            if count > MAX_PIXELS:
                raise _NotAnImage(f"image of shape {shape} has more than {MAX_PIXELS} values")
            data = f.read(count * dtype.itemsize)
    except _NotAnImage as exc:
        raise ValueError(f"{path}: {exc}") from None
    # tokenize.TokenError and SyntaxError: numpy parses the header as a Python literal.
    except (ValueError, EOFError, OSError, SyntaxError, RecursionError, tokenize.TokenError) as exc:
        raise ValueError(f"{path}: not a valid .npy file: {type(exc).__name__}: {str(exc)[:200]}") from None
    if len(data) != count * dtype.itemsize:
        raise ValueError(f"{path}: not a valid .npy file: {len(data)} bytes of data, the header says "
                         f"{count * dtype.itemsize}")
    return np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran_order else "C").copy()


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
            if length != 13:
                raise ValueError(f"{path}: PNG header chunk of {length} bytes, expected 13")
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
    if not 1 <= width * height <= MAX_PIXELS:
        raise ValueError(f"{path}: PNG of {width} x {height} pixels; at least 1 and at most {MAX_PIXELS} are read")
    channels = _CHANNELS[colour]
    stride = width * channels
    expected = height * (stride + 1)
    try:
        # Never inflate more than the header's size (plus one byte, to notice extra data).
        raw = zlib.decompressobj().decompress(b"".join(idat), expected + 1)
    except zlib.error as exc:
        raise ValueError(f"{path}: corrupt PNG data: {exc}") from None
    if len(raw) != expected:
        raise ValueError(f"{path}: PNG data has {'more than ' if len(raw) > expected else ''}{len(raw)} bytes, "
                         f"expected {expected}")
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(height, stride + 1)
    pixels = np.zeros((height, stride), dtype=np.int32)
    for y in range(height):
        _unfilter_row(rows[y, 0], rows[y, 1:].astype(np.int32), pixels, y, channels)
    image = pixels.reshape(height, width, channels).astype(np.float64)
    if channels in (2, 4):  # drop alpha
        image = image[..., :-1]
    return np.rint(image.mean(axis=2)).astype(np.uint8)


def _unfilter_row(kind: int, row: np.ndarray, out: np.ndarray, y: int, bpp: int) -> None:
    prior = out[y - 1] if y > 0 else np.zeros_like(row)
    if kind == 0:
        out[y] = row
    elif kind == 1:  # each byte adds the one bpp to its left: a running sum per channel
        out[y] = np.cumsum(row.reshape(-1, bpp), axis=0, dtype=np.int64).reshape(-1) & 0xFF
    elif kind == 2:
        out[y] = (row + prior) & 0xFF
    elif kind in (3, 4):  # sequential along the row: plain Python ints are faster than numpy scalars here
        cur, raw, up = [0] * len(row), row.tolist(), prior.tolist()
        for i in range(len(raw)):
            left = cur[i - bpp] if i >= bpp else 0
            if kind == 3:
                pred = (left + up[i]) >> 1
            else:
                up_left = up[i - bpp] if i >= bpp else 0
                p = left + up[i] - up_left
                pa, pb, pc = abs(p - left), abs(p - up[i]), abs(p - up_left)
                pred = left if pa <= pb and pa <= pc else (up[i] if pb <= pc else up_left)
            cur[i] = (raw[i] + pred) & 0xFF
        out[y] = cur
    else:
        raise ValueError(f"unknown PNG filter type {kind}")
