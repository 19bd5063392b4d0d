"""Measurement against the exact ground truth of ``geovl data synth``: class areas, change matrix,
change patches (GeoJSON), AOI clipping, two dates on different grids, class tables."""

from __future__ import annotations

import json
from collections import deque
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.features import rasterize

from geovl.geo.errors import MeasureError
from geovl.geo.measure import measure_raster
from geovl.imagery.geotiff import Raster, read_raster, write_raster
from geovl.synth import synthesize
from geovl.synth.classes import BY_KEY

PIXEL = 10.0


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("geo-synth")
    synthesize(out, scenes=4, seed=11, size=96, langs="en", questions_per_scene=1, split="train=1", progress=False)
    scenes = [json.loads(line) for line in (out / "scenes.jsonl").read_text().splitlines()]
    return out, scenes


def _paths(root: Path, rec: dict, date: str) -> tuple[Path, Path]:
    return root / rec["geotiffs"][date], root / rec["class_maps"][date]


@pytest.fixture(scope="module")
def measured(synth):
    root, scenes = synth
    out = []
    for rec in scenes:
        img, cls = _paths(root, rec, "after")
        _, before_cls = _paths(root, rec, "before")
        out.append((rec, measure_raster(img, classes=cls, before_classes=before_cls)))
    return out


def test_class_areas_equal_ground_truth(measured):
    for rec, m in measured:
        assert m.table.name == "synth" and m.areas.method == "planar" and m.areas.constant == PIXEL**2
        for date, d in (("before", m.before), ("after", m.current)):
            truth = rec[date]["class_pixels"]
            assert d.valid_pixels == 96 * 96 and d.nodata_pixels == 0
            for key, px in truth.items():
                c = d.get(key)
                assert c.pixels == px, (rec["id"], date, key)
                assert c.m2 == px * PIXEL**2
                assert c.km2 == px * PIXEL**2 / 1e6 and c.ha == px * PIXEL**2 / 1e4
                assert c.mu == pytest.approx(px * PIXEL**2 * 15 / 1e4, rel=1e-15)
            assert sum(c.share for c in d.classes) == pytest.approx(1.0)
            assert d.get(BY_KEY["cropland"].zh) is d.get("cropland") is d.get(1)


def test_change_matrix_equals_ground_truth(measured):
    for rec, m in measured:
        truth = rec["change"]
        got = {f"{m.table.info(a).key}->{m.table.info(b).key}": px for a, b, px, _ in m.change.transitions()}
        assert got == truth["transitions"], rec["id"]
        assert m.change.changed_pixels == truth["changed_pixels"]
        assert m.change.changed_m2 == truth["changed_pixels"] * PIXEL**2
        crop = m.gain_loss("cropland")
        assert (
            crop["gain_pixels"] == truth["cropland_gain_pixels"]
            and crop["loss_pixels"] == truth["cropland_loss_pixels"]
        )
        assert crop["net_m2"] == truth["cropland_net_pixels"] * PIXEL**2
        assert m.gain_loss("forest")["loss_pixels"] == truth["forest_loss_pixels"]
        assert m.change.common_pixels == 96 * 96
        # net change per class = after − before of the per-date tables
        for code, net in m.change.net_m2().items():
            assert net == m.current.get(code).m2 - m.before.get(code).m2


def test_some_scene_has_cropland_gain(measured):
    # the fixture must exercise the interesting case: 新增耕地
    assert any(m.gain_loss("cropland")["gain_pixels"] > 0 for _, m in measured)


def _component_is_4_connected(mask: np.ndarray) -> bool:
    ys, xs = np.nonzero(mask)
    seen = np.zeros_like(mask)
    q = deque([(ys[0], xs[0])])
    seen[ys[0], xs[0]] = True
    while q:
        y, x = q.popleft()
        for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            v, u = y + dy, x + dx
            if 0 <= v < mask.shape[0] and 0 <= u < mask.shape[1] and mask[v, u] and not seen[v, u]:
                seen[v, u] = True
                q.append((v, u))
    return bool(seen.sum() == mask.sum())


