import os
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest

from pysmpc.serve.images import MAX_PIXELS, load_image


def _png(path, pixels: np.ndarray, colour: int, filters):
    """Write a PNG by hand with the given row filters (Pillow picks its own when it saves)."""
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

    ihdr = struct.pack(">IIBBBBB", w, h, 8, colour, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(bytes(raw)))
                     + _chunk(b"IEND", b""))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


# Decoding image files needs Pillow (pysmpc[images]); .npy files do not.
def _pillow():
    return pytest.importorskip("PIL.Image")


@pytest.mark.parametrize("filters", [[0], [1], [2], [3], [4], [0, 1, 2, 3, 4]])
def test_png_grey_with_every_filter(tmp_path, filters):
    _pillow()
    pixels = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    _png(tmp_path / "x.png", pixels, 0, filters)
    image = load_image(tmp_path / "x.png")
    assert image.dtype == np.uint8  # as stored: the query path scales it for the model (serve/inputs.py)
    np.testing.assert_array_equal(image[..., 0], pixels)


def test_png_rgba_is_averaged_to_grey(tmp_path):
    _pillow()
    pixels = np.random.default_rng(1).integers(0, 256, (5, 7, 4), dtype=np.uint8)
    _png(tmp_path / "c.png", pixels, 6, [4, 1])
    np.testing.assert_array_equal(load_image(tmp_path / "c.png")[..., 0], np.rint(pixels[..., :3].mean(axis=2)))


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".gif", ".tif", ".webp", ".pgm", ".png-without-suffix"])
def test_lossless_formats_read_exactly(tmp_path, suffix):
    Image = _pillow()
    pixels = np.random.default_rng(2).integers(0, 256, (28, 28), dtype=np.uint8)
    path = tmp_path / f"digit{suffix}"
    kind = {".webp": "WEBP", ".png-without-suffix": "PNG"}.get(suffix)
    if kind == "WEBP":
        from PIL import features

        if not features.check("webp"):
            pytest.skip("this Pillow has no WebP support")
        Image.fromarray(pixels).save(path, format=kind, lossless=True)
    else:
        Image.fromarray(pixels).save(path, format=kind)
    image = load_image(path)
    assert image.shape == (28, 28, 1) and image.dtype == np.uint8
    np.testing.assert_array_equal(image[..., 0], pixels)


def test_jpeg_is_read_within_its_compression_error(tmp_path):
    Image = _pillow()
    y, x = np.mgrid[:28, :28]
    pixels = np.clip(255 * np.exp(-((y - 14) ** 2 + (x - 14) ** 2) / 60), 0, 255).astype(np.uint8)  # a smooth blob
    Image.fromarray(np.stack([pixels] * 3, axis=2)).save(tmp_path / "digit.jpg", quality=95)
    image = load_image(tmp_path / "digit.jpg")[..., 0]
    assert image.shape == (28, 28)
    assert np.abs(image.astype(np.float64) - pixels).max() < 0.05 * 255  # JPEG at quality 95 on a smooth image
    assert image.argmax() == pixels.argmax()


def test_sixteen_bit_and_palette_pngs(tmp_path):
    Image = _pillow()
    wide = np.arange(28 * 28, dtype=np.uint16).reshape(28, 28) * 83
    Image.fromarray(wide).save(tmp_path / "wide.png")
    np.testing.assert_allclose(load_image(tmp_path / "wide.png")[..., 0], wide / 65535.0)
    pixels = np.random.default_rng(3).integers(0, 256, (6, 6, 3), dtype=np.uint8)
    Image.fromarray(pixels).quantize(colors=8).save(tmp_path / "palette.png")
    expected = np.rint(np.asarray(Image.open(tmp_path / "palette.png").convert("RGB"), np.float64).mean(axis=2))
    np.testing.assert_allclose(load_image(tmp_path / "palette.png")[..., 0], expected)


