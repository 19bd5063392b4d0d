"""`geovl detect`: boxes merged across tile seams, kept at the last partial tile, placed at the right
ground coordinates (projected CRS, EPSG:4326, rotated transform) and in pixels without a CRS.

The engine is a stand-in that "sees" perfectly: it finds the white rectangles of each tile image and
answers in Qwen2.5-VL's convention (JSON in pixels of the resized image) — so everything after the
model (parsing, resize, clipping, merging, georeferencing, areas, files) is tested exactly."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
from affine import Affine
from PIL import Image
from rasterio.transform import from_origin

from geovl.geo.detect import DetectError, detect_raster, read_wkb_polygon
from geovl.models.box_format import frame_for, render
from geovl.models.registry import get_family


class _Proc:
    class image_processor:  # noqa: N801 - mimics the processor attribute
        size = {"shortest_edge": 28 * 28, "longest_edge": 56 * 56}  # a 64 px tile resizes to 56 x 56


class SeeingEngine:
    name = "seeing-stub"

    def __init__(self, family="qwen2.5-vl"):
        self.family = get_family(family)
        self.processor = _Proc()
        self.requests = []

    def generate(self, requests, params):
        out = []
        for r in requests:
            self.requests.append(r)
            img = np.asarray(Image.open(io.BytesIO(r.images[-1])).convert("RGB"))
            from scipy import ndimage

            lab, n = ndimage.label((img == 255).all(axis=2))
            boxes = [
                {"bbox": [s[1].start, s[0].start, s[1].stop, s[0].stop], "label": "building"}
                for s in ndimage.find_objects(lab)
            ]
            h, w = img.shape[:2]
            lo, hi = (
                self.processor.image_processor.size["shortest_edge"],
                self.processor.image_processor.size["longest_edge"],
            )
            out.append(render(frame_for(self.family, w, h, lo, hi), boxes))
        return out


def write_tif(path, rects, size=(150, 150), crs="EPSG:32650", transform=None):
    h, w = size
    arr = np.full((3, h, w), 60, np.uint8)
    for x1, y1, x2, y2 in rects:
        arr[:, y1:y2, x1:x2] = 255
    profile = {"driver": "GTiff", "width": w, "height": h, "count": 3, "dtype": "uint8"}
    if crs:
        profile |= {"crs": crs, "transform": transform or from_origin(500000, 4400000, 10, 10)}
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(arr)
    return path


SEAM_RECTS = [
    (50, 10, 60, 20),  # inside the overlap of tiles (0,0) and (0,1): seen whole twice
    (40, 30, 75, 40),  # wider than the overlap: cut in both tiles
    (58, 50, 70, 58),  # cut by tile (1,0)'s right edge, whole in tile (1,1)
    (140, 140, 150, 150),  # the raster's corner, in the last partial tile
    (100, 70, 108, 78),
    (110, 70, 118, 78),  # two neighbours: two objects
]


def _bboxes(summary):
    gj = json.loads(open(summary["outputs"]["geojson"]).read())
    return gj, [f["properties"]["pixel_bbox"] for f in gj["features"]]


def test_seams_and_the_last_partial_tile(tmp_path):
    tif = write_tif(tmp_path / "a.tif", SEAM_RECTS)
    s = detect_raster(
        SeeingEngine(), tif, "Locate every building", tmp_path / "out", tile=64, overlap=16, progress=False
    )
    assert s["grid"]["tiles"] == 9 and s["counts"]["unparsed"] == 0
    gj, got = _bboxes(s)
    assert len(got) == len(SEAM_RECTS), got
    for want in SEAM_RECTS:
        best = min(got, key=lambda b: sum(abs(a - c) for a, c in zip(b, want)))
        assert max(abs(a - c) for a, c in zip(best, want)) <= 1.5, (want, got)

    def near(want):
        return min(gj["features"], key=lambda f: sum(abs(a - c) for a, c in zip(f["properties"]["pixel_bbox"], want)))[
            "properties"
        ]

    assert near((50, 10, 60, 20))["tiles"] == 2  # one feature from two tiles
    assert near((40, 30, 75, 40))["tiles"] == 2


def test_projected_crs_lands_on_the_ground(tmp_path):
    tif = write_tif(
        tmp_path / "p.tif", [(0, 20, 20, 50)], size=(100, 120)
    )  # 20 x 30 px of 10 m at the central meridian
    s = detect_raster(SeeingEngine(), tif, "框出所有建筑", tmp_path / "out", tile=64, overlap=16, progress=False)
    gj, (bb,) = _bboxes(s)
    f = gj["features"][0]
    ring = f["geometry"]["coordinates"][0]
    lons, lats = [p[0] for p in ring], [p[1] for p in ring]
    assert min(lons) == pytest.approx(117.0, abs=1e-9)  # x = 500000 m is zone 50's central meridian, 117°E
    assert "crs" not in gj and ring[0] == ring[-1]
    # RFC 7946: counter-clockwise exterior ring
    assert sum(a[0] * b[1] - b[0] * a[1] for a, b in zip(ring, ring[1:])) > 0
    from rasterio.warp import transform as warp

    xs, ys = warp("EPSG:4326", "EPSG:32650", lons, lats)
    assert min(xs) == pytest.approx(500000, abs=0.05) and max(xs) == pytest.approx(500200, abs=15)  # within 1.5 px
    assert max(ys) == pytest.approx(4400000 - 200, abs=15) and min(ys) == pytest.approx(4400000 - 500, abs=15)
    p = f["properties"]
    assert p["area_m2"] == pytest.approx(20 * 30 * 100, rel=0.08)
    assert p["area_mu"] == pytest.approx(p["area_m2"] / (10000 / 15), rel=1e-6)
    # GeoParquet in the raster's own CRS: the box corners through the transform
    t = pq.read_table(s["outputs"]["geoparquet"])
    geo = json.loads(t.schema.metadata[b"geo"])
    assert geo["columns"]["geometry"]["crs"]["id"]["code"] == 32650
    native = read_wkb_polygon(t.column("geometry")[0].as_py())
    x1, y1, x2, y2 = bb
    want = [from_origin(500000, 4400000, 10, 10) @ c for c in ((x1, y1), (x2, y1), (x2, y2), (x1, y2))]
    assert [v for q in sorted(native[:4]) for v in q] == pytest.approx(
        [v for q in sorted(want) for v in q], abs=1e-2
    )  # pixel_bbox is rounded to 1/1000 px


def test_epsg4326_geotiff(tmp_path):
    tr = from_origin(116.0, 40.0, 0.001, 0.001)
    tif = write_tif(tmp_path / "g.tif", [(10, 20, 30, 50)], size=(80, 80), crs="EPSG:4326", transform=tr)
    s = detect_raster(
        SeeingEngine(), tif, "Locate every building", tmp_path / "out", tile=64, overlap=16, progress=False
    )
    gj, (bb,) = _bboxes(s)
    ring = gj["features"][0]["geometry"]["coordinates"][0]
    lon1, lat1 = tr @ (bb[0], bb[1])
    lon2, lat2 = tr @ (bb[2], bb[3])
    e = 1e-6  # pixel_bbox is rounded to 1/1000 px = 1e-6 degree here
    assert min(p[0] for p in ring) == pytest.approx(lon1, abs=e) and max(p[0] for p in ring) == pytest.approx(
        lon2, abs=e
    )
    assert max(p[1] for p in ring) == pytest.approx(lat1, abs=e) and min(p[1] for p in ring) == pytest.approx(
        lat2, abs=e
    )
    assert abs(lon1 - 116.01) <= 0.0015 and abs(lat1 - 39.98) <= 0.0015  # the box placed at pixel (10, 20)
    # area on the ellipsoid: ~ (Δlon · cos φ · 111.32 km) × (Δlat · 110.95 km)
    phi = math.radians((lat1 + lat2) / 2)
    approx = (lon2 - lon1) * 111_320 * math.cos(phi) * (lat1 - lat2) * 110_950
    assert gj["features"][0]["properties"]["area_m2"] == pytest.approx(approx, rel=0.01)


def test_rotated_transform_gives_the_rotated_quadrilateral(tmp_path):
    a = math.radians(30)
    tr = Affine(10 * math.cos(a), -10 * math.sin(a), 500000, -10 * math.sin(a), -10 * math.cos(a), 4400000)
    tif = write_tif(tmp_path / "r.tif", [(20, 20, 40, 30)], size=(64, 64), transform=tr)
    s = detect_raster(
        SeeingEngine(), tif, "Locate every building", tmp_path / "out", tile=64, overlap=16, progress=False
    )
    assert any("rotated" in n["en"] for n in s["notes"])
    t = pq.read_table(s["outputs"]["geoparquet"])
    native = read_wkb_polygon(t.column("geometry")[0].as_py())
    x1, y1, x2, y2 = json.loads(open(s["outputs"]["geojson"]).read())["features"][0]["properties"]["pixel_bbox"]
    want = [tr @ c for c in ((x1, y1), (x2, y1), (x2, y2), (x1, y2))]
    assert [v for q in sorted(native[:4]) for v in q] == pytest.approx([v for q in sorted(want) for v in q], abs=2e-2)
    edges = [(native[i + 1][0] - native[i][0], native[i + 1][1] - native[i][1]) for i in range(4)]
    assert all(abs(dx) > 1 and abs(dy) > 1 for dx, dy in edges)  # no edge is axis-aligned
    area = t.column("area_m2")[0].as_py()
    assert area == pytest.approx((x2 - x1) * (y2 - y1) * 100, rel=1e-4)  # rotation keeps the pixel area


def test_no_crs_gives_pixel_coordinates_with_a_note(tmp_path):
    png = tmp_path / "plain.png"
    arr = np.full((80, 90, 3), 60, np.uint8)
    arr[10:30, 40:70] = 255
    Image.fromarray(arr).save(png)
    s = detect_raster(
        SeeingEngine(), png, "Locate every building", tmp_path / "out", tile=64, overlap=16, progress=False
    )
    gj = json.loads(open(s["outputs"]["geojson"]).read())
    assert gj["geovl"]["georeferenced"] is False and "pixel" in gj["geovl"]["coordinates"]
    assert any("not georeferenced" in n["en"] for n in gj["geovl"]["notes"])
    (f,) = gj["features"]
    xs = [p[0] for p in f["geometry"]["coordinates"][0]]
    assert min(xs) == pytest.approx(40, abs=1.5) and max(xs) == pytest.approx(70, abs=1.5)
    assert "area_m2" not in f["properties"]
    geo = json.loads(pq.read_table(s["outputs"]["geoparquet"]).schema.metadata[b"geo"])
    assert geo["columns"]["geometry"]["crs"] is None
    s2 = detect_raster(SeeingEngine(), png, "q", tmp_path / "out2", tile=64, overlap=16, pixel_size="2", progress=False)
    f2 = json.loads(open(s2["outputs"]["geojson"]).read())["features"][0]
    assert f2["properties"]["area_m2"] == pytest.approx(30 * 20 * 4, rel=0.1)


def test_before_image_comes_first_and_must_share_the_grid(tmp_path):
    before = write_tif(tmp_path / "b.tif", [], size=(64, 64))
    after = write_tif(tmp_path / "a.tif", [(10, 10, 20, 20)], size=(64, 64))
    eng = SeeingEngine()
    s = detect_raster(
        eng, after, "框出所有新增建筑", tmp_path / "out", before=before, tile=64, overlap=16, progress=False
    )
    assert s["counts"]["detections"] == 1 and all(len(r.images) == 2 for r in eng.requests)
    other = write_tif(tmp_path / "o.tif", [], size=(64, 70))
    with pytest.raises(DetectError, match="share one pixel grid"):
        detect_raster(eng, after, "q", tmp_path / "out3", before=other, tile=64, overlap=16, progress=False)


def test_unparseable_answers_are_counted_not_fatal(tmp_path):
    class Babbler(SeeingEngine):
        def generate(self, requests, params):
            return ["I cannot tell." for _ in requests]

    tif = write_tif(tmp_path / "a.tif", [(10, 10, 20, 20)], size=(100, 100))
    s = detect_raster(Babbler(), tif, "Locate every building", tmp_path / "out", tile=64, overlap=16, progress=False)
    assert s["counts"]["unparsed"] == s["counts"]["asked"] == 4 and s["counts"]["detections"] == 0


def test_cli_with_a_tiny_model_and_eval_records_the_box_frame(tiny_model_dir, tmp_path):
    """End to end with a real (random) tiny model: `geovl detect` runs and writes its files, every tile
    asked once; `geovl eval` predictions of grounding samples carry the frame `geovl score` reads."""
    from geovl.cli import main
    from geovl.data.boxes import answer_text, box_dict
    from geovl.data.io import DatasetWriter
    from geovl.data.schema import make_sample
    from geovl.evaluate.generate import run_predictions
    from geovl.evaluate.score import score_file
    from geovl.inference import GenerationParams, LocalEngine
    from geovl.models.box_format import BoxFrame, parse_text
    from geovl.models.preprocess import PreprocessConfig

    model = str(tiny_model_dir("qwen2.5-vl"))
    tif = write_tif(tmp_path / "a.tif", [(10, 10, 30, 30)], size=(100, 90))
    rc = main(
        [
            "detect",
            str(tif),
            "-q",
            "Locate every building",
            "--model",
            model,
            "--out",
            str(tmp_path / "det"),
            "--tile",
            "64",
            "--overlap",
            "16",
            "--max-new-tokens",
            "24",
            "--no-progress",
        ]
    )
    assert rc == 0
    summ = json.loads((tmp_path / "det" / "detections.json").read_text())
    assert summ["counts"]["asked"] == 4 and summ["grid"]["tiles"] == 4
    gj = json.loads((tmp_path / "det" / "detections.geojson").read_text())
    assert len(gj["features"]) == summ["counts"]["detections"]
    assert pq.read_table(tmp_path / "det" / "detections.parquet").num_rows == summ["counts"]["detections"]

    buf = io.BytesIO()
    Image.fromarray(np.full((90, 120, 3), 70, np.uint8)).save(buf, format="PNG")
    boxes = [box_dict([5, 5, 40, 30], "building")]
    s = make_sample(
        "g", "Locate every building", answer_text(boxes), [buf.getvalue()], qtype="grounding", meta={"boxes": boxes}
    )
    with DatasetWriter(tmp_path / "g.parquet") as w:
        w.write(s)
    eng = LocalEngine(model, device="cpu", batch_size=2)
    run_predictions(
        eng, tmp_path / "g.parquet", tmp_path / "p.jsonl", GenerationParams(max_new_tokens=16), progress=False
    )
    rec = json.loads((tmp_path / "p.jsonl").read_text().splitlines()[0])
    frame = BoxFrame.from_dict(rec["meta"]["box_frame"])
    lo, hi = PreprocessConfig.bounds_of(eng.processor)
    assert frame == get_family("qwen2.5-vl").box_frame(120, 90, lo, hi)
    results, metrics = score_file(tmp_path / "p.jsonl")
    parsed = parse_text(frame, rec["prediction"]) is not None
    assert metrics["by_qtype"]["grounding"]["unparsed"] == (0 if parsed else 1)
