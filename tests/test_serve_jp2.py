"""API image uploads accept JPEG2000 (Sentinel-2's format) through the one render path, with the same
size checks from the header before anything is decoded. Before: "not a PNG, JPEG, WebP, GIF, BMP or
TIFF image"."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from geovl.imagery.decode import read_header
from geovl.inference.engine import decode_image
from geovl.serve.images import ImageLimits, ImageRefError, check_image, fetch_image, image_format
from serve_util import data_uri

H, W = 48, 80
PROFILE = dict(crs="EPSG:32650", transform=from_origin(440000, 4065000, 10, 10))


def _bgrn() -> np.ndarray:
    rng = np.random.default_rng(3)
    a = np.empty((4, H, W), np.uint16)
    a[:, :, : W // 2] = np.array([1800, 1200, 600, 300])[:, None, None]
    a[:, :, W // 2 :] = np.array([500, 900, 400, 4000])[:, None, None]
    return (a + rng.integers(0, 200, a.shape)).astype(np.uint16)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    with rasterio.Env() as env:
        if "JP2OpenJPEG" not in env.drivers():
            pytest.skip("this rasterio build has no JP2OpenJPEG driver")
    d = tmp_path_factory.mktemp("jp2")
    data = _bgrn()
    out = {}
    for name, driver, kw in (
        ("tif", "GTiff", {}),
        ("jp2", "JP2OpenJPEG", {"QUALITY": "100", "REVERSIBLE": "YES"}),
        ("j2k", "JP2OpenJPEG", {"QUALITY": "100", "REVERSIBLE": "YES", "CODEC": "J2K"}),
    ):
        path = d / f"a.{name}"
        with rasterio.open(
            path, "w", driver=driver, width=W, height=H, count=4, dtype="uint16", **PROFILE, **kw
        ) as dst:
            dst.write(data)
        out[name] = path.read_bytes()
    return out


def test_header_sizes_come_from_the_codestream(files):
    for name in ("jp2", "j2k"):
        b = files[name]
        assert image_format(b) == "JPEG2000"
        h = read_header(b)
        # 4 bands of 16 bits: Pillow's header guess says 1 byte per sample
        assert (h.format, h.width, h.height, h.bands, h.bytes_per_sample) == ("JPEG2000", W, H, 4, 2)
        assert h.decoded_bytes == W * H * 4 * 2


def test_upload_accepted_and_rendered_like_the_geotiff(files):
    limits = ImageLimits()
    want = np.asarray(decode_image(files["tif"], None))
    for name in ("jp2", "j2k"):
        assert check_image(files[name], limits) == (W, H)
        data = fetch_image(data_uri(files[name], "image/jp2"), limits)
        got = np.asarray(decode_image(data, None))  # the engine's decoder: the one render path
        assert got.shape == (H, W, 3) and np.array_equal(got, want)


def test_size_limits_apply_before_decoding(files, monkeypatch):
    import rasterio.io

    def no_gdal(*a, **k):
        raise AssertionError("GDAL opened an image that the header check should have refused")

    monkeypatch.setattr(rasterio.io, "MemoryFile", no_gdal)
    with pytest.raises(ImageRefError) as e:
        check_image(files["jp2"], ImageLimits(max_pixels=W * H - 1))
    assert e.value.code == "image_too_many_pixels" and e.value.status == 413
    # between Pillow's 8-bit guess (W*H*4) and the true 16-bit size (W*H*8): refused
    with pytest.raises(ImageRefError) as e:
        check_image(files["jp2"], ImageLimits(max_decoded_bytes=W * H * 6))
    assert e.value.code == "image_too_large_decoded"


def test_corrupt_jp2_is_a_clear_error(files):
    b = files["jp2"]
    with pytest.raises(ImageRefError) as e:
        check_image(b[: len(b) // 3], ImageLimits())
    assert e.value.code == "invalid_image" and "JPEG2000" in e.value.message
