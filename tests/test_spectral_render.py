"""Renderings: nearest-band composites, stretches, continuum-removed band depth, indices, CLI outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from geovl.cli import main
from geovl.spectral import SpectralError
from geovl.spectral import render as R
from geovl.spectral.cube import array_cube
from geovl.spectral.envi import write_envi
from geovl.spectral.readers import open_cube
from geovl.spectral.sensors import gf5b, resample

GEO = dict(crs="EPSG:32650", transform=(30.0, 0.0, 500000.0, 0.0, -30.0, 4000000.0))


def band_id_cube(wl, good=None, rows=4, cols=5):
    """Band b holds the value b + 1 everywhere (so a rendering shows which bands it used)."""
    wl = np.asarray(wl, float)
    data = np.broadcast_to((np.arange(wl.size, dtype=np.float32) + 1)[:, None, None], (wl.size, rows, cols)).copy()
    return array_cube(data, wl, good_bands=good)


def test_bands_rendering_picks_nearest_good_bands():
    wl = np.arange(400.0, 2501.0, 10.0)
    good = np.ones(wl.size, bool)
    good[wl == 1650] = False  # a bad band is skipped in favour of its nearest good neighbour
    c = band_id_cube(wl, good)
    spec = R.validate({"kind": "bands", "wavelengths": [2203, 1650, 600]})
    ch = R.channels(c, spec)
    assert [int(ch[i, 0, 0]) - 1 for i in range(3)] == [180, 124, 20]
    res = R.resolve(c, spec)
    assert res["bands"] == [180, 124, 20] and res["band_wavelengths"] == [2200.0, 1640.0, 600.0]
    json.dumps(res)  # serialisable
    p = R.preset("true_colour")
    assert R.resolve(c, p)["band_wavelengths"] == [640.0, 550.0, 470.0]
    assert R.preset("alteration")["wavelengths"] == [1650.0, 2200.0, 2330.0]


def test_stretches_and_nodata():
    wl = [500.0, 600.0, 700.0]
    data = np.stack([np.arange(100, dtype=np.float32).reshape(10, 10)] * 3)
    data[:, 0, 0] = np.nan
    c = array_cube(data, wl)
    rgb = R.render(
        c, {"kind": "bands", "wavelengths": [700, 600, 500], "stretch": {"mode": "fixed", "min": 0, "max": 99}}
    )
    assert rgb.shape == (10, 10, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0].tolist() == [0, 0, 0]  # nodata → black
    assert rgb[9, 9, 0] == 255 and rgb[5, 0, 1] == round(50 / 99 * 255)
    pct = R.render(
        c, {"kind": "bands", "wavelengths": [700, 600, 500], "stretch": {"mode": "percentile", "lo": 10, "hi": 90}}
    )
    lo, hi = np.percentile(np.arange(1, 100), [10, 90])
    assert pct[0, 1, 0] == 0 and pct[9, 9, 0] == 255
    assert pct[5, 0, 0] == round((50 - lo) / (hi - lo) * 255)
    with pytest.raises(SpectralError, match="3 wavelengths"):
        R.validate({"kind": "bands", "wavelengths": [500, 600]})
    with pytest.raises(SpectralError, match="kind"):
        R.validate({"kind": "magic"})
    with pytest.raises(SpectralError, match="unknown rendering"):
        R.preset("sepia")


def test_band_depth_flat_sloped_and_absorption():
    wl = np.arange(2000.0, 2500.0, 5.0)
    flat = array_cube(np.full((wl.size, 2, 3), 0.4, np.float32), wl)
    assert np.allclose(R.band_depth(flat, "AlOH"), 0.0, atol=1e-6)
    sloped = array_cube(
        np.broadcast_to((0.2 + wl / 5000).astype(np.float32)[:, None, None], (wl.size, 2, 3)).copy(), wl
    )
    assert np.allclose(R.band_depth(sloped, 2200), 0.0, atol=1e-6)
    # a 20 % deep triangular absorption centred at 2200 on a flat 0.5 continuum
    refl = 0.5 * (1 - 0.2 * np.clip(1 - np.abs(wl - 2200) / 40, 0, 1))
    c = array_cube(np.broadcast_to(refl.astype(np.float32)[:, None, None], (wl.size, 2, 3)).copy(), wl)
    assert np.allclose(R.band_depth(c, "AlOH"), 0.2, atol=1e-6)
    assert np.allclose(R.band_depth(c, "AlOH", mode="max"), 0.2, atol=1e-6)
    assert np.allclose(R.band_depth(c, {"left": 2100, "centre": 2180, "right": 2300}), 0.1, atol=1e-6)
    with pytest.raises(SpectralError, match="no known feature near 1500"):
        R.feature(1500)
    with pytest.raises(SpectralError, match="left < centre < right"):
        R.feature({"left": 2200, "centre": 2100, "right": 2300})


def test_band_depth_of_real_minerals():
    from geovl.spectral.library import named_library

    try:
        lib = named_library("minerals+background")
    except SpectralError as e:
        pytest.skip(str(e))
    s = gf5b()
    E = resample(lib.filled(), lib.wavelengths, s.centres, s.fwhm)
    cube = array_cube(
        E.T[:, :, None].astype(np.float32), s.centres, fwhm=s.fwhm, good_bands=s.good
    )  # one pixel per record
    aloh = R.band_depth(cube, 2200)[:, 0]
    mgoh = R.band_depth(cube, "MgOH")[:, 0]
    fe3 = R.band_depth(cube, "Fe3")[:, 0]
    names = lib.names
    assert aloh[names.index("kaolinite")] > 0.2 and aloh[names.index("muscovite")] > 0.15
    assert mgoh[names.index("calcite")] > 0.2 and mgoh[names.index("chlorite")] > 0.2
    assert fe3[names.index("chlorite")] > 0.05
    assert aloh[names.index("kaolinite")] > max(aloh[names.index("calcite")], aloh[names.index("vegetation")]) + 0.2
    ndvi = R.band_index_map(cube, "ndvi")[:, 0]
    assert ndvi[names.index("vegetation")] > 0.6 and ndvi[names.index("calcite")] < 0.1


def test_preprocess_config_keeps_rendering(tmp_path):
    from geovl.models.preprocess import PreprocessConfig

    spec = R.preset("alteration", {"mode": "fixed", "min": 0.05, "max": 0.75})
    PreprocessConfig(max_pixels=224 * 224, rendering=spec).save(tmp_path)
    back = PreprocessConfig.load(tmp_path)
    assert back.rendering == spec and R.validate(back.rendering) == spec


@pytest.fixture(scope="module")
def envi_cube(tmp_path_factory):
    d = tmp_path_factory.mktemp("render")
    wl = np.arange(400.0, 2501.0, 10.0)
    rng = np.random.default_rng(0)
    data = (rng.random((wl.size, 12, 10)) * 5000 + 1000).astype(np.int16)
    data[:, 0, :] = -9999
    return write_envi(d / "c.img", data, wavelengths=wl, nodata=-9999, scale=10000, **GEO), data, wl


def test_cli_render_png_and_geotiff(tmp_path, envi_cube, capsys):
    import rasterio
    from PIL import Image

    hdr, data, wl = envi_cube
    assert (
        main(
            [
                "spectral",
                "render",
                str(hdr),
                "--wavelengths",
                "2200,1650,600",
                "--out",
                str(tmp_path / "x.png"),
                "--spec-out",
                str(tmp_path / "spec.json"),
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["rendering"]["bands"] == [180, 125, 20]
    img = np.asarray(Image.open(tmp_path / "x.png"))
    assert img.shape == (12, 10, 3) and (img[0] == 0).all() and img[1:].max() == 255
    expect = R.render(open_cube(hdr), json.loads((tmp_path / "spec.json").read_text()))
    assert np.array_equal(img, expect)
    assert main(["spectral", "render", str(hdr), "--preset", "swir", "--out", str(tmp_path / "x.tif")]) == 0
    with rasterio.open(tmp_path / "x.tif") as ds:
        assert ds.count == 3 and ds.crs.to_epsg() == 32650 and tuple(ds.transform)[:6] == GEO["transform"]
    # a saved spec (or a geovl_preprocess.json carrying one) re-renders identically
    (tmp_path / "pre.json").write_text(json.dumps({"rendering": json.loads((tmp_path / "spec.json").read_text())}))
    assert (
        main(["spectral", "render", str(hdr), "--spec", str(tmp_path / "pre.json"), "--out", str(tmp_path / "y.png")])
        == 0
    )
    assert np.array_equal(np.asarray(Image.open(tmp_path / "y.png")), img)
    assert not list(tmp_path.glob("*.partial"))
    capsys.readouterr()
    assert (
        main(["spectral", "render", str(hdr), "--wavelengths", "2700,1650,600", "--out", str(tmp_path / "z.png")]) == 2
    )
    assert "2700 nm is outside" in capsys.readouterr().err and not (tmp_path / "z.png").exists()


def test_cli_depth_and_index_keep_crs(tmp_path, envi_cube, capsys):
    import rasterio

    hdr, data, wl = envi_cube
    assert (
        main(
            [
                "spectral",
                "depth",
                str(hdr),
                "--feature",
                "2200",
                "--out",
                str(tmp_path / "d.tif"),
                "--rows",
                "5",
                "--no-progress",
            ]
        )
        == 0
    )
    with rasterio.open(tmp_path / "d.tif") as ds:
        got = ds.read(1)
        assert ds.crs.to_epsg() == 32650 and tuple(ds.transform)[:6] == GEO["transform"] and ds.dtypes[0] == "float32"
    want = R.band_depth(open_cube(hdr), "AlOH")
    assert np.isnan(got[0]).all() and np.allclose(got[1:], want[1:], equal_nan=False)
    r = data.astype(np.float64) / 10000
    i = {w: int(np.argmin(np.abs(wl - w))) for w in (2120, 2200, 2250)}
    t = (wl[i[2200]] - wl[i[2120]]) / (wl[i[2250]] - wl[i[2120]])
    cont = r[i[2120]] + (r[i[2250]] - r[i[2120]]) * t
    assert np.allclose(got[1:], (1 - r[i[2200]] / cont)[1:], atol=1e-5)
    assert (
        main(
            [
                "spectral",
                "depth",
                str(hdr),
                "--feature",
                "1500",
                "--shoulders",
                "1400,1600",
                "--out",
                str(tmp_path / "d2.tif"),
                "--no-progress",
            ]
        )
        == 0
    )
    assert (
        main(["spectral", "index", str(hdr), "--nd", "860,650", "--out", str(tmp_path / "n.tif"), "--no-progress"]) == 0
    )
    with rasterio.open(tmp_path / "n.tif") as ds:
        nd = ds.read(1)
    a, b = r[int(np.argmin(np.abs(wl - 860)))], r[int(np.argmin(np.abs(wl - 650)))]
    assert np.allclose(nd[1:], ((a - b) / (a + b))[1:], atol=1e-5)
    capsys.readouterr()
    assert main(["spectral", "depth", str(hdr), "--feature", "1500", "--out", str(tmp_path / "d3.tif")]) == 2
    assert "no known feature near 1500" in capsys.readouterr().err