def test_geojson_patches_are_valid_and_sum_to_changed_area(synth, measured):
    root, _ = synth
    for rec, m in measured:
        if not m.change.changed_pixels:
            continue
        fc = json.loads(json.dumps(m.geojson()))  # what a file holds
        assert fc["type"] == "FeatureCollection"
        assert fc["crs"]["properties"]["name"] == "urn:ogc:def:crs:EPSG::32650"
        feats = fc["features"]
        assert len(feats) == m.change.patches_total == fc["geovl"]["patches_written"]
        assert sum(f["properties"]["area_m2"] for f in feats) == m.change.changed_m2
        assert sum(f["properties"]["pixels"] for f in feats) == m.change.changed_pixels
        areas = [f["properties"]["area_m2"] for f in feats]
        assert areas == sorted(areas, reverse=True)
        with (
            rasterio.open(root / rec["class_maps"]["before"]) as a,
            rasterio.open(root / rec["class_maps"]["after"]) as b,
        ):
            before, after, transform = a.read(1), b.read(1), b.transform
        for f in feats:
            p = f["properties"]
            assert f["geometry"]["type"] == "Polygon"
            for ring in f["geometry"]["coordinates"]:
                assert ring[0] == ring[-1] and len(ring) >= 5
                xy = np.asarray(ring)
                assert np.all((xy[:, 0] - transform.c) % PIXEL == 0) and np.all((transform.f - xy[:, 1]) % PIXEL == 0)
            inside = (
                rasterize([(f["geometry"], 1)], out_shape=before.shape, transform=transform, fill=0, dtype="uint8") == 1
            )
            assert int(inside.sum()) == p["pixels"] and p["area_m2"] == p["pixels"] * PIXEL**2
            assert (before[inside] == p["from_code"]).all() and (after[inside] == p["to_code"]).all()
            assert _component_is_4_connected(inside)
            assert p["area_mu"] == pytest.approx(p["area_m2"] * 15 / 1e4) and p["to_zh"] and p["from_en"]
        # every changed pixel is in exactly one feature
        ids = rasterize(
            [(f["geometry"], i + 1) for i, f in enumerate(feats)],
            out_shape=before.shape,
            transform=transform,
            fill=0,
            dtype="int32",
        )
        assert np.array_equal(ids > 0, before != after)


def test_geojson_in_wgs84_and_top(synth):
    root, scenes = synth
    rec = next(r for r in scenes if r["change"]["changed_pixels"])
    m = measure_raster(root / rec["class_maps"]["after"], before=root / rec["class_maps"]["before"], top=1)
    assert len(m.change.patches) == 1 and m.change.patches_total >= 1
    fc = m.geojson(wgs84=True)
    assert "crs" not in fc and fc["geovl"]["crs"] == "EPSG:4326"
    lon, lat = np.asarray(fc["features"][0]["geometry"]["coordinates"][0]).T
    assert 116.0 < lon.min() and lon.max() < 117.0 and 36.0 < lat.min() and lat.max() < 37.0
    p = fc["features"][0]["properties"]
    assert lon.min() <= p["lon"] <= lon.max() and lat.min() <= p["lat"] <= lat.max()
    assert fc["geovl"]["features_m2"] <= fc["geovl"]["changed_m2"]


def _rect(x0, y0, x1, y1):
    return {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]}


