""" "Where" questions in `geovl ask`: the answer's boxes through the family convention, scaled to the
raster, placed on the map (map CRS + WGS 84 lon/lat) and measured (m², 公顷, 亩), in --json, the text
output and --geojson. The engine stand-in answers a fixed box in Qwen2.5-VL's convention for the image
it is shown (everything after the model's text is real); a real tiny model checks the plumbing."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.transform import from_origin

from geovl.cli import main
from geovl.geo.ask_boxes import boxes_geojson, boxes_text, is_where_question, locate_answer
from geovl.models.box_format import frame_for, render
from geovl.models.registry import get_family

LO, HI = 56 * 56, 448 * 448  # 56, 112 and 224 px images keep their size under these bounds (multiples of 28)


class _Proc:
    class image_processor:  # noqa: N801 - mimics the processor attribute
        size = {"shortest_edge": LO, "longest_edge": HI}


class BoxAnswer:
    """A local-engine stand-in (family + processor) whose text answer is a fixed box (in pixels of a
    reference size ``ref``), written in Qwen2.5-VL's convention for the image it is shown."""

    name = "box-answer"
    preprocess = None

    def __init__(self, bbox, ref):
        self.family, self.processor = get_family("qwen2.5-vl"), _Proc()
        self.bbox, self.ref = bbox, ref

    def _text(self, req):
        w, h = Image.open(io.BytesIO(req.images[-1])).size
        sx, sy = w / self.ref[0], h / self.ref[1]
        b = [self.bbox[0] * sx, self.bbox[1] * sy, self.bbox[2] * sx, self.bbox[3] * sy]
        return render(frame_for(self.family, w, h, LO, HI), [{"bbox": b, "label": "building"}])

    def generate(self, requests, params=None):
        return [self._text(r) for r in requests]

    def stream(self, req, params=None):
        text = self._text(req)
        for i in range(0, len(text), 5):
            yield text[i : i + 5]


def _tif(path, size=112, crs="EPSG:32650"):
    arr = np.full((3, size, size), 90, np.uint8)
    prof = {"driver": "GTiff", "width": size, "height": size, "count": 3, "dtype": "uint8"}
    if crs:
        prof |= {"crs": crs, "transform": from_origin(500000, 4400000, 10, 10)}
    with rasterio.open(path, "w", **prof) as ds:
        ds.write(arr)
    return path


def _classes(path, size):
    prof = {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "count": 1,
        "dtype": "uint8",
        "crs": "EPSG:32650",
        "transform": from_origin(500000, 4400000, 10, 10),
    }
    with rasterio.open(path, "w", **prof) as ds:
        ds.write(np.full((1, size, size), 50, np.uint8))  # ESA WorldCover 50: built-up
    return path


def test_where_questions():
    for q in (
        "框出所有建筑",
        "新增建筑在哪里？",
        "Where are the new buildings?",
        "Locate every pond",
        "标出水体的位置",
    ):
        assert is_where_question(q), q
    for q in ("耕地面积约为多少公顷？", "How much cropland is there?", "Is there water?"):
        assert not is_where_question(q), q


@pytest.mark.parametrize("shown", [112, 56])  # the raster as stored, and shown decimated by 2
def test_boxes_land_on_the_map_with_their_areas(tmp_path, shown):
    tif = _tif(tmp_path / "a.tif")
    eng = BoxAnswer([10, 20, 60, 50], (112, 112))  # raster pixels
    img = Image.new("RGB", (shown, shown))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    text = eng._text(type("R", (), {"images": [buf.getvalue()]}))
    info = locate_answer(eng, tif, {"width": shown, "height": shown}, text)
    assert info["parsed"] and info["georeferenced"] and info["crs"] == "EPSG:32650" and len(info["boxes"]) == 1
    b = info["boxes"][0]
    assert b["pixel_bbox"] == pytest.approx([10, 20, 60, 50], abs=1e-6) and b["label"] == "building"
    # 50 × 30 pixels of 10 m × 10 m = 150 000 m² = 15 ha = 225 亩
    assert (
        b["area_m2"] == pytest.approx(150000.0)
        and b["area_ha"] == pytest.approx(15.0)
        and b["area_mu"] == pytest.approx(225.0)
    )
    xs = sorted({p[0] for p in b["map_ring"]})
    ys = sorted({p[1] for p in b["map_ring"]})
    assert xs == pytest.approx([500100.0, 500600.0]) and ys == pytest.approx([4399500.0, 4399800.0])
    from rasterio.warp import transform as warp

    lons, lats = [p[0] for p in b["lonlat_ring"]], [p[1] for p in b["lonlat_ring"]]
    # x = 500000 m is zone 50's central meridian (117°E): the box starts 100 m east of it, ~39.7°N
    assert 117.0 < min(lons) < 117.0 + 200 / 111_320 and 39.5 < min(lats) < max(lats) < 39.8
    ex, ey = warp("EPSG:4326", "EPSG:32650", lons, lats)  # back to the map: the ring is the box's outline
    assert min(ex) == pytest.approx(500100.0, abs=1e-3) and max(ex) == pytest.approx(500600.0, abs=1e-3)
    assert min(ey) == pytest.approx(4399500.0, abs=1e-3) and max(ey) == pytest.approx(4399800.0, abs=1e-3)
    gj = boxes_geojson(info, "Locate every building")
    ring = gj["features"][0]["geometry"]["coordinates"][0]
    assert gj["type"] == "FeatureCollection" and ring[0] == ring[-1] and ring == b["lonlat_ring"]
    assert gj["features"][0]["properties"]["area_mu"] == pytest.approx(225.0) and "WGS 84" in gj["geovl"]["coordinates"]
    assert "225.0 亩" in boxes_text(info, "zh") and "15.00 公顷" in boxes_text(info, "en")


