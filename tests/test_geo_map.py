"""geovl map: tiled inference over a raster larger than one window — exact tile grid, output CRS and
transform, GeoJSON ground coordinates, nodata skipping, resume (engine calls counted), windowed reads,
answers from text (remote stub) and from log-probabilities (tiny local model)."""

from __future__ import annotations

import base64
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
from affine import Affine
from PIL import Image
from rasterio.warp import transform as warp

from geovl.cli import main
from geovl.geo.detect import read_wkb_polygon
from geovl.geo.mapper import sidecar_path
from geovl.geo.tiles import TileGrid, png_bytes, read_rgb, render_spec, window_polygon
from geovl.imagery.geotiff import Raster, read_raster, write_raster
from geovl.synth import synthesize

W, H, TILE, OVERLAP = 600, 450, 224, 32
STRIDE = TILE - OVERLAP
QUESTION = "Is there water in the image?"


@pytest.fixture(scope="module")
def mosaic(tmp_path_factory):
    """A 600 x 450 4-band mosaic stitched from six 240 px synth scenes (3 x 2), bottom-right corner
    (rows >= 384, cols >= 384) set to nodata 0, so tile (2, 2) is all nodata."""
    root = tmp_path_factory.mktemp("map")
    synthesize(
        root / "synth",
        scenes=6,
        size=240,
        langs="en",
        questions_per_scene=1,
        split="train=1",
        tasks="presence",
        progress=False,
    )
    tiles = [read_raster(root / "synth" / f"scenes/s{i:05d}/after.tif") for i in range(6)]
    rows = [np.concatenate([t.data for t in tiles[r * 3 : (r + 1) * 3]], axis=2) for r in range(2)]
    data = np.concatenate(rows, axis=1)[:, :H, :W].copy()
    data[:, 384:, 384:] = 0
    assert (data[:, :384] > 0).all()  # real reflectance is never exactly 0 here
    path = root / "mosaic.tif"
    write_raster(path, Raster(data, tiles[0].crs, tiles[0].transform, 0, list(tiles[0].band_names)))
    nocrs = root / "nocrs.tif"
    with rasterio.open(nocrs, "w", driver="GTiff", width=300, height=300, count=3, dtype="uint8") as dst:
        dst.write(np.full((3, 300, 300), 80, np.uint8))
    return root, path, nocrs


def windows():
    g = TileGrid(W, H, TILE, OVERLAP)
    return {(r, c): g.window(r, c).flatten() for r, c in g}


def test_tile_grid_arithmetic():
    g = TileGrid(W, H, TILE, OVERLAP)
    assert (g.n_rows, g.n_cols, g.count, g.stride) == (3, 3, 9, 192)
    assert g.window(0, 0).flatten() == (0, 0, 224, 224)
    assert g.window(2, 2).flatten() == (384, 384, 216, 66)  # clipped at the edges, reaching them exactly
    assert g.window(1, 2).flatten() == (384, 192, 216, 224)
    assert TileGrid(224, 100, 224, 32).count == 1 and TileGrid(225, 100, 224, 32).n_cols == 2
    assert TileGrid(1000, 10, 100, 0).n_cols == 10
    t = Affine(10.0, 0.0, 440000.0, 0.0, -10.0, 4065000.0)
    assert g.out_transform(t) == Affine(1920.0, 0.0, 440000.0, 0.0, -1920.0, 4065000.0)
    poly = window_polygon(t, (384, 192, 216, 224))
    assert poly["coordinates"][0] == [
        [443840.0, 4063080.0],
        [443840.0, 4060840.0],
        [446000.0, 4060840.0],
        [446000.0, 4063080.0],
        [443840.0, 4063080.0],
    ]  # counter-clockwise, closed
    for bad in ((224, 224), (224, 300), (8, 0)):
        with pytest.raises(ValueError):
            TileGrid(100, 100, *bad)


def _coords(win):
    x, y, w, h = win
    x0, y0 = 440000.0 + 10 * x, 4065000.0 - 10 * y
    return {(x0, y0), (x0 + 10 * w, y0), (x0 + 10 * w, y0 - 10 * h), (x0, y0 - 10 * h)}


def _parquet_rings(path):
    t = pq.read_table(path)
    geo = json.loads(t.schema.metadata[b"geo"])
    assert geo["columns"]["geometry"]["crs"]["id"]["code"] == 32650 and geo["columns"]["geometry"]["encoding"] == "WKB"
    rows = t.to_pylist()
    return {(d["row"], d["col"]): read_wkb_polygon(d["geometry"]) for d in rows}