def test_aoi_rectangle_gives_exact_pixel_counts(synth, tmp_path):
    root, scenes = synth
    rec = scenes[0]
    cls_path = root / rec["class_maps"]["after"]
    r = read_raster(cls_path)
    a, _, c, _, e, f = r.transform
    rows, cols = slice(10, 41), slice(20, 61)
    want = np.bincount(r.data[0, rows, cols].ravel(), minlength=8)
    x0, x1 = c + a * cols.start, c + a * cols.stop
    y0, y1 = f + e * rows.start, f + e * rows.stop
    # 1) in the raster CRS, declared with an old-style crs member (as QGIS writes it)
    aoi = tmp_path / "aoi_utm.geojson"
    aoi.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32650"}},
                "features": [{"type": "Feature", "properties": {}, "geometry": _rect(x0, y0, x1, y1)}],
            }
        )
    )
    m = measure_raster(cls_path, aoi=aoi)
    assert m.aoi.crs_how == "file" and not m.aoi.partly_outside
    assert {cl.code: cl.pixels for cl in m.current.classes if cl.pixels} == {i: int(n) for i, n in enumerate(want) if n}
    assert m.current.valid_pixels == 31 * 41 and m.current.valid_m2 == 31 * 41 * PIXEL**2
    assert m.to_json()["aoi"]["area"]["m2"] == 31 * 41 * PIXEL**2
    # 2) the same rectangle (inset by a quarter pixel) in EPSG:4326, reprojected
    from rasterio.warp import transform

    q = PIXEL / 4
    xs = [x0 + q, x1 - q, x1 - q, x0 + q, x0 + q]
    ys = [y0 - q, y0 - q, y1 + q, y1 + q, y0 - q]
    lon, lat = transform("EPSG:32650", "EPSG:4326", xs, ys)
    aoi84 = tmp_path / "aoi_wgs84.geojson"
    aoi84.write_text(
        json.dumps(
            {
                "type": "Feature",
                "properties": {},
                "geometry": {"type": "Polygon", "coordinates": [list(map(list, zip(lon, lat)))]},
            }
        )
    )
    m84 = measure_raster(cls_path, aoi=aoi84)
    assert m84.aoi.crs_how == "lon/lat coordinates" and m84.aoi.crs == "EPSG:4326"
    assert [cl.pixels for cl in m84.current.classes] == [cl.pixels for cl in m.current.classes]
    # 3) a MultiPolygon of two disjoint rectangles, one partly outside the raster
    xa, ya = c + a * 96, f + e * 96  # lower-right corner of the raster
    multi = {
        "type": "MultiPolygon",
        "coordinates": [
            _rect(x0, y0, x1, y1)["coordinates"],
            _rect(xa - 5 * a, ya - 5 * e, xa + 50, ya - 50)["coordinates"],
        ],
    }
    aoim = tmp_path / "aoi_multi.geojson"
    aoim.write_text(json.dumps(multi))
    mm = measure_raster(cls_path, aoi=aoim)
    assert mm.aoi.crs_how == "raster" and mm.aoi.partly_outside
    assert mm.current.valid_pixels == 31 * 41 + 25
    assert any("outside the raster" in n["en"] for n in mm.notes)


def test_aoi_errors(synth, tmp_path):
    root, scenes = synth
    cls_path = root / scenes[0]["class_maps"]["after"]
    far = tmp_path / "far.geojson"
    far.write_text(json.dumps(_rect(0, 0, 1000, 1000)))
    with pytest.raises(MeasureError, match="far.geojson: the AOI does not cover"):
        measure_raster(cls_path, aoi=far)
    point = tmp_path / "point.geojson"
    point.write_text(json.dumps({"type": "Point", "coordinates": [116.3, 36.7]}))
    with pytest.raises(MeasureError, match="point.geojson: AOI geometries must be Polygon"):
        measure_raster(cls_path, aoi=point)
    broken = tmp_path / "broken.geojson"
    broken.write_text("{not json")
    with pytest.raises(MeasureError, match="broken.geojson: not a readable GeoJSON"):
        measure_raster(cls_path, aoi=broken)


def test_before_on_a_different_grid_is_reprojected(synth, tmp_path):
    root, scenes = synth
    rec = next(r for r in scenes if r["change"]["changed_pixels"])
    before = read_raster(root / rec["class_maps"]["before"])
    a, b, c, d, e, f = before.transform
    padded = np.pad(before.data, ((0, 0), (1, 2), (2, 1)), constant_values=0)  # a larger grid, origin moved
    moved = tmp_path / "before_moved.tif"
    write_raster(moved, Raster(padded, before.crs, (a, b, c - 2 * a, d, e, f - e), 0, []))
    m = measure_raster(root / rec["class_maps"]["after"], before_classes=moved, class_table="synth")
    got = {f"{m.table.info(x).key}->{m.table.info(y).key}": px for x, y, px, _ in m.change.transitions()}
    assert got == rec["change"]["transitions"]
    assert any("reprojected" in n["en"] and "nearest" in n["en"] for n in m.notes)
    assert m.before.valid_pixels == 96 * 96


