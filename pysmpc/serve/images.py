"""Read query images: .npy arrays, and PNG, JPEG and other raster files through Pillow (pysmpc[images])."""

from __future__ import annotations

import os
import tokenize
import warnings

import numpy as np

__all__ = ["IMAGE_FORMATS", "MAX_PIXELS", "MISSING_PILLOW", "load_image"]

#: The most pixels a query image may have. A query image is small (MNIST: 28 x 28); a larger one is
#: refused before it is decoded, so a few bytes of compressed data cannot inflate to gigabytes.
MAX_PIXELS = 1 << 20
#: The Pillow formats read: the common raster ones. Formats Pillow decodes through another
#: program (EPS through Ghostscript) are not among them.
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM")
#: The message of the ImportError raised when an image file is given and Pillow is missing.
MISSING_PILLOW = "reading image files needs Pillow: pip install 'pysmpc[images]' (or pip install Pillow)"


class _NotAnImage(Exception):
    """A well-formed file that holds no image we read (its message goes to the caller's ValueError)."""


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Return an image as stored, (H, W, C): uint8 pixels 0-255 from an 8-bit image file, a .npy as it holds it.

    No scaling here: the query path (Client.query_model, serve/inputs.py)
    fits every input to the served model's input range the same way, so a
    file and an array give the same answer (a uint8 image is divided by
    255 for a model trained on [0, 1], with a note). .npy: real or bool
    dtypes, as stored; (H, W) gains a channel axis. Any other file is
    decoded by Pillow if it is one of IMAGE_FORMATS (PNG, JPEG, BMP, GIF,
    TIFF, WebP, PPM/PGM; the first frame of an animation): 8-bit images
    come back as uint8 pixels, colour averaged to grey (rounded) and alpha
    dropped; 16-bit greyscale as float64 divided by 65535. At most
    MAX_PIXELS pixels, checked from the header before decoding; Pillow's
    own decompression-bomb limit (PIL.Image.MAX_IMAGE_PIXELS) is kept and,
    from its warning threshold on, is an error.

    Raises:
        ValueError: not a readable .npy or image file, the wrong dtype,
            shape or size, or values that are not finite; the message names
            the file and the problem.
        ImportError: an image file (not .npy) and Pillow is not installed.
    """
    path = os.fspath(path)
    if path.endswith(".npy"):
        image = _read_npy(path)
    else:
        image = _read_picture(path)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or min(image.shape) < 1:
        raise ValueError(f"{path}: expected an (H, W) or (H, W, C) image, got shape {image.shape}")
    if image.dtype.kind == "f" and not np.all(np.isfinite(image)):
        raise ValueError(f"{path}: the image contains NaN or infinite values")
    return image


def _read_picture(path: str) -> np.ndarray:
    """Decode an image file with Pillow into (H, W) grey: uint8 pixels, or float64 in [0, 1] from 16 bits."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise ImportError(f"{path}: {MISSING_PILLOW}") from None
    kinds = ", ".join(IMAGE_FORMATS)
    try:
        with warnings.catch_warnings():
            # Over MAX_IMAGE_PIXELS Pillow only warns (over twice that it raises): refuse both.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=IMAGE_FORMATS) as picture:  # reads the header only
                width, height = picture.size
                if not 1 <= width * height <= MAX_PIXELS:
                    raise _NotAnImage(f"{picture.format} image of {width} x {height} pixels; at least 1 and at "
                                      f"most {MAX_PIXELS} are read")
                if picture.mode.startswith("I;16"):
                    return np.asarray(picture, dtype=np.float64) / 65535.0
                if picture.mode in ("I", "F"):
                    raise _NotAnImage(f"32-bit {'integer' if picture.mode == 'I' else 'float'} images are not "
                                      "read: save it with 8 or 16 bits per sample, or as a .npy array")
                return np.rint(np.asarray(picture.convert("RGB"), dtype=np.float64).mean(axis=2)).astype(np.uint8)
    except _NotAnImage as exc:
        raise ValueError(f"{path}: {exc}") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ValueError(f"{path}: refused by Pillow's decompression-bomb limit: {exc}") from None
    except UnidentifiedImageError:
        raise ValueError(f"{path}: not an image file Pillow reads as one of {kinds} (or a .npy array)") from None
    except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        raise ValueError(f"{path}: cannot read the file: {exc.strerror}") from None
    # Pillow's decoders report corrupt data as OSError, SyntaxError, EOFError, struct.error,
    # zlib.error and more; to the caller they all mean the same.
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"{path}: corrupt or unreadable image: {type(exc).__name__}: {str(exc)[:200]}") from None


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