def test_size_limits_hold_before_decoding(tmp_path):
    Image = _pillow()
    bomb = zlib.compress(bytes(1 << 26))  # 64 MiB of zeros in 64 kB

    def header_only_png(width, height):
        ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
        path = tmp_path / f"{width}x{height}.png"
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", bomb) + _chunk(b"IEND", b""))
        return path

    # Over MAX_PIXELS, under Pillow's limit: ours refuses it from the header.
    with pytest.raises(ValueError, match=f"PNG image of 2000 x 2000 pixels; at least 1 and at most {MAX_PIXELS}"):
        load_image(header_only_png(2000, 2000))
    # Over Pillow's warning threshold and over its error threshold: both refused, by Pillow's limit.
    for side in (10_000, 20_000):
        with pytest.raises(ValueError, match="decompression-bomb limit"):
            load_image(header_only_png(side, side))
    # A small image whose data inflates far beyond it: decoded to its size, no further.
    assert load_image(header_only_png(28, 28)).shape == (28, 28, 1)
    assert Image.MAX_IMAGE_PIXELS == 89478485  # untouched: Pillow's default limit stays in force


def test_pillows_own_limit_is_kept(tmp_path, monkeypatch):
    Image = _pillow()
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "digit.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # 784 pixels: over the warning threshold, under 2x
    with pytest.raises(ValueError, match="decompression-bomb limit.*784 pixels"):
        load_image(tmp_path / "digit.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300)  # over twice the limit: Pillow raises
    with pytest.raises(ValueError, match="decompression-bomb limit.*784 pixels"):
        load_image(tmp_path / "digit.png")


def test_files_that_are_no_image_we_read(tmp_path):
    _pillow()
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="bad.png: not an image file Pillow reads as one of PNG, JPEG"):
        load_image(tmp_path / "bad.png")
    # Pillow reads EPS through Ghostscript, another program: not among the formats read.
    (tmp_path / "x.eps").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 28 28\nshowpage\n")
    with pytest.raises(ValueError, match="x.eps: not an image file"):
        load_image(tmp_path / "x.eps")
    with pytest.raises(ValueError, match="missing.jpg: cannot read the file: No such file"):
        load_image(tmp_path / "missing.jpg")
    Image = _pillow()
    Image.fromarray(np.zeros((4, 4), np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(ValueError, match="32-bit float images are not read"):
        load_image(tmp_path / "float.tif")
    good = tmp_path / "good.png"
    Image.fromarray(np.random.default_rng(4).integers(0, 256, (28, 28), dtype=np.uint8)).save(good)
    (tmp_path / "cut.png").write_bytes(good.read_bytes()[:400])  # in the middle of the pixel data
    with pytest.raises(ValueError, match="cut.png: corrupt or unreadable image"):
        load_image(tmp_path / "cut.png")


def test_without_pillow_the_error_names_the_extra(tmp_path):
    # A PIL package that cannot be imported, first on the path: as if Pillow were not installed.
    fake = tmp_path / "no_pillow" / "PIL"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named PIL')\n")
    np.save(tmp_path / "digit.npy", np.zeros((28, 28), np.uint8))
    code = ("import sys; from pysmpc.serve.images import load_image\n"
            f"print(load_image({str(tmp_path / 'digit.npy')!r}).shape)\n"
            f"try:\n    load_image({str(tmp_path / 'digit.png')!r})\n"
            "except ImportError as exc:\n    print('ImportError:', exc)\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(fake.parent), *sys.path]))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "(28, 28, 1)" in result.stdout  # .npy needs no Pillow
    assert "ImportError:" in result.stdout and "pip install 'pysmpc[images]'" in result.stdout, result.stdout


def test_npy_uint8_and_errors(tmp_path):
    np.save(tmp_path / "a.npy", np.full((28, 28), 255, np.uint8))
    image = load_image(tmp_path / "a.npy")
    assert image.shape == (28, 28, 1) and image.dtype == np.uint8 and image.max() == 255
    np.save(tmp_path / "b.npy", np.full((28, 28), 2.0))
    assert load_image(tmp_path / "b.npy").max() == 2.0  # as stored: the query path checks the model's range