def test_context_and_json(measured):
    rec, m = next((r, m) for r, m in measured if m.gain_loss("cropland")["gain_pixels"])
    gain_km2 = rec["change"]["cropland_gain_pixels"] * PIXEL**2 / 1e6
    zh, en = m.context_text("zh"), m.context_text("en")
    assert zh.startswith("[geovl measure]") and en.startswith("[geovl measure]")
    assert f"耕地 新增 {gain_km2:.4f}平方公里" in zh and f"cropland: gain {gain_km2:.4f} km²" in en
    assert "精度说明" in zh and "uncertainty:" in en and "EPSG:32650" in en
    doc = json.loads(json.dumps(m.to_json(), ensure_ascii=False))
    assert doc["schema"] == "geovl.measure/1" and doc["crs"] == "EPSG:32650"
    assert set(doc["dates"]) == {"before", "after"}
    crop = next(c for c in doc["change"]["per_class"] if c["key"] == "cropland")
    assert crop["gain"]["km2"] == gain_km2 and crop["gain"]["mu"] == pytest.approx(gain_km2 * 1500)
    k = len(doc["change"]["codes"])
    assert np.asarray(doc["change"]["matrix_pixels"]).shape == (k, k)
    assert np.asarray(doc["change"]["matrix_pixels"]).sum() == 96 * 96
    assert doc["uncertainty"]["en"] and doc["method"]["zh"]
    text = m.text()
    assert "耕地 cropland" in text and "亩 mu" in text and "精度说明" in text


def test_worldcover_and_dynamic_world_tables(tmp_path):
    t = (10.0, 0.0, 500_000.0, 0.0, -10.0, 4_000_000.0)
    wc = np.array([[[10, 10, 40, 40], [40, 50, 80, 0], [30, 20, 60, 0]]], np.uint8)
    p = tmp_path / "wc.tif"
    write_raster(p, Raster(wc, "EPSG:32650", t, None, []))  # no nodata tag: 0 is nodata by the table
    m = measure_raster(p)
    assert m.table.name == "worldcover" and m.current.get("crop").pixels == 3 and m.current.valid_pixels == 10
    assert m.current.nodata_pixels == 2 and m.current.get("Cropland").zh == "耕地"
    unc = m.to_json()["uncertainty"]
    assert "74.4%" in unc["en"] and "grass 34%" in unc["en"] and any("Venter" in s for s in unc["sources"])
    assert "草地34%" in unc["zh"] and "Olofsson" in unc["zh"]
    ctx = m.context_text("en")
    assert "image classes: Cropland 0.0003 km² (0.03 ha) 30.0%; Tree cover 0.0002 km² (0.02 ha) 20.0%" in ctx
    assert "image classes with zero area: Snow and ice, Herbaceous wetland, Mangroves, Moss and lichen" in ctx
    assert "影像各类：耕地 0.0003平方公里（0.03公顷，0.5亩） 30.0%" in m.context_text("zh")
    dw = np.array([[[0, 0, 4, 4], [4, 6, 255, 1]]], np.uint8)
    p2 = tmp_path / "dw.tif"
    write_raster(p2, Raster(dw, "EPSG:32650", t, 255, []))
    m2 = measure_raster(p2, class_table="dynamicworld")
    assert m2.current.get("water").pixels == 2 and m2.current.get("crops").pixels == 3 and m2.current.nodata_pixels == 1
    assert "72%" in m2.to_json()["uncertainty"]["en"]
    # a custom table file; codes missing from it get generic names
    table = tmp_path / "table.json"
    table.write_text(
        json.dumps(
            {"name": "county", "nodata": 0, "classes": [{"code": 40, "key": "farm", "en": "farmland", "zh": "农田"}]}
        )
    )
    m3 = measure_raster(p, class_table=table)
    assert m3.current.get("farm").pixels == 3 and m3.current.get(80).en == "class 80" and m3.table.name == "county"
    bad = tmp_path / "bad_table.json"
    bad.write_text(json.dumps({"classes": [{"key": "x"}]}))
    with pytest.raises(MeasureError, match="bad_table.json: classes\\[0\\] needs an integer"):
        measure_raster(p, class_table=bad)


def test_in_memory_rasters_give_the_same_figures(synth, measured):
    """The API takes geovl Raster objects as well as paths (for tiled callers such as geovl map)."""
    root, _ = synth
    rec, m = measured[0]
    before = read_raster(root / rec["class_maps"]["before"])
    after = read_raster(root / rec["class_maps"]["after"])
    mm = measure_raster(classes=after, before_classes=before, class_table="synth")
    assert [c.to_json() for c in mm.current.classes] == [c.to_json() for c in m.current.classes]
    assert np.array_equal(mm.change.pixels, m.change.pixels) and mm.change.patches_total == m.change.patches_total
    assert mm.current.classes_path == "<raster>" and mm.crs_text() == "EPSG:32650"
