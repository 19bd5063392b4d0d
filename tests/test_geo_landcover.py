"""Classes derived from spectral indices (rules, configuration, accuracy on synthetic scenes),
supplied class rasters, and the composite renderings added to geovl.imagery.geotiff."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio

from geovl.geo.errors import MeasureError
from geovl.geo.indices import IndexRules, classify, load_rules, parse_band_order
from geovl.geo.measure import measure_raster
from geovl.imagery.geotiff import Raster, band_roles, render_composite, render_rgb, write_raster
from geovl.synth import synthesize
from geovl.synth.classes import BARE, BUILTUP, CROPLAND, FOREST, ROAD, WATER

# (blue, green, red, nir) reflectance x 10000 and the class the documented rules give
PIXELS = [
    ((620, 560, 330, 160), 1),  # water: NDWI 0.56
    ((230, 430, 240, 2900), 2),  # forest: NDVI 0.85
    ((100, 100, 200, 800), 2),  # NDVI exactly 0.6 -> dense (>=)
    ((520, 860, 780, 2700), 3),  # yellow-green crop: NDVI 0.55
    ((650, 950, 1150, 2300), 3),  # ripe crop: NDVI 0.33
    ((1350, 1400, 1450, 1750), 4),  # built-up ground: redness 0.04
    ((1200, 1100, 800, 1000), 4),  # blue steel roof: NDWI 0.05 < 0.1, not water
    ((950, 1250, 1650, 2150), 5),  # bare soil: redness 0.27
    ((700, 720, 1650, 1900), 5),  # red roof -> bare without SWIR (documented limitation)
    ((0, 0, 0, 0), 0),  # all zero -> nodata
    ((65535, 500, 500, 500), 0),  # a band at the nodata value -> nodata
]


def _stack(pixels, extra=None) -> np.ndarray:
    data = np.array([p for p, _ in pixels], np.uint16).T[:, None, :]  # (4, 1, N)
    return data if extra is None else np.concatenate([data, np.asarray(extra, np.uint16)[None, None, :]])


def test_rules_on_known_spectra():
    got = classify(_stack(PIXELS), 65535)
    assert got[0].tolist() == [c for _, c in PIXELS]


def test_swir_band_uses_ndbi():
    pix = [((1350, 1400, 1450, 1750), None), ((1350, 1400, 1450, 1750), None), ((230, 430, 240, 2900), None)]
    data = _stack(pix, extra=[2000, 1000, 1200])  # NDBI +0.07 (built), −0.27 (not built), forest
    rules = load_rules(band_order="blue,green,red,nir,swir")
    assert rules.bands["swir"] == 5
    assert classify(data, None, rules)[0].tolist() == [4, 5, 2]


def test_rules_file_band_order_and_offset(tmp_path):
    data = _stack(PIXELS[:9])
    want = classify(data, None)
    # reversed band order, declared with --bands
    rev = data[::-1]
    assert np.array_equal(classify(rev, None, load_rules(band_order="nir,red,green,blue")), want)
    # a YAML rules file: band numbers, a threshold, an offset
    y = tmp_path / "rules.yaml"
    y.write_text("bands: {blue: 4, green: 3, red: 2, nir: 1}\nthresholds: {dense_ndvi: 0.9}\noffset: -1000\n")
    r = load_rules(y)
    got = classify(rev.astype(np.int32) + 1000, None, r)
    assert got[0].tolist() == [3 if c == 2 else c for c in want[0].tolist()]  # nothing reaches NDVI 0.9
    j = tmp_path / "rules.json"
    j.write_text(json.dumps({"thresholds": {"water_ndwi": 0.6}}))
    assert classify(data, None, load_rules(j))[0, 0] != 1  # water NDWI 0.56 < 0.6
    for text, msg in [
        ('{"colour": 1}', "keys bands, thresholds"),
        ('{"thresholds": {"ndvi": 1}}', "may set"),
        ('{"bands": {"nir": 0}}', "1-based"),
        ("{oops", "not a readable"),
    ]:
        bad = tmp_path / "bad.json"
        bad.write_text(text)
        with pytest.raises(MeasureError, match=msg):
            load_rules(bad)
    with pytest.raises(MeasureError, match="need each of blue, green, red, nir"):
        parse_band_order("red,green,blue")
    with pytest.raises(MeasureError, match="band 5 .*only 4"):
        classify(data, None, IndexRules(bands={"blue": 1, "green": 2, "red": 3, "nir": 5}))


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("geo-derived")
    synthesize(out, scenes=3, seed=5, size=80, langs="en", questions_per_scene=1, split="train=1", progress=False)
    return out, [json.loads(line) for line in (out / "scenes.jsonl").read_text().splitlines()]


def test_derived_classes_on_synthetic_scenes(synth):
    """Per-class agreement of the rules with the exact synthetic maps (the rules are simple, not magic)."""
    root, scenes = synth
    conf = np.zeros((8, 6), np.int64)
    for rec in scenes:
        for date in ("before", "after"):
            m = measure_raster(root / rec["geotiffs"][date])
            assert m.table.name == "derived" and m.current.source == "derived" and m.rules is not None
            with rasterio.open(root / rec["class_maps"][date]) as src:
                truth = src.read(1)
            np.add.at(conf, (truth.ravel(), m.maps["image"].codes.ravel()), 1)
            # the areas reported are the derived map's pixel counts x 100 m²
            counts = np.bincount(m.maps["image"].codes.ravel(), minlength=6)
            assert [m.current.get(c).pixels for c in range(1, 6)] == counts[1:].tolist()
    rate = conf / np.maximum(conf.sum(axis=1, keepdims=True), 1)
    assert rate[WATER, 1] == 1.0 and conf[:, 1].sum() == conf[WATER, 1]  # water: every pixel, nothing else
    assert rate[FOREST, 2] == 1.0
    assert rate[CROPLAND, 2] + rate[CROPLAND, 3] == 1.0  # cropland is vegetation, dense or sparse
    assert rate[BARE, 5] == 1.0
    assert rate[BUILTUP, 4] == 1.0 and rate[ROAD, 4] == 1.0
    notes = m.to_json()["uncertainty"]["en"]
    assert "forest and cropland are not separated" in notes


def test_derived_change_finds_forest_clearing(synth):
    root, scenes = synth
    cleared = 0
    for rec in scenes:
        m = measure_raster(root / rec["geotiffs"]["after"], before=root / rec["geotiffs"]["before"])
        with (
            rasterio.open(root / rec["class_maps"]["before"]) as a,
            rasterio.open(root / rec["class_maps"]["after"]) as b,
        ):
            tb, ta = a.read(1), b.read(1)
        db, da = m.maps["before"].codes, m.maps["after"].codes
        # every truly cleared forest pixel (forest -> bare land) is dense vegetation -> bare/other
        sel = (tb == FOREST) & (ta == BARE)
        assert (db[sel] == 2).all() and (da[sel] == 5).all()
        cleared += int(sel.sum())
        # unchanged land keeps its derived class: only real changes show up
        same = tb == ta
        assert (db[same] == da[same]).all()
        got = {(x, y): px for x, y, px, _ in m.change.transitions()}
        assert got.get((2, 5), 0) >= int(sel.sum())
        assert m.change.changed_pixels == int((db != da).sum())
    assert cleared > 0


def test_supplied_class_raster_checks(tmp_path):
    t = (10.0, 0.0, 500_000.0, 0.0, -10.0, 4_000_000.0)
    f = tmp_path / "float.tif"
    write_raster(f, Raster(np.array([[[1.0, 2.0], [np.nan, 3.0]]], np.float32), "EPSG:32650", t, None, []))
    m = measure_raster(f, class_table="synth")
    assert m.current.valid_pixels == 3 and m.current.get("water").pixels == 1
    frac = tmp_path / "frac.tif"
    write_raster(frac, Raster(np.array([[[1.5, 2.0]]], np.float32), "EPSG:32650", t, None, []))
    with pytest.raises(MeasureError, match="frac.tif: .*fractional"):
        measure_raster(frac, class_table="synth")
    with pytest.raises(MeasureError, match="frac.tif: float32 values and no class table .*--class-table"):
        measure_raster(frac)  # a float raster without a table is taken for a continuous one
    two = tmp_path / "two.tif"
    write_raster(two, Raster(np.ones((2, 2, 2), np.uint8), "EPSG:32650", t, None, []))
    with pytest.raises(MeasureError, match="two.tif: a class raster has one band, this one has 2"):
        measure_raster(classes=two)


def test_composites(synth):
    root, scenes = synth
    from geovl.imagery.geotiff import read_raster

    r = read_raster(root / scenes[0]["geotiffs"]["after"])
    assert band_roles(r) == {"blue": 0, "green": 1, "red": 2, "nir": 3}  # from the band descriptions
    assert np.array_equal(render_composite(r, "true"), render_rgb(r, (2, 1, 0)))
    assert np.array_equal(render_composite(r, "false-nir"), render_rgb(r, (3, 2, 1)))
    bare = Raster(r.data, r.crs, r.transform, None, [])
    assert band_roles(bare, ("nir", "red", "green", "blue")) == {"nir": 0, "red": 1, "green": 2, "blue": 3}
    assert band_roles(Raster(r.data, None, None, None, ["B5 red edge", "B4", "B3", "B8"])) == {
        "red": 1,
        "green": 2,
        "nir": 3,
    }
    with pytest.raises(ValueError, match="needs band"):
        render_composite(Raster(r.data[:3], None, None, None, []), "false-nir")
    fc = render_composite(r, "false-nir")
    with rasterio.open(root / scenes[0]["class_maps"]["after"]) as src:
        cls = src.read(1)
    # vegetation is red in the NIR false-colour composite, built-up and bare land are not
    veg, other = np.isin(cls, [FOREST, CROPLAND]), np.isin(cls, [BUILTUP, BARE, ROAD])
    assert veg.any() and other.any()
    assert fc[veg, 0].mean() > fc[other, 0].mean() + 50


def test_bands_found_from_descriptions_or_position(tmp_path):
    """Without --bands: band 5 is SWIR by position; shuffled bands are found by their descriptions."""
    pix = [
        ((1350, 1400, 1450, 1750), None),
        ((1350, 1400, 1450, 1750), None),
        ((230, 430, 240, 2900), None),
        ((620, 560, 330, 160), None),
    ]
    data = _stack(pix, extra=[2000, 1000, 1200, 50])  # built (NDBI > 0), not built (NDBI < 0), forest, water
    t = (10.0, 0.0, 500_000.0, 0.0, -10.0, 4_000_000.0)
    plain = tmp_path / "plain5.tif"
    write_raster(plain, Raster(data, "EPSG:32650", t, None, []))
    m = measure_raster(plain)
    assert m.rules.bands == {"blue": 1, "green": 2, "red": 3, "nir": 4, "swir": 5}
    assert m.maps["image"].codes[0].tolist() == [4, 5, 2, 1]
    assert m.to_json()["index_rules"]["bands_from"] == "band descriptions or default order"
    order = [3, 2, 1, 0, 4]  # NIR, red, green, blue, SWIR
    names = ["B8 NIR", "B4 red", "B3 green", "B2 blue", "B11 SWIR"]
    shuffled = tmp_path / "shuffled.tif"
    write_raster(shuffled, Raster(data[order], "EPSG:32650", t, None, names))
    m2 = measure_raster(shuffled)
    assert m2.rules.bands == {"blue": 4, "green": 3, "red": 2, "nir": 1, "swir": 5}
    assert m2.maps["image"].codes[0].tolist() == [4, 5, 2, 1]
    # explicit --bands wins over descriptions: reading the shuffled file as if it were in default order
    m3 = measure_raster(shuffled, rules=load_rules(band_order="blue,green,red,nir"))
    assert m3.rules.bands == {"blue": 1, "green": 2, "red": 3, "nir": 4}
    assert m3.maps["image"].codes[0].tolist() != [4, 5, 2, 1]