def check_outlines(png, wins, flagged, answered):
    """The overview (full size here) outlines exactly the flagged tiles in red."""
    img = np.asarray(Image.open(png).convert("RGB"))
    assert img.shape == (H, W, 3)
    for (r, c), (x, y, w, h) in wins.items():
        if answered[r, c]:
            red = tuple(img[y + h // 2, x]) == (255, 0, 0) and tuple(img[y, x + w // 2]) == (255, 0, 0)
            assert red == ((r, c) in flagged), (r, c)


def _read_flags(path):
    with rasterio.open(path) as ds:
        return ds.read(), ds.crs, ds.transform, ds.descriptions


def test_map_tiny_model_choice_geotiff_geojson_png_and_resume(mosaic, tiny_model_dir, tmp_path, capsys, monkeypatch):
    from geovl.inference.engine import LocalEngine

    _, path, _ = mosaic
    model = str(tiny_model_dir("qwen2-vl"))
    calls = []
    orig = LocalEngine.choice_logprobs

    def counting(self, requests, candidates):
        calls.append(len(requests))
        return orig(self, requests, candidates)

    monkeypatch.setattr(LocalEngine, "choice_logprobs", counting)
    out, gj, png = tmp_path / "flags.tif", tmp_path / "flags.geojson", tmp_path / "overview.png"
    gpq = tmp_path / "flags.parquet"
    argv = [
        "map",
        str(path),
        "--question",
        QUESTION,
        "--out",
        str(out),
        "--model",
        model,
        "--device",
        "cpu",
        "--tile",
        str(TILE),
        "--overlap",
        str(OVERLAP),
        "--batch-size",
        "3",
        "--answer-from",
        "choice",
        "--geojson",
        str(gj),
        "--geoparquet",
        str(gpq),
        "--png",
        str(png),
        "--label",
        "疑似违规建设: 新增建筑位于耕地",
        "--no-progress",
    ]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["tiles"], summary["nodata"], summary["run"], summary["done_before"]) == (9, 1, 8, 0)
    assert summary["engine_requests"] == {"generate": 0, "choice_logprobs": 8} and sum(calls) == 8
    assert calls == [3, 3, 2]  # batches of --batch-size

    bands, crs, transform, desc = _read_flags(out)
    with rasterio.open(path) as src:
        assert crs == src.crs and crs.to_epsg() == 32650
        assert transform == src.transform @ Affine.scale(STRIDE)
    assert transform == Affine(1920.0, 0.0, 440000.0, 0.0, -1920.0, 4065000.0)
    assert bands.shape == (2, 3, 3) and "answer code" in desc[0] and desc[1] == "P(yes)"
    with rasterio.open(out) as ds:  # a Cloud-Optimized GeoTIFF (GDAL's COG driver)
        assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG" and ds.profile["tiled"]
    code, prob = bands
    assert np.isnan(code[2, 2]) and np.isnan(prob[2, 2])  # the all-nodata tile
    answered = ~np.isnan(code)
    assert answered.sum() == 8 and set(np.unique(code[answered])) <= {0.0, 1.0}
    assert ((prob[answered] >= 0) & (prob[answered] <= 1)).all()
    assert ((code == 1) == (prob >= 0.5))[answered].all()  # forced choice: the more probable candidate

    side = [json.loads(line) for line in sidecar_path(out).read_text("utf-8").splitlines()]
    assert side[0]["schema"] == "geovl.map/1" and side[0]["question"] == QUESTION and len(side) == 10
    assert {(r["row"], r["col"]): r["status"] for r in side[1:]}[(2, 2)] == "nodata"

    doc = json.loads(gj.read_text("utf-8"))
    assert "crs" not in doc and doc["geovl"]["crs"] == "EPSG:32650"  # RFC 7946: WGS 84 lon/lat, no crs member
    parquet_yes = _parquet_rings(gpq)
    feats_yes = {(f["properties"]["row"], f["properties"]["col"]): f for f in doc["features"]}
    assert set(feats_yes) == {tuple(map(int, rc)) for rc in np.argwhere(code == 1)}
    wins = windows()
    check_outlines(png, wins, set(feats_yes), answered)

    # same run, flag the other answer: outputs rebuilt from the sidecar, no engine call
    calls.clear()
    assert main(argv[:-1] + ["--resume", "--flag-if", "no", "--no-progress"]) == 0
    s2 = json.loads(capsys.readouterr().out)
    assert calls == [] and s2["run"] == 0 and s2["done_before"] == 9
    feats_no = {
        (f["properties"]["row"], f["properties"]["col"]): f for f in json.loads(gj.read_text("utf-8"))["features"]
    }
    assert set(feats_no) == {tuple(map(int, rc)) for rc in np.argwhere(code == 0)}
    check_outlines(png, wins, set(feats_no), answered)
    parquet_no = _parquet_rings(gpq)
    assert set(parquet_yes) == set(feats_yes) and set(parquet_no) == set(feats_no)
    for (r, c), f in {**feats_yes, **feats_no}.items():  # every answered tile: exact ground footprint
        ring = f["geometry"]["coordinates"][0]
        assert f["geometry"]["type"] == "Polygon" and ring[0] == ring[-1] and len(ring) == 33  # 8 points per edge
        area2 = sum(a[0] * b[1] - b[0] * a[1] for a, b in zip(ring, ring[1:]))
        assert area2 > 0  # RFC 7946: exterior ring counter-clockwise
        for x, y in _coords(wins[r, c]):  # every tile corner, reprojected directly by PROJ, is a vertex (lon, lat)
            (lon,), (lat,) = warp("EPSG:32650", "EPSG:4326", [x], [y])
            assert 110 < lon < 120 and 30 < lat < 40
            assert min(abs(px - lon) + abs(py - lat) for px, py in ring) < 1e-9
        native = (parquet_yes | parquet_no)[r, c]  # GeoParquet: the raster CRS, exact corners
        assert native[0] == native[-1] and len(native) == 5 and {tuple(p) for p in native} == _coords(wins[r, c])
        p = f["properties"]
        assert p["question"] == QUESTION and p["label"] == "疑似违规建设: 新增建筑位于耕地"
        assert p["p_yes"] == pytest.approx(float(prob[r, c]), abs=1e-6)
    assert len(feats_yes) + len(feats_no) == 8 and (2, 2) not in {**feats_yes, **feats_no}

    # resume after losing the last 3 records and half a line: only those tiles run again
    lines = sidecar_path(out).read_text("utf-8").splitlines(keepends=True)
    lost = [json.loads(x) for x in lines[-3:]]
    sidecar_path(out).write_text("".join(lines[:-3]) + lines[-3][:17], encoding="utf-8")
    n_lost = sum(1 for r in lost if r["status"] == "answered")
    calls.clear()
    assert main(argv[:-1] + ["--resume", "--no-progress"]) == 0
    s3 = json.loads(capsys.readouterr().out)
    assert sum(calls) == n_lost and s3["run"] == n_lost and s3["done_before"] == 6
    after, _, _, _ = _read_flags(out)
    np.testing.assert_array_equal(after, bands)  # deterministic model: the same map
    assert len(sidecar_path(out).read_text("utf-8").splitlines()) == 10

    # an earlier run's outputs are not replaced silently
    assert main(argv) == 2
    assert "--resume" in capsys.readouterr().err


# -- answers from text: a remote OpenAI-compatible stub that looks at the tile image -----------------
def water_answer(png: bytes) -> str:
    a = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    blue = ((a[..., 2] > a[..., 0] + 25) & (a[..., 2] > a[..., 1])).mean()
    return "yes" if blue > 0.03 else "no" if blue < 0.003 else "hard to say"


class Stub(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def _send(self, obj):
        data = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._send({"object": "list", "data": [{"id": "stub", "object": "model", "created": 0, "owned_by": "t"}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        parts = body["messages"][-1]["content"]
        url = next(p["image_url"]["url"] for p in parts if p["type"] == "image_url")
        text = next(p["text"] for p in parts if p["type"] == "text")
        self.server.seen.append(text)
        answer = water_answer(base64.b64decode(url.split(",", 1)[1]))
        self._send(
            {
                "id": "c",
                "object": "chat.completion",
                "created": 0,
                "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
            }
        )


@pytest.fixture(scope="module")
def stub():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Stub)
    server.seen = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server, f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_map_remote_text_answers_windowed_reads(mosaic, stub, tmp_path, capsys, monkeypatch):
    _, path, _ = mosaic
    server, url = stub
    reads = []
    orig = rasterio.io.DatasetReader.read

    def spy(self, indexes=None, *a, **kw):
        reads.append((kw.get("window"), kw.get("out_shape")))
        return orig(self, indexes, *a, **kw)

    monkeypatch.setattr(rasterio.io.DatasetReader, "read", spy)
    out, gj = tmp_path / "w.tif", tmp_path / "w.geojson"
    server.seen.clear()
    assert (
        main(
            [
                "map",
                str(path),
                "-q",
                QUESTION,
                "--out",
                str(out),
                "--api",
                url,
                "--geojson",
                str(gj),
                "--png",
                str(tmp_path / "w.png"),
                "--png-size",
                "300",
                "--batch-size",
                "4",
                "--no-progress",
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert server.seen == [QUESTION] * 8 and summary["engine_requests"] == {"generate": 8, "choice_logprobs": 0}
    # every read of the mosaic was a window of one tile or a decimated overview (never the whole raster)
    for window, out_shape in reads:
        assert window is not None or (out_shape is not None and max(out_shape[1:]) <= 300)
        if window is not None:
            assert window.width <= TILE and window.height <= TILE

    # expected answers: the same rendering of each window, judged by the same rule
    with rasterio.open(path) as ds:
        spec = render_spec(ds.count, ds.descriptions)
        assert spec.bands == (2, 1, 0)  # true colour of B2, B3, B4, B8
        expect = {}
        for rc, win in windows().items():
            rgb, valid = read_rgb(ds, spec, win)
            if valid.any():
                expect[rc] = water_answer(png_bytes(rgb, pad_to=TILE))
    codes = {"yes": 1.0, "no": 0.0, "hard to say": 255.0}
    bands, _, _, _ = _read_flags(out)
    for (r, c), ans in expect.items():
        assert bands[0, r, c] == codes[ans]
        assert np.isnan(bands[1, r, c]) if ans == "hard to say" else bands[1, r, c] == codes[ans]
    assert set(expect.values()) >= {"yes", "no"}  # the mosaic has tiles with and without water
    feats = json.loads(gj.read_text("utf-8"))["features"]
    assert {(f["properties"]["row"], f["properties"]["col"]) for f in feats} == {
        rc for rc, a in expect.items() if a == "yes"
    }
    assert all(f["properties"]["probability"] == 1.0 and f["properties"]["answer"] == "yes" for f in feats)
    assert summary["answers"] == {
        k: list(expect.values()).count(v) for k, v in (("yes", "yes"), ("no", "no"), ("unknown", "hard to say"))
    }
    assert Image.open(tmp_path / "w.png").size == (300, 225)


def test_map_bad_inputs(mosaic, tmp_path, capsys):
    _, path, nocrs = mosaic
    base = ["--question", QUESTION, "--api", "http://127.0.0.1:9/v1", "--model", "x", "--no-progress"]
    # option errors come before any engine is opened (the --api URL is unreachable on purpose)
    assert main(["map", str(path), "--out", str(tmp_path / "a.tif"), "--tile", "64", "--overlap", "64", *base]) == 2
    assert "--overlap" in capsys.readouterr().err
    assert main(["map", str(path), "--out", str(tmp_path / "a.tif"), "--resume", "--overwrite", *base]) == 2
    assert "exclude" in capsys.readouterr().err


def test_map_api_errors_before_engine_work(mosaic, tmp_path):
    from geovl.geo.mapper import MapError, map_raster

    _, path, nocrs = mosaic

    class NoCalls:
        name = "none"

        def generate(self, requests, params=None):
            raise AssertionError("no engine call expected")

    with pytest.raises(MapError, match="no CRS"):
        map_raster(NoCalls(), nocrs, QUESTION, tmp_path / "n.tif", progress=False)
    with pytest.raises(MapError, match="file not found"):
        map_raster(NoCalls(), tmp_path / "missing.tif", QUESTION, tmp_path / "n.tif", progress=False)
    with pytest.raises(MapError, match="local model"):
        map_raster(NoCalls(), path, QUESTION, tmp_path / "n.tif", answer_from="choice", progress=False)
    with pytest.raises(MapError, match=r"\.tif"):
        map_raster(NoCalls(), path, QUESTION, tmp_path / "n.png", progress=False)
    with pytest.raises(MapError, match="empty"):
        map_raster(NoCalls(), path, "  ", tmp_path / "n.tif", progress=False)
    assert not (tmp_path / "n.tif").exists() and not sidecar_path(tmp_path / "n.tif").exists()


def test_flags_map_is_a_cloud_optimized_geotiff(tmp_path):
    """Large flag maps get internal 256 × 256 tiles and nearest-neighbour overviews down to one tile."""
    from geovl.geo.mapper import write_cog

    data = np.random.default_rng(0).integers(0, 2, (2, 700, 1000)).astype(np.float32)
    data[:, :10, :10] = np.nan
    t = Affine(1920.0, 0.0, 440000.0, 0.0, -1920.0, 4065000.0)
    path = tmp_path / "flags.tif"
    write_cog(path, data, "EPSG:32650", t, ["code", "P(yes)"], {"geovl_question": "q"})
    with rasterio.open(path) as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert ds.block_shapes == [(256, 256), (256, 256)] and ds.overviews(1) == [2, 4]
        assert ds.transform == t and ds.crs.to_epsg() == 32650 and ds.descriptions == ("code", "P(yes)")
        assert ds.tags()["geovl_question"] == "q"
        got = ds.read()
        assert np.array_equal(np.isnan(got), np.isnan(data)) and np.array_equal(
            got[~np.isnan(got)], data[~np.isnan(data)]
        )
        ov = ds.read(1, out_shape=(175, 250))  # from the 4x overview: nearest keeps the codes 0/1
        assert set(np.unique(ov[~np.isnan(ov)])) <= {0.0, 1.0}