def test_unreadable_answer_and_raster_without_crs(tmp_path):
    eng = BoxAnswer([10, 20, 60, 50], (112, 112))
    info = locate_answer(eng, _tif(tmp_path / "a.tif"), {"width": 112, "height": 112}, "There are some buildings.")
    assert not info["parsed"] and info["boxes"] == [] and "没有可读取的框" in boxes_text(info, "zh")
    plain = _tif(tmp_path / "p.tif", crs=None)
    text = render(frame_for(eng.family, 112, 112, LO, HI), [{"bbox": [10, 20, 60, 50], "label": "building"}])
    info = locate_answer(eng, plain, {"width": 112, "height": 112}, text, pixel_size="2")
    b = info["boxes"][0]
    assert not info["georeferenced"] and "lonlat_ring" not in b and b["area_m2"] == pytest.approx(1500 * 4.0)
    gj = boxes_geojson(info)
    assert gj["features"][0]["geometry"]["coordinates"][0][0] == [10.0, 20.0] and "pixels" in gj["geovl"]["coordinates"]


def test_ask_cli_where_question_json_text_and_geojson(tmp_path, capsys, monkeypatch):
    import geovl.commands.eval as ev

    tif = _tif(tmp_path / "s.tif", size=224)
    eng = BoxAnswer([20, 40, 120, 90], (224, 224))
    monkeypatch.setattr(ev, "open_engine_from_args", lambda args, *a, **k: eng)
    base = [
        "ask",
        "--image",
        str(tif),
        "--classes",
        str(_classes(tmp_path / "c.tif", 224)),
        "--class-table",
        "worldcover",
        "--model",
        str(tmp_path / "m"),
        "--question",
    ]
    out_gj = tmp_path / "b.geojson"
    assert main(base + ["Locate every building", "--json", "--geojson", str(out_gj)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["answer"].startswith('[{"bbox_2d"')
    b = doc["boxes"]["boxes"][0]
    # 100 × 50 pixels of 100 m² = 500 000 m² = 50 公顷 = 750 亩
    assert (
        b["pixel_bbox"] == pytest.approx([20, 40, 120, 90])
        and b["area_ha"] == pytest.approx(50.0)
        and b["area_mu"] == pytest.approx(750.0)
    )
    gj = json.loads(out_gj.read_text("utf-8"))
    assert len(gj["features"]) == 1 and gj["features"][0]["properties"]["area_m2"] == pytest.approx(500000.0)
    assert gj["features"][0]["geometry"]["coordinates"][0] == b["lonlat_ring"]
    assert main(base + ["框出所有建筑"]) == 0  # streamed: the answer, then the boxes with their areas
    text = capsys.readouterr().out
    assert "[框 boxes] 1 个" in text.split("[回答 answer]")[1] and "750.0 亩" in text and "50.00 公顷" in text
    # not a "where" question: no boxes member; --geojson is refused with a clear error
    assert main(base + ["How much area is there?", "--json"]) == 0
    assert "boxes" not in json.loads(capsys.readouterr().out)
    assert main(base + ["How much area is there?", "--geojson", str(tmp_path / "x.geojson")]) == 2
    assert "--geojson is for questions that ask where" in capsys.readouterr().err


def test_ask_cli_where_question_with_a_tiny_model(tmp_path, tiny_model_dir, capsys):
    """A real (random) tiny model: whatever it answers, the where-question plumbing runs end to end."""
    tif = _tif(tmp_path / "s.tif")
    out_gj = tmp_path / "t.geojson"
    rc = main(
        [
            "ask",
            "--image",
            str(tif),
            "--classes",
            str(_classes(tmp_path / "c.tif", 112)),
            "--class-table",
            "worldcover",
            "--question",
            "框出所有建筑",
            "--model",
            str(tiny_model_dir("qwen2.5-vl")),
            "--device",
            "cpu",
            "--max-new-tokens",
            "8",
            "--json",
            "--geojson",
            str(out_gj),
        ]
    )
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert isinstance(doc["boxes"]["parsed"], bool) and doc["boxes"]["shown_size"] == [112, 112]
    gj = json.loads(out_gj.read_text("utf-8"))
    assert gj["type"] == "FeatureCollection" and len(gj["features"]) == len(doc["boxes"]["boxes"])
