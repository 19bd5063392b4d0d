"""``geovl measure`` in-process: table, --json, --context, --out files, and bad input (clear errors
naming the file, non-zero exit)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from geovl.cli import main
from geovl.imagery.geotiff import Raster, read_raster, write_raster
from geovl.synth import synthesize

UTM = (10.0, 0.0, 500_000.0, 0.0, -10.0, 4_000_000.0)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    out = tmp_path_factory.mktemp("geo-cli")
    synthesize(out, scenes=3, seed=2, size=64, langs="en", questions_per_scene=1, split="train=1", progress=False)
    recs = [json.loads(line) for line in (out / "scenes.jsonl").read_text().splitlines()]
    rec = max(recs, key=lambda r: r["change"]["changed_pixels"])
    assert rec["change"]["changed_pixels"] > 0
    return {
        k: out / rec[group][date]
        for k, group, date in [
            ("after", "geotiffs", "after"),
            ("before", "geotiffs", "before"),
            ("after_cls", "class_maps", "after"),
            ("before_cls", "class_maps", "before"),
        ]
    } | {"rec": rec, "root": out}


def _run(capsys, *argv):
    rc = main(["measure", *map(str, argv), "--no-progress"])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_text_json_context_and_out(scene, capsys, tmp_path):
    rec = scene["rec"]
    rc, out, _ = _run(capsys, scene["after"], "--classes", scene["after_cls"], "--before-classes", scene["before_cls"])
    assert rc == 0
    assert "土地覆盖面积量算" in out and "[变化 change before → after]" in out and "精度说明" in out
    assert f"changed: {rec['change']['changed_pixels']} px" in out

    rc, out, _ = _run(capsys, scene["after_cls"], "--before", scene["before_cls"], "--json")
    assert rc == 0
    doc = json.loads(out)
    assert doc["change"]["changed_pixels"] == rec["change"]["changed_pixels"]
    after = {c["key"]: c["pixels"] for c in doc["dates"]["after"]["classes"]}
    assert after == rec["after"]["class_pixels"]
    assert doc["inputs"]["after"]["classes"] == str(scene["after_cls"])

    rc, out, _ = _run(capsys, scene["after_cls"], "--before", scene["before_cls"], "--context", "zh")
    assert rc == 0 and out.startswith("[geovl measure]") and "变化（前→后）" in out

    dest = tmp_path / "out"
    rc, out, err = _run(capsys, scene["after"], "--before", scene["before"], "--out", dest, "--wgs84", "--top", "3")
    assert rc == 0 and "wrote" in err
    files = sorted(p.name for p in dest.iterdir())
    assert files == [
        "after_classes_derived.tif",
        "before_classes_derived.tif",
        "changes.geojson",
        "changes_4326.geojson",
        "measurement.json",
        "report.txt",
    ]
    saved = json.loads((dest / "measurement.json").read_text())
    assert saved["classes_source"] == "derived" and saved["index_rules"]["thresholds"]["dense_ndvi"] == 0.6
    fc = json.loads((dest / "changes.geojson").read_text())
    assert len(fc["features"]) == min(3, fc["geovl"]["patches_total"])
    assert (dest / "report.txt").read_text().startswith("geovl measure")
    derived = read_raster(dest / "after_classes_derived.tif")
    assert derived.nodata == 0 and derived.crs == "EPSG:32650" and set(np.unique(derived.data)) <= {1, 2, 3, 4, 5}
    pixels = {c["code"]: c["pixels"] for c in saved["dates"]["after"]["classes"]}
    assert {int(k): int(v) for k, v in zip(*np.unique(derived.data, return_counts=True))} == {
        k: v for k, v in pixels.items() if v
    }


def _err(capsys, *argv) -> str:
    rc, out, err = _run(capsys, *argv)
    assert rc == 2 and out == "", (rc, out, err)
    assert "Traceback" not in err
    return err


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_bad_inputs(scene, capsys, tmp_path):
    data = read_raster(scene["after"]).data
    # no CRS: areas refused unless --pixel-size
    nocrs = tmp_path / "nocrs.tif"
    write_raster(nocrs, Raster(read_raster(scene["after_cls"]).data, None, None, 0, []))
    err = _err(capsys, nocrs)
    assert "nocrs.tif: has no CRS" in err and "--pixel-size" in err
    rc, out, _ = _run(capsys, nocrs, "--pixel-size", "10", "--class-table", "synth", "--json")
    assert rc == 0 and json.loads(out)["area_method"] == {"method": "pixel-size", "pixel_area_m2": 100.0}
    # two dates on different grids, one without CRS
    shifted = tmp_path / "shifted_nocrs.tif"
    write_raster(shifted, Raster(read_raster(scene["before_cls"]).data[:, 1:, :], None, None, 0, []))
    err = _err(capsys, scene["after_cls"], "--before", shifted)
    assert "has no CRS" in err and "different grids" in err
    # mismatched band counts
    five = tmp_path / "five_bands.tif"
    r = read_raster(scene["before"])
    write_raster(five, Raster(np.concatenate([data, data[:1]]), r.crs, r.transform, None, []))
    err = _err(capsys, scene["after"], "--before", five)
    assert "five_bands.tif has 5 bands" in err and "after.tif has 4" in err
    # all nodata
    empty = tmp_path / "empty.tif"
    write_raster(empty, Raster(np.zeros((1, 8, 8), np.uint8), "EPSG:32650", UTM, 0, []))
    assert "empty.tif: every pixel is nodata" in _err(capsys, empty)
    # AOI outside the raster
    aoi = tmp_path / "elsewhere.geojson"
    aoi.write_text(
        json.dumps({"type": "Polygon", "coordinates": [[[120.0, 30.0], [120.1, 30.0], [120.1, 30.1], [120.0, 30.0]]]})
    )
    assert "elsewhere.geojson: the AOI does not cover" in _err(capsys, scene["after_cls"], "--aoi", aoi)
    # a reflectance image with too few bands to derive classes
    rgb = tmp_path / "rgb.tif"
    write_raster(rgb, Raster(data[:3], r.crs, r.transform, None, []))
    assert "rgb.tif: 3 band(s)" in _err(capsys, rgb)
    # mixing supplied and derived classes between the dates
    assert "same kind of classes" in _err(
        capsys, scene["after"], "--classes", scene["after_cls"], "--before", scene["before"]
    )
    # missing files, bad options
    assert "missing.tif: file not found" in _err(capsys, tmp_path / "missing.tif")
    assert "not_a_table.json: class table not found" in _err(
        capsys, scene["after_cls"], "--class-table", tmp_path / "not_a_table.json"
    )
    assert "--wgs84" in _err(capsys, scene["after_cls"], "--wgs84")
    assert "--pixel-size" in _err(capsys, nocrs, "--pixel-size", "-3")
    text = tmp_path / "notes.tif"
    text.write_text("not a raster")
    assert "notes.tif: not a readable raster" in _err(capsys, text)
    assert "EPSG:4326 GeoJSON needs a raster with a CRS" in _err(
        capsys, nocrs, "--before", nocrs, "--pixel-size", "10", "--out", tmp_path / "o", "--wgs84"
    )


def test_help_lists_measure(capsys):
    with pytest.raises(SystemExit):
        main(["measure", "--help"])
    out = capsys.readouterr().out
    assert "--before-classes" in out and "--aoi" in out and "亩" in out
