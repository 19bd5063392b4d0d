"""Bounded-memory measuring (issue 15): files are read window by window and the figures equal the
whole-array ones exactly (counts, constant pixel areas) or to float rounding (weighted areas), with
windows that cut the raster unevenly; plus the guards of real rasters (continuous rasters given as
classes, scale/offset tags, geostationary grids, GCP-only files, non-GeoJSON AOIs)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.control import GroundControlPoint
from rasterio.crs import CRS

from geovl.geo.errors import MeasureError
from geovl.geo.measure import measure_raster
from geovl.imagery.geotiff import read_raster

GRIDS = {
    "utm": ("EPSG:32650", Affine(10.0, 0, 500_000, 0, -10.0, 4_000_000)),  # constant pixel area
    "webmercator": ("EPSG:3857", Affine(300.0, 0, 12_900_000, 0, -300.0, 4_900_000)),  # ellipsoidal blocks
    "geographic": ("EPSG:4326", Affine(0.01, 0, 116.0, 0, -0.01, 40.5)),  # per-row geodesic areas
    "rotated": ("EPSG:4326", Affine(0.01, 0.002, 116.0, 0.002, -0.01, 40.5)),  # per-pixel quadrilaterals
}


def _write(path, data, crs, transform, nodata=None, **extra):
    data = np.asarray(data)
    data = data[None] if data.ndim == 2 else data
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=data.shape[2],
        height=data.shape[1],
        count=data.shape[0],
        dtype=data.dtype,
        crs=crs,
        transform=transform,
        nodata=nodata,
        **extra,
    ) as dst:
        dst.write(data)
    return path


def _classes(seed, h=53, w=71):
    rng = np.random.default_rng(seed)
    c = rng.choice(np.array([10, 20, 30, 40, 50, 80], np.uint8), size=(h, w))
    c[rng.random((h, w)) < 0.05] = 255  # nodata
    c[5:20, 10:40] = 30  # a block, so there are patches bigger than one pixel
    return c


def _same(windowed, whole, exact: bool):
    for a, b in ((windowed.current, whole.current), (windowed.before, whole.before)):
        if b is None:
            assert a is None
            continue
        assert (a.valid_pixels, a.nodata_pixels) == (b.valid_pixels, b.nodata_pixels)
        assert [(c.code, c.pixels) for c in a.classes] == [(c.code, c.pixels) for c in b.classes]
        if exact:
            assert [c.m2 for c in a.classes] == [c.m2 for c in b.classes]
        else:
            assert [c.m2 for c in a.classes] == pytest.approx([c.m2 for c in b.classes], rel=1e-12, abs=1e-6)
    if whole.change is not None:
        assert windowed.change.codes == whole.change.codes
        assert np.array_equal(windowed.change.pixels, whole.change.pixels)
        assert windowed.change.m2 == pytest.approx(whole.change.m2, rel=1e-12, abs=1e-6)
        if exact:
            assert np.array_equal(windowed.change.m2, whole.change.m2)
        assert [(p.from_code, p.to_code, p.pixels) for p in windowed.change.patches] == [
            (p.from_code, p.to_code, p.pixels) for p in whole.change.patches
        ]
    assert windowed.notes == whole.notes


@pytest.mark.parametrize("grid", sorted(GRIDS))
@pytest.mark.parametrize("window", [(7, 11), (13, 200), (1, 71), None])
def test_windowed_equals_whole_array(tmp_path, grid, window):
    crs, t = GRIDS[grid]
    after = _write(tmp_path / "after.tif", _classes(1), crs, t, nodata=255)
    before = _write(tmp_path / "before.tif", _classes(2), crs, t, nodata=255)
    # in-memory Raster objects go through the whole-array path; files stream in windows
    whole = measure_raster(read_raster(after), before=read_raster(before), class_table="worldcover")
    got = measure_raster(after, before=before, class_table="worldcover", window=window)
    assert got.sources and whole.areas.method == got.areas.method
    _same(got, whole, exact=grid == "utm")
    got_m, whole_m = got.to_json()["area_method"], whole.to_json()["area_method"]
    assert got_m.keys() == whole_m.keys()
    for key, value in whole_m.items():
        assert got_m[key] == (pytest.approx(value, rel=1e-12) if isinstance(value, float) else value), key


def test_windowed_aoi_and_auto_table(tmp_path):
    crs, t = GRIDS["utm"]
    path = _write(tmp_path / "c.tif", _classes(3), crs, t, nodata=255)
    x0, y0 = t @ (9.5, 4.5)
    x1, y1 = t @ (60.2, 41.7)
    aoi = tmp_path / "aoi.geojson"
    aoi.write_text(
        json.dumps(
            {
                "type": "Polygon",
                "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]],
                "crs": {"type": "name", "properties": {"name": "EPSG:32650"}},
            }
        )
    )
    whole = measure_raster(read_raster(path), aoi=aoi)
    got = measure_raster(path, aoi=aoi, window=(6, 17))
    _same(got, whole, exact=True)
    assert got.table.name == whole.table.name == "worldcover"
    assert got.aoi.to_json() == whole.aoi.to_json() and got.aoi.area_m2 == whole.aoi.area_m2
    assert got.to_json()["aoi"] == whole.to_json()["aoi"]


def test_windowed_derived_classes_and_class_raster(tmp_path):
    crs, t = GRIDS["utm"]
    rng = np.random.default_rng(5)
    img = rng.integers(1, 4000, size=(4, 37, 45)).astype(np.uint16)
    path = _write(tmp_path / "img.tif", img, crs, t)
    whole = measure_raster(read_raster(path))
    got = measure_raster(path, window=(5, 9))
    _same(got, whole, exact=True)
    out = tmp_path / "out"
    out.mkdir()
    (written,) = got.write_class_rasters(out)
    with rasterio.open(written) as ds:
        assert ds.profile["tiled"] and np.array_equal(ds.read(1), whole.maps["image"].codes)


# -- scale/offset tags (finding 3) --------------------------------------------------------------------


def test_scale_offset_tags_apply_to_index_classes(tmp_path):
    """Landsat Collection-2 surface reflectance: uint16, ρ = DN × 2.75e-5 − 0.2. Without the tags clear
    water was classed built-up and dense vegetation sparse."""
    water = [0.04, 0.03, 0.02, 0.005]  # blue, green, red, NIR reflectance
    forest = [0.03, 0.08, 0.04, 0.45]
    refl = np.array([water, forest], np.float64).T[:, None, :]  # (4, 1, 2)
    dn = np.round((refl + 0.2) / 2.75e-5).astype(np.uint16)
    path = tmp_path / "lc09_sr.tif"
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=2,
        height=1,
        count=4,
        dtype="uint16",
        crs="EPSG:32650",
        transform=GRIDS["utm"][1],
    ) as dst:
        dst.write(dn)
        dst.scales = (2.75e-5,) * 4
        dst.offsets = (-0.2,) * 4
    m = measure_raster(path)
    assert m.maps["image"].codes[0].tolist() == [1, 2]  # water, dense vegetation
    assert m.current.get("water").pixels == 1 and m.current.get(2).pixels == 1


# -- guards -----------------------------------------------------------------------------------------


def test_continuous_raster_as_classes_is_refused(tmp_path):
    crs, t = GRIDS["utm"]
    dem = (np.arange(40 * 40, dtype=np.int32).reshape(40, 40) % 1000 + 200).astype(np.uint16)
    path = _write(tmp_path / "dem.tif", dem, crs, t)
    with pytest.raises(
        MeasureError, match=r"dem\.tif: more than 256 distinct values .*continuous raster.*--class-table"
    ):
        measure_raster(path)
    refl = _write(tmp_path / "b4.tif", (dem / 1e4).astype(np.float32), crs, t)
    with pytest.raises(MeasureError, match=r"b4\.tif: float32 values and no class table"):
        measure_raster(refl)


def _goes(tmp_path, n, name, nodata_off_disk: bool):
    crs = CRS.from_proj4("+proj=geos +h=35786023 +lon_0=-75 +sweep=x +ellps=GRS80 +units=m +no_defs")
    ext = 5_434_894.0
    px = 2 * ext / n
    t = Affine(px, 0, -ext, 0, -px, ext)
    from geovl.geo.geodesy import pixel_areas

    w = pixel_areas(crs, t, (n, n)).window(0, n, 0, n)
    data = np.where(np.isfinite(w) | (not nodata_off_disk), 1, 0).astype(np.uint8)
    return _write(tmp_path / name, data, crs, t, nodata=0), px, int(np.isfinite(w).sum())


def test_geostationary_full_disk_is_not_measured_as_planar(tmp_path):
    """A GOES full disk: the map plane gives ~92 M km², the Earth seen from GEO ~200 M km². Areas are now
    per pixel on the ellipsoid (valid pixels), and off-disk pixels that are not nodata are refused."""
    path, px, n_on = _goes(tmp_path, 100, "goes.tif", nodata_off_disk=True)
    m = measure_raster(path, class_table="worldcover", window=(17, 100))
    assert m.areas.method == "ellipsoidal" and m.current.valid_pixels == n_on
    planar_km2 = n_on * px * px / 1e6
    cap_km2 = 0.5 * (1 - 6_371_007 / (6_371_007 + 35_786_023)) * 510_065_622  # spherical cap seen from GEO
    got = m.current.valid_m2 / 1e6
    assert 0.78 * cap_km2 < got < cap_km2 and got > 1.9 * planar_km2
    assert "per pixel" in json.dumps(m.notes)
    whole = measure_raster(read_raster(path), class_table="worldcover")
    assert whole.current.valid_m2 == pytest.approx(m.current.valid_m2, rel=1e-12)
    aoi = tmp_path / "disk.geojson"  # the whole grid, in the raster's CRS (coordinates are not lon/lat)
    e = 5_434_894.0
    aoi.write_text(json.dumps({"type": "Polygon", "coordinates": [[[-e, -e], [e, -e], [e, e], [-e, e], [-e, -e]]]}))
    a, b = (measure_raster(x, class_table="worldcover", aoi=aoi) for x in (path, read_raster(path)))
    assert a.current.valid_m2 == pytest.approx(m.current.valid_m2, rel=1e-12)
    assert a.aoi.area_m2 == pytest.approx(b.aoi.area_m2, rel=1e-12) and a.aoi.area_m2 >= a.current.valid_m2 * (
        1 - 1e-12
    )
    bad, _, _ = _goes(tmp_path, 40, "goes_all_valid.tif", nodata_off_disk=False)
    with pytest.raises(MeasureError, match="outside the projection's valid area"):
        measure_raster(bad, class_table="worldcover")
    assert measure_raster(bad, class_table="worldcover", area="planar").areas.method == "planar"  # asked for


def test_gcp_only_raster_says_warp_first(tmp_path):
    path = tmp_path / "l1.tif"
    gcps = [
        GroundControlPoint(0, 0, 116.0, 40.0),
        GroundControlPoint(0, 10, 116.1, 40.0),
        GroundControlPoint(10, 0, 116.0, 39.9),
        GroundControlPoint(10, 10, 116.1, 39.9),
    ]
    with rasterio.open(
        path, "w", driver="GTiff", width=10, height=10, count=1, dtype="uint8", gcps=gcps, crs=CRS.from_epsg(4326)
    ) as dst:
        dst.write(np.ones((1, 10, 10), np.uint8))
    with rasterio.open(path) as ds:
        assert ds.crs is None and len(ds.gcps[0]) == 4
    with pytest.raises(
        MeasureError, match=r"l1\.tif: georeferenced only by 4 ground control points.*gdalwarp -t_srs EPSG:4326"
    ):
        measure_raster(path, class_table="worldcover")


def test_shapefile_aoi_gets_a_conversion_hint(tmp_path):
    try:
        import fiona  # noqa: F401

        pytest.skip("fiona is installed: shapefiles are read")
    except ImportError:
        pass
    crs, t = GRIDS["utm"]
    path = _write(tmp_path / "c.tif", _classes(3), crs, t, nodata=255)
    shp = tmp_path / "county.shp"
    shp.write_bytes(b"\x00\x00\x27\x0a" + b"\x00" * 96 + b"\xff\xfe\x80")  # a shapefile header (not UTF-8)
    with pytest.raises(MeasureError, match=r"county\.shp: not GeoJSON.*ogr2ogr -f GeoJSON"):
        measure_raster(path, aoi=shp)


def test_wide_code_range_and_whole_array_limits(tmp_path, monkeypatch, capsys):
    """Codes spanning more than 65536 are indexed by sorting (same figures); whole-array steps over their
    limit, and memory exhaustion, end in a clear message (exit 2), never a traceback."""
    import geovl.geo.measure as measure_mod
    from geovl.cli import main

    crs, t = GRIDS["utm"]
    codes = np.array([1, 70_000, 200_000, 5], np.int32)
    rng = np.random.default_rng(9)
    a = _write(tmp_path / "a.tif", codes[rng.integers(0, 4, (31, 29))], crs, t)
    b = _write(tmp_path / "b.tif", codes[rng.integers(0, 4, (31, 29))], crs, t)
    _same(measure_raster(a, before=b, window=(4, 6)), measure_raster(read_raster(a), before=read_raster(b)), exact=True)

    shifted = _write(tmp_path / "shifted.tif", codes[rng.integers(0, 4, (31, 29))], crs, t @ Affine.translation(3, 2))
    monkeypatch.setattr(measure_mod, "WHOLE_ARRAY_MAX_PIXELS", 100)
    with pytest.raises(MeasureError, match=r"a\.tif: 899 pixels .*different grids.*gdalwarp"):
        measure_raster(a, before=shifted)

    def boom(*a, **k):
        raise MemoryError

    monkeypatch.setattr(measure_mod, "measure_raster", boom)
    assert main(["measure", str(a), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "a.tif: out of memory while measuring" in err and "Traceback" not in err


def test_windows_read_only_the_bands_the_rules_use(tmp_path, monkeypatch):
    """A many-band file (a band bomb, or a hyperspectral cube) reads only the bands of the index rules per window."""
    import rasterio.io

    crs, t = GRIDS["utm"]
    rng = np.random.default_rng(4)
    img = rng.integers(1, 4000, size=(40, 16, 12)).astype(np.uint16)
    path = _write(tmp_path / "cube.tif", img, crs, t)
    calls = []
    orig = rasterio.io.DatasetReader.read

    def spy(self, indexes=None, *a, **k):
        calls.append(indexes)
        return orig(self, indexes, *a, **k)

    monkeypatch.setattr(rasterio.io.DatasetReader, "read", spy)
    got = measure_raster(path, window=(5, 12))
    assert calls and all(c == [1, 2, 3, 4, 5] for c in calls)  # blue, green, red, NIR, SWIR by position
    monkeypatch.undo()
    whole = measure_raster(read_raster(path))
    _same(got, whole, exact=True)


def test_large_two_date_grid_skips_patches_with_a_note(tmp_path, monkeypatch):
    """Above the whole-grid limit the change matrix is still exact; patches are left out and the output says so."""
    import geovl.geo.measure as measure_mod

    crs, t = GRIDS["utm"]
    after = _write(tmp_path / "after.tif", _classes(1), crs, t, nodata=255)
    before = _write(tmp_path / "before.tif", _classes(2), crs, t, nodata=255)
    whole = measure_raster(read_raster(after), before=read_raster(before), class_table="worldcover")
    monkeypatch.setattr(measure_mod, "FULL_MAPS_MAX_PIXELS", 1000)
    got = measure_raster(after, before=before, class_table="worldcover", window=(8, 30))
    assert got.maps == {} and got.change.patches == [] and whole.change.patches
    assert np.array_equal(got.change.pixels, whole.change.pixels) and np.array_equal(got.change.m2, whole.change.m2)
    assert any(
        "change patches (GeoJSON) are not computed above 1,000 pixels (3,763 here)" in n["en"] for n in got.notes
    )
