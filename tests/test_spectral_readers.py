"""Cube readers: ENVI (all interleaves, dtypes, byte orders), GeoTIFF, .npy; windows; wavelength lookup; errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from geovl.spectral import SpectralError
from geovl.spectral.cube import Window, array_cube, iter_windows, parse_wavelength
from geovl.spectral.envi import EnviWriter, open_envi, write_envi
from geovl.spectral.readers import open_cube, write_cube_geotiff, write_npy

DTYPES = ["u1", "i2", "i4", "f4", "f8", "u2", "u4", "i8", "u8"]
WL_UM = [0.45, 0.55, 0.65, 0.86, 1.65]
GEO = dict(crs="EPSG:32650", transform=(30.0, 0.0, 500000.0, 0.0, -30.0, 4000000.0))


def _data(dtype: str, shape=(5, 7, 9), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    if dt.kind == "f":
        return rng.normal(0, 1000, shape).astype(dt)
    info = np.iinfo(dt)
    lo, hi = max(info.min, -(2**40)), min(info.max, 2**40)
    return rng.integers(lo, hi, shape, dtype=np.int64 if dt.kind == "i" else np.uint64, endpoint=True).astype(dt)


@pytest.mark.parametrize("interleave", ["bsq", "bil", "bip"])
@pytest.mark.parametrize("byte_order", [0, 1])
def test_envi_roundtrip_exact(tmp_path, interleave, byte_order):
    for dt in DTYPES:
        d = _data(dt)
        hdr = write_envi(
            tmp_path / f"c_{dt}.img",
            d,
            interleave=interleave,
            byte_order=byte_order,
            header_offset=17,
            wavelengths=WL_UM,
            wavelength_units="Micrometers",
            **GEO,
        )
        with open_cube(hdr) as c:
            assert c.fmt == "envi" and c.dtype == np.dtype(dt) and c.shape == d.shape
            assert c.interleave == interleave and c.byte_order == byte_order and c.header_offset == 17
            out = c.read()
            assert out.dtype.isnative and np.array_equal(out, d)
            w = Window(col_off=3, row_off=2, width=5, height=4)
            assert np.array_equal(c.read([4, 0, 2], w), d[[4, 0, 2], 2:6, 3:8])
            assert np.array_equal(c.read([1, 2, 3], w), d[1:4, 2:6, 3:8])
        # opening by the data file finds the header too
        assert np.array_equal(open_cube(tmp_path / f"c_{dt}.img").read(), d)
    raw = (tmp_path / "c_i2.img").read_bytes()
    assert raw[:17] == b"\0" * 17 and len(raw) == 17 + 5 * 7 * 9 * 2


def test_gdal_reads_what_we_write(tmp_path):
    import rasterio

    d = _data("i2")
    write_envi(tmp_path / "g.img", d, interleave="bil", byte_order=1, wavelengths=[450, 550, 650, 860, 1650], **GEO)
    with rasterio.open(tmp_path / "g.img") as ds:
        assert np.array_equal(ds.read(), d)
        assert ds.crs.to_epsg() == 32650
        assert tuple(ds.transform)[:6] == GEO["transform"]


def test_wavelength_units_and_lookup(tmp_path):
    hdr = write_envi(
        tmp_path / "um.img", _data("f4"), wavelengths=WL_UM, wavelength_units="micrometers", fwhm=[0.01] * 5, **GEO
    )
    c = open_cube(hdr)
    assert np.allclose(c.wavelengths, [450, 550, 650, 860, 1650])
    assert np.allclose(c.fwhm, 10.0)
    assert c.band_index(610) == 2 and c.band_index(860) == 3 and c.band_index(1.6, unit="um") == 4
    assert c.band_index(0.5, unit="µm") in (0, 1)
    with pytest.raises(SpectralError, match=r"um\.hdr.*2200 nm is outside.*450–1650"):
        c.band_index(2200)
    with pytest.raises(SpectralError, match="outside"):
        c.band_index(300)
    assert parse_wavelength("2.2um") == pytest.approx(2200) and parse_wavelength("2200nm") == 2200
    assert parse_wavelength("2.2") == pytest.approx(2200) and parse_wavelength("850") == 850
    # header without units: values < 30 are micrometres
    text = (tmp_path / "um.hdr").read_text().replace("wavelength units = micrometers\n", "")
    (tmp_path / "um.hdr").write_text(text)
    assert np.allclose(open_cube(hdr).wavelengths, [450, 550, 650, 860, 1650])


def test_no_wavelengths_lookup_error(tmp_path):
    c = open_cube(write_envi(tmp_path / "nowl.img", _data("u1")))
    with pytest.raises(SpectralError, match=r"nowl\.hdr: no wavelength information"):
        c.band_index(600)


def test_nodata_scale_bbl_and_map_info(tmp_path):
    d = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4) * 10
    d[1, 0, 0] = -9999
    hdr = write_envi(
        tmp_path / "n.img", d, wavelengths=[500, 600], good_bands=[True, False], nodata=-9999, scale=10000, **GEO
    )
    c = open_cube(hdr)
    assert c.nodata == -9999 and c.scale == 10000 and c.good_bands.tolist() == [True, False]
    f = c.read_float()
    assert np.isnan(f[1, 0, 0]) and np.isfinite(f).sum() == d.size - 1
    assert f[0, 2, 3] == pytest.approx(d[0, 2, 3] / 10000)
    assert c.band_index(590, good_only=True) == 0 and c.band_index(590) == 1
    assert c.crs == "EPSG:32650" and c.transform == GEO["transform"]
    # map info alone (no WKT): the UTM zone gives the CRS; the reference pixel is honoured
    text = (tmp_path / "n.hdr").read_text().splitlines()
    text = [t for t in text if not t.startswith("coordinate system string")]
    text = [
        (
            "map info = {UTM, 2, 3, 500030.0, 3999940.0, 30.0, 30.0, 51, North, WGS-84, units=Meters}"
            if t.startswith("map info")
            else t
        )
        for t in text
    ]
    (tmp_path / "n.hdr").write_text("\n".join(text) + "\n")
    c = open_cube(hdr)
    assert c.crs == "EPSG:32651" and c.transform == (30.0, 0.0, 500000.0, 0.0, -30.0, 4000000.0)


def _hdr(tmp_path, body: str, nbytes: int, name="bad"):
    (tmp_path / f"{name}.img").write_bytes(b"\0" * nbytes)
    (tmp_path / f"{name}.hdr").write_text(body)
    return tmp_path / f"{name}.hdr"


BASE = "ENVI\nsamples = 4\nlines = 3\nbands = 2\nheader offset = 0\ndata type = 2\ninterleave = bsq\nbyte order = 0\n"


@pytest.mark.parametrize(
    "body,nbytes,match",
    [
        (BASE, 47, r"bad\.img: data file has 47 bytes but header bad\.hdr describes 48"),
        (BASE, 49, "describes 48"),
        (BASE.replace("header offset = 0", "header offset = 5"), 48, "describes 53"),
        (BASE + "wavelength = {600, 500}\n", 48, r"bad\.hdr: wavelengths are not strictly increasing"),
        (BASE + "wavelength = {500}\n", 48, r"`wavelength` has 1 values but the header says bands = 2"),
        (BASE + "wavelength = {500, abc}\n", 48, "non-number"),
        (BASE + "wavelength units = furlongs\nwavelength = {1, 2}\n", 48, "unknown wavelength units 'furlongs'"),
        (BASE.replace("bsq", "bxq"), 48, r"bad\.hdr: unknown `interleave = bxq`"),
        (BASE.replace("data type = 2", "data type = 6"), 48, r"bad\.hdr: unsupported `data type = 6`"),
        (BASE.replace("data type = 2", "data type = 99"), 48, "unsupported `data type = 99`"),
        (BASE.replace("byte order = 0", "byte order = 2"), 48, "byte order"),
        (BASE.replace("samples = 4\n", ""), 48, "required header field `samples` is missing"),
        (BASE.replace("ENVI\n", "NOTENVI\n"), 48, r"bad\.hdr: not an ENVI header"),
        (BASE + "description = {unterminated\n", 48, "unterminated"),
    ],
)
def test_envi_header_errors(tmp_path, body, nbytes, match):
    with pytest.raises(SpectralError, match=match):
        open_cube(_hdr(tmp_path, body, nbytes))


def test_envi_missing_files(tmp_path):
    (tmp_path / "lonely.hdr").write_text(BASE)
    with pytest.raises(SpectralError, match=r"lonely\.hdr: no data file"):
        open_cube(tmp_path / "lonely.hdr")
    (tmp_path / "orphan.img").write_bytes(b"\0" * 48)
    with pytest.raises(SpectralError, match=r"orphan\.img: unknown cube format"):
        open_cube(tmp_path / "orphan.img")
    with pytest.raises(SpectralError, match="no such file"):
        open_cube(tmp_path / "nothing.hdr")


def test_envi_writer_chunks_and_partial(tmp_path):
    d = _data("u2", (3, 10, 6))
    with EnviWriter(tmp_path / "w.img", 3, 10, 6, "u2", interleave="bip", byte_order=1) as w:
        for win in iter_windows(array_cube(d), rows=4):
            w.write(d[:, *win.toslices()], win)
    assert np.array_equal(open_envi(tmp_path / "w.hdr").read(), d)
    with pytest.raises(RuntimeError):
        with EnviWriter(tmp_path / "x.img", 3, 10, 6, "u2") as w:
            w.write(d[:, :4], Window(col_off=0, row_off=0, width=6, height=4))
            raise RuntimeError("interrupted")
    assert not (tmp_path / "x.img").exists() and not (tmp_path / "x.hdr").exists()
    assert (tmp_path / "x.img.partial").exists()


def test_iter_windows_cover_once():
    c = array_cube(np.zeros((2, 23, 17), np.uint8))
    seen = np.zeros((23, 17), int)
    wins = list(iter_windows(c, rows=5, cols=6))
    for w in wins:
        seen[w.toslices()] += 1
    assert (seen == 1).all() and len(wins) == 5 * 3
    assert [w.height for w in iter_windows(c, rows=10)] == [10, 10, 3]
    with pytest.raises(SpectralError, match="outside"):
        c.read(window=Window(col_off=0, row_off=20, width=17, height=5))


def test_geotiff_roundtrip_keeps_crs(tmp_path):
    from rasterio.crs import CRS

    d = _data("i2")
    p = write_cube_geotiff(
        tmp_path / "c.tif",
        d,
        wavelengths=[450, 550, 650, 860, 1650],
        fwhm=[5, 5, 5, 10, 10],
        good_bands=[1, 1, 1, 1, 0],
        nodata=-32768,
        scale=10000,
        **GEO,
    )
    with open_cube(p) as c:
        assert c.fmt == "geotiff" and np.array_equal(c.read(), d)
        assert CRS.from_user_input(c.crs) == CRS.from_epsg(32650) and c.transform == GEO["transform"]
        assert c.wavelengths.tolist() == [450, 550, 650, 860, 1650] and c.fwhm.tolist() == [5, 5, 5, 10, 10]
        assert c.good_bands.tolist() == [True] * 4 + [False] and c.scale == 10000 and c.nodata == -32768
        assert np.array_equal(c.read([3, 1], Window(col_off=2, row_off=1, width=4, height=3)), d[[3, 1], 1:4, 2:6])
    # ENVI → GeoTIFF → same cube and CRS as the ENVI file
    e = open_cube(write_envi(tmp_path / "e.img", d, wavelengths=[450, 550, 650, 860, 1650], **GEO))
    assert CRS.from_user_input(e.crs) == CRS.from_user_input(open_cube(p).crs)


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_geotiff_imagery_domain_wavelengths(tmp_path):
    import rasterio

    d = _data("f4", (3, 4, 5))
    with rasterio.open(tmp_path / "i.tif", "w", driver="GTiff", width=5, height=4, count=3, dtype="float32") as ds:
        ds.write(d)
        for i, w in enumerate([0.5, 1.0, 2.2], 1):
            ds.update_tags(i, ns="IMAGERY", CENTRAL_WAVELENGTH_UM=str(w), FWHM_UM="0.01")
    c = open_cube(tmp_path / "i.tif")
    assert np.allclose(c.wavelengths, [500, 1000, 2200]) and np.allclose(c.fwhm, 10) and c.crs is None
    assert c.band_index(2.15, unit="um") == 2


@pytest.mark.parametrize("layout", ["bands-first", "bands-last"])
def test_npy_layouts(tmp_path, layout):
    d = _data("f4", (4, 6, 5))
    write_npy(
        tmp_path / "c.npy", d, layout=layout, wavelength=[0.5, 0.6, 0.7, 0.8], wavelength_units="um", nodata=-1.0, **GEO
    )
    assert json.loads((tmp_path / "c.json").read_text())["layout"] == layout
    c = open_cube(tmp_path / "c.npy")
    assert c.shape == d.shape and np.array_equal(c.read(), d) and c.wavelengths.tolist() == [500, 600, 700, 800]
    assert np.array_equal(c.read([2, 0], Window(col_off=1, row_off=1, width=2, height=3)), d[[2, 0], 1:4, 1:3])
    assert c.crs == "EPSG:32650" and c.nodata == -1.0
    # without a sidecar: layout from the argument (default bands-first), wavelengths from the caller
    (tmp_path / "c.json").unlink()
    c2 = open_cube(tmp_path / "c.npy", layout=layout, wavelengths=[500, 600, 700, 800])
    assert np.array_equal(c2.read(), d) and c2.band_index(690) == 2
    raw = np.load(tmp_path / "c.npy")
    assert raw.shape == ((4, 6, 5) if layout == "bands-first" else (6, 5, 4))


def test_npy_errors(tmp_path):
    np.save(tmp_path / "flat.npy", np.zeros((3, 4)))
    with pytest.raises(SpectralError, match=r"flat\.npy: a cube must be 3-D"):
        open_cube(tmp_path / "flat.npy")
    np.save(tmp_path / "c.npy", np.zeros((3, 4, 5)))
    with pytest.raises(SpectralError, match="layout must be"):
        open_cube(tmp_path / "c.npy", layout="sideways")
    with pytest.raises(SpectralError, match=r"c\.npy: 2 wavelengths for 3 bands"):
        open_cube(tmp_path / "c.npy", wavelengths=[500, 600])
    with pytest.raises(SpectralError, match="not strictly increasing"):
        open_cube(tmp_path / "c.npy", wavelengths=[500, 700, 600])


def test_rotated_map_info_reads_as_rotated_affine(tmp_path, capsys):
    """AVIRIS-NG style ``rotation=`` in map info: the rotated affine GDAL reads from the same header
    (was: "rotated `map info` is not supported", also in `geovl spectral info`)."""
    import json

    import rasterio

    from geovl.cli import main

    hdr = write_envi(tmp_path / "rot.img", _data("u2", (2, 3, 4)), wavelengths=[500, 600])
    text = [t for t in hdr.read_text().splitlines() if not t.startswith(("map info", "coordinate system string"))]
    text.append("map info = {UTM, 1, 1, 500000.0, 4000000.0, 2.0, 3.0, 50, North, WGS-84, units=Meters, rotation=30.0}")
    hdr.write_text("\n".join(text) + "\n")
    c = open_cube(hdr)
    with rasterio.open(tmp_path / "rot.img") as ds:
        want = ds.transform
    assert c.transform == pytest.approx((want.a, want.b, want.c, want.d, want.e, want.f))
    assert c.transform[1] != 0 and c.transform[3] != 0  # rotated
    assert c.transform[0] == pytest.approx(2.0 * np.cos(np.radians(30)))
    assert c.crs == "EPSG:32650"
    assert main(["spectral", "info", str(hdr)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["transform"] == pytest.approx(list(c.transform))
