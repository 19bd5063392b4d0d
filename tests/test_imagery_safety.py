"""The one image-safety module: one signature table, one error family, PIL's own bomb guard left armed."""

import io
import struct
import subprocess
import sys
import textwrap
import zlib

import numpy as np
import pytest
from PIL import Image

from geovl.errors import GeoVLError
from geovl.imagery import decode, safety
from geovl.imagery.safety import (
    ImageError,
    ImageLimits,
    ImageRefError,
    ImageTooLarge,
    check_image,
    image_format,
    read_header,
)


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width × height`` 8-bit grey pixels (signature, IHDR, one tiny IDAT, IEND)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def encoded(fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_one_signature_table():
    for fmt, want in [
        ("PNG", "PNG"),
        ("JPEG", "JPEG"),
        ("GIF", "GIF"),
        ("BMP", "BMP"),
        ("WEBP", "WEBP"),
        ("TIFF", "TIFF"),
    ]:
        assert image_format(encoded(fmt)) == want
    assert image_format(b"MM\x00+" + b"\0" * 12) == "TIFF" and image_format(b"\xff\x4f\xff\x51") == "JPEG2000"
    assert image_format(b"<VRTDataset>") is None and image_format(b"") is None
    assert decode.TIFF_MAGICS is safety.TIFF_MAGICS and decode.JP2_MAGICS is safety.JP2_MAGICS
    assert set(safety.TIFF_MAGICS) | set(safety.JP2_MAGICS) | set(safety.FORMATS) == {m for m, _ in safety.MAGICS}
    from geovl.serve import images

    assert images.image_format is image_format and images.ImageRefError is ImageRefError  # HTTP side: same module


def test_one_error_family():
    assert issubclass(ImageError, GeoVLError) and issubclass(ImageTooLarge, ImageError)
    assert issubclass(ImageRefError, ImageError) and decode.ImageError is ImageError
    e = ImageRefError("image data is empty / 图像数据为空", "invalid_image")
    assert str(e) == e.message == "image data is empty / 图像数据为空" and e.code == e.reason == "invalid_image"
    assert e.status == 400 and e.exit_code == 2
    with pytest.raises(ImageRefError) as r:
        check_image(b"not an image", ImageLimits())
    assert r.value.code == "invalid_image" and "not a PNG" in str(r.value)


def test_our_guard_names_the_bomb_before_decoding():
    bomb = png_header(12_000, 12_000)
    assert read_header(bomb).pixels == 144_000_000  # read without PIL's guard, nothing decoded
    with pytest.raises(ImageTooLarge, match="144000000 px > limit 64000000") as e:
        decode.load_image_bytes(bomb, name="bomb.png")
    assert e.value.reason == "image_too_large" and e.value.limit == "pixels"
    with pytest.raises(ImageRefError) as r:
        check_image(bomb, ImageLimits())
    assert r.value.code == "image_too_many_pixels" and r.value.status == 413


def test_pil_guard_stays_finite_and_refuses_bombs_elsewhere(tmp_path):
    """Importing geovl leaves PIL's decompression-bomb guard armed at a finite limit tied to our
    decoded-bytes limit, so plain PIL code elsewhere in the same process still refuses a bomb."""
    (tmp_path / "bomb.png").write_bytes(png_header(12_000, 12_000))  # 144 M px > 2 × 67.1 M
    (tmp_path / "big.png").write_bytes(png_header(9_000, 9_000))  # 81 M px: PIL warns
    code = textwrap.dedent(f"""
        import warnings
        import geovl.imagery.decode, geovl.imagery.safety, geovl.serve.images, geovl.geo.tiles, geovl.data.convert
        from PIL import Image
        lim = Image.MAX_IMAGE_PIXELS
        assert lim is not None and 0 < lim < float("inf"), lim
        assert lim == geovl.imagery.safety.DEFAULT_MAX_DECODED_BYTES // 8 == 67108864, lim
        try:
            Image.open({str(tmp_path / "bomb.png")!r}).load()
        except Image.DecompressionBombError as e:
            print("refused:", e)
        else:
            raise SystemExit("PIL decoded a decompression bomb")
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            Image.open({str(tmp_path / "big.png")!r})
        assert any(issubclass(x.category, Image.DecompressionBombWarning) for x in w), w
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "refused: Image size (144000000 pixels) exceeds limit of 134217728 pixels" in r.stdout and "ok" in r.stdout
