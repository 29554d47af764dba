import struct
import zlib

import numpy as np
import pytest

from pysmpc.serve.images import load_image


def _png(path, pixels: np.ndarray, colour: int, filters):
    h, w = pixels.shape[:2]
    channels = {0: 1, 2: 3, 6: 4}[colour]
    flat = pixels.reshape(h, w * channels).astype(np.int32)
    bpp = channels
    raw = bytearray()
    for y in range(h):
        kind = filters[y % len(filters)]
        prior = flat[y - 1] if y else np.zeros(w * channels, np.int32)
        row = flat[y]
        out = []
        for i in range(w * channels):
            left = row[i - bpp] if i >= bpp else 0
            up = prior[i]
            ul = prior[i - bpp] if i >= bpp else 0
            if kind == 0:
                pred = 0
            elif kind == 1:
                pred = left
            elif kind == 2:
                pred = up
            elif kind == 3:
                pred = (left + up) >> 1
            else:
                p = left + up - ul
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - ul)
                pred = left if pa <= pb and pa <= pc else (up if pb <= pc else ul)
            out.append((row[i] - pred) & 0xFF)
        raw += bytes([kind]) + bytes(out)

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, colour, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(raw)))
                     + chunk(b"IEND", b""))


@pytest.mark.parametrize("filters", [[0], [1], [2], [3], [4], [0, 1, 2, 3, 4]])
def test_png_grey_with_every_filter(tmp_path, filters):
    pixels = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    _png(tmp_path / "x.png", pixels, 0, filters)
    image = load_image(tmp_path / "x.png")
    assert image.dtype == np.uint8  # as stored: the query path scales it for the model (serve/inputs.py)
    np.testing.assert_array_equal(image[..., 0], pixels)


def test_png_rgba_is_averaged_to_grey(tmp_path):
    pixels = np.random.default_rng(1).integers(0, 256, (5, 7, 4), dtype=np.uint8)
    _png(tmp_path / "c.png", pixels, 6, [4, 1])
    np.testing.assert_array_equal(load_image(tmp_path / "c.png")[..., 0], np.rint(pixels[..., :3].mean(axis=2)))


def test_npy_uint8_and_errors(tmp_path):
    np.save(tmp_path / "a.npy", np.full((28, 28), 255, np.uint8))
    image = load_image(tmp_path / "a.npy")
    assert image.shape == (28, 28, 1) and image.dtype == np.uint8 and image.max() == 255
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="not a PNG"):
        load_image(tmp_path / "bad.png")
    with pytest.raises(ValueError, match=".png or .npy"):
        load_image(tmp_path / "x.jpg")
