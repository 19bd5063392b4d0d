"""``geovl detect``: boxes from a model, tile by tile, merged and placed on the map.

1. The raster is cut into overlapping tiles (:class:`~geovl.geo.tiles.TileGrid`) read one window at a
   time and rendered like every model image (:mod:`geovl.geo.tiles`), padded to ``tile × tile``; with
   ``before`` the same window of the earlier raster (same size and grid) comes first, as in training
   ("new buildings" questions: boxes on the second image). All-nodata tiles are skipped.
2. The model's answer is read back to tile pixels through its family's box convention and resize
   (:mod:`geovl.models.box_format`; a remote model's numbers are read as tile pixels), clipped to the
   tile's real pixels (the black padding of the last, partial tile holds nothing) and shifted to
   raster pixels.
3. Merging across tile borders (:func:`merge`): a box is *cut* when it touches an inner tile edge
   (one that is not the raster's edge). Boxes of different tiles that overlap (intersection ≥ half
   of the smaller box) form a group: its uncut boxes are kept, near-duplicates (IoU ≥ 0.5) once —
   an object seen whole in two overlapping tiles is one feature; when every box of a group is cut
   (an object larger than the overlap, split by the seam), their union is the object.
4. Each box becomes the quadrilateral of its four pixel corners through the raster's affine transform
   — rotated and skewed transforms give the true rotated quadrilaterals, never an axis-aligned guess.
   Areas (:func:`box_area_m2`) are the covered fractions of pixels times the pixel areas of
   :func:`geovl.geo.geodesy.pixel_areas` (planar for projected CRSs, ellipsoidal where the projection
   distorts, per row for EPSG:4326), in m², 公顷 and 亩 (:mod:`geovl.geo.units`).

Outputs in ``out_dir``:

- ``detections.geojson`` — RFC 7946: WGS 84 longitude/latitude (edges densified before
  reprojection), counter-clockwise rings, one Feature per box with ``label``, ``score`` (when the
  model wrote one), ``area_m2``, ``area_ha``, ``area_mu``, ``pixel_bbox`` and ``tiles``; the
  foreign member ``geovl`` records the question, raster, CRS and notes. A raster without a CRS gives
  **pixel coordinates** (x right, y down) with a note saying so, and no areas unless ``pixel_size``.
- ``detections.parquet`` — GeoParquet 1.1 (WKB polygons) in the raster's own CRS (PROJJSON), the same
  properties; ``crs: null`` (unknown) for a raster without one.
- ``detections.json`` — the run summary (tiles, boxes before/after merging, unparsed answers).
"""

from __future__ import annotations

import json
import math
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..fileio import atomic_path, write_json
from ..inference.capabilities import input_spec
from .errors import MeasureError

SCHEMA = "geovl.detect/1"
DENSIFY = 8  # points per box edge when reprojecting to WGS 84
CUT_TOL = 1.0  # a box within this many pixels of an inner tile edge is cut there


class DetectError(MeasureError):
    """Bad input for ``geovl detect``; the message names the file."""


@dataclass
class Detection:
    bbox: list[float]  # raster pixels x1, y1, x2, y2
    label: str
    tile: tuple[int, int]
    cut: bool = False
    score: float | None = None
    tiles: int = 1


# ------------------------------------------------------------------------------------------------- boxes
def tile_to_raster(boxes: list[dict], window: tuple[int, int, int, int]) -> list[dict]:
    """Boxes in tile pixels → raster pixels, clipped to the tile's real pixels (empty ones dropped)."""
    x0, y0, w, h = window
    out = []
    for b in boxes:
        x1, y1, x2, y2 = b["bbox"]
        x1, x2 = sorted((x1, x2))
        y1, y2 = sorted((y1, y2))
        x1, x2 = min(max(x1, 0.0), w), min(max(x2, 0.0), w)
        y1, y2 = min(max(y1, 0.0), h), min(max(y2, 0.0), h)
        if x2 - x1 <= 0 or y2 - y1 <= 0:
            continue
        out.append(dict(b, bbox=[x0 + x1, y0 + y1, x0 + x2, y0 + y2]))
    return out


def is_cut(bbox, window, width: int, height: int, tol: float = CUT_TOL) -> bool:
    """Whether ``bbox`` touches an inner edge of its tile ``window`` (not the raster's edge)."""
    x0, y0, w, h = window
    return (
        (x0 > 0 and bbox[0] <= x0 + tol)
        or (y0 > 0 and bbox[1] <= y0 + tol)
        or (x0 + w < width and bbox[2] >= x0 + w - tol)
        or (y0 + h < height and bbox[3] >= y0 + h - tol)
    )


def _inter(a, b) -> float:
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))


def _area(a) -> float:
    return max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1])


def merge(dets: list[Detection], iou_dup: float = 0.5, overlap_min: float = 0.5) -> list[Detection]:
    """One detection per object across tile borders (see the module docstring)."""
    from ..evaluate.grounding import iou

    n = len(dets)
    parent = list(range(n))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(n):
        for j in range(i + 1, n):
            a, b = dets[i], dets[j]
            if a.tile == b.tile:
                continue
            small = min(_area(a.bbox), _area(b.bbox))
            if small > 0 and _inter(a.bbox, b.bbox) >= overlap_min * small:
                parent[find(i)] = find(j)
    groups: dict[int, list[Detection]] = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(dets[i])
    out = []
    for members in groups.values():
        whole = [d for d in members if not d.cut]
        if whole:
            whole.sort(key=lambda d: (-(d.score if d.score is not None else 1.0), -_area(d.bbox)))
            kept: list[Detection] = []
            for d in whole:
                dup = next((k for k in kept if k.tile != d.tile and iou(k.bbox, d.bbox) >= iou_dup), None)
                if dup is not None:
                    dup.tiles += 1
                else:
                    kept.append(Detection(list(d.bbox), d.label, d.tile, False, d.score, 1))
            out += kept
        else:
            bb = [
                min(d.bbox[0] for d in members),
                min(d.bbox[1] for d in members),
                max(d.bbox[2] for d in members),
                max(d.bbox[3] for d in members),
            ]
            scores = [d.score for d in members if d.score is not None]
            out.append(
                Detection(bb, members[0].label, members[0].tile, True, max(scores) if scores else None, len(members))
            )
    out.sort(key=lambda d: (d.bbox[1], d.bbox[0]))
    return out


# ------------------------------------------------------------------------------------------- geometry
def pixel_ring(transform, bbox, densify: int = 1) -> list[tuple[float, float]]:
    """The box's outline in map coordinates of ``transform`` (top-left, top-right, bottom-right,
    bottom-left; ``densify`` points per edge), not closed."""
    x1, y1, x2, y2 = bbox
    corners = [(x1, y1), (x2, y1), (x2, y2), (x1, y2)]
    pts = []
    for (ax, ay), (bx, by) in zip(corners, corners[1:] + corners[:1]):
        for k in range(densify):
            t = k / densify
            pts.append((ax + t * (bx - ax), ay + t * (by - ay)))
    return [tuple(map(float, transform @ p)) for p in pts]


def _signed_area(ring) -> float:
    return 0.5 * sum(a[0] * b[1] - b[0] * a[1] for a, b in zip(ring, ring[1:] + ring[:1]))


def ccw_closed(ring) -> list[list[float]]:
    """Counter-clockwise (RFC 7946 exterior), closed ring."""
    ring = list(ring)
    if _signed_area(ring) < 0:
        ring = [ring[0]] + ring[:0:-1]
    return [[float(x), float(y)] for x, y in ring] + [[float(ring[0][0]), float(ring[0][1])]]


def to_wgs84(crs, ring) -> list[tuple[float, float]]:
    from rasterio.warp import transform as warp

    xs, ys = warp(crs, "EPSG:4326", [p[0] for p in ring], [p[1] for p in ring])
    return list(zip(xs, ys))


def _coverage(lo: float, hi: float, n: int) -> tuple[int, np.ndarray]:
    """(first index, covered fraction of each pixel lo..hi along one axis)."""
    i0, i1 = max(0, int(math.floor(lo))), min(n, int(math.ceil(hi)))
    idx = np.arange(i0, i1, dtype=np.float64)
    return i0, np.clip(np.minimum(idx + 1, hi) - np.maximum(idx, lo), 0.0, 1.0)


def box_area_m2(areas, bbox) -> float:
    """Ground area of a pixel box: covered pixel fractions × each pixel's area (:class:`PixelAreas`)."""
    H, W = areas.shape
    c0, fx = _coverage(bbox[0], bbox[2], W)
    r0, fy = _coverage(bbox[1], bbox[3], H)
    if areas.constant is not None:
        return float(fx.sum() * fy.sum() * float(areas.constant))
    w = np.broadcast_to(areas.weights, areas.shape)[r0 : r0 + len(fy), c0 : c0 + len(fx)]
    return float(fy @ w @ fx)


# ------------------------------------------------------------------------------------------- writing
def _wkb_polygon(ring) -> bytes:
    pts = b"".join(struct.pack("<dd", float(x), float(y)) for x, y in ring)
    return struct.pack("<BIII", 1, 3, 1, len(ring)) + pts


def read_wkb_polygon(b: bytes) -> list[tuple[float, float]]:
    """The exterior ring of a little-endian WKB polygon (for tests and readers without GDAL)."""
    order, kind, nrings, npts = struct.unpack_from("<BIII", b, 0)
    if order != 1 or kind != 3 or nrings < 1:
        raise ValueError("not a little-endian WKB polygon")
    return [struct.unpack_from("<dd", b, 13 + 16 * i) for i in range(npts)]


DETECT_COLUMNS = ("id", "label", "score", "area_m2", "area_ha", "area_mu", "tiles", "pixel_bbox")


def write_geoparquet(path: Path, rings: list, props: list[dict], crs, columns=DETECT_COLUMNS) -> None:
    """GeoParquet 1.1: WKB ``geometry`` column, the CRS as PROJJSON (``null`` when unknown), then
    one column per name in ``columns`` taken from ``props`` (``pixel_bbox``: a list of floats)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols: dict = {"geometry": pa.array([_wkb_polygon(r) for r in rings], pa.binary())}
    for k in columns:
        if k == "pixel_bbox":
            cols[k] = pa.array([p["pixel_bbox"] for p in props], pa.list_(pa.float64()))
        else:
            cols[k] = [p.get(k) for p in props]
    table = pa.table(cols)
    if rings:
        xs = [x for r in rings for x, _ in r]
        ys = [y for r in rings for _, y in r]
        bbox = [min(xs), min(ys), max(xs), max(ys)]
    else:
        bbox = None
    col = {
        "encoding": "WKB",
        "geometry_types": ["Polygon"],
        "crs": crs.to_dict(projjson=True) if crs is not None else None,
    }
    if bbox:
        col["bbox"] = bbox
    geo = {"version": "1.1.0", "primary_column": "geometry", "columns": {"geometry": col}}
    table = table.replace_schema_metadata({b"geo": json.dumps(geo).encode()})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def _write_json(path: Path, obj) -> None:
    write_json(path, obj, indent=1)


# ------------------------------------------------------------------------------------------- the run
def _open(path, what: str):
    import os

    import rasterio
    from rasterio.errors import RasterioIOError

    if not os.path.isfile(path):
        raise DetectError(f"{path}: file not found")
    try:
        return rasterio.open(path)
    except (RasterioIOError, OSError) as e:
        raise DetectError(f"{path}: not a readable {what} ({e})") from None


def detect_raster(
    engine,
    image,
    question: str,
    out_dir,
    before=None,
    tile: int = 448,
    overlap: int = 64,
    batch_size: int = 4,
    params=None,
    bands=None,
    pixel_size=None,
    progress: bool = True,
) -> dict:
    """Run ``question`` over every tile of ``image`` and write the detections (module docstring)."""
    import warnings

    from rasterio.errors import NotGeoreferencedWarning
    from tqdm import tqdm

    from ..data.schema import user_turn
    from ..inference.engine import ChatRequest, GenerationParams
    from ..models.box_format import engine_frame, parse_text
    from .geodesy import pixel_areas
    from .tiles import TileGrid, png_bytes, read_rgb, render_spec
    from .units import convert

    question = (question or "").strip()
    if not question:
        raise DetectError("the question is empty")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    params = params or GenerationParams(max_new_tokens=512)
    notes: list[dict] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        ds = _open(image, "raster")
        bds = _open(before, "raster") if before else None
    try:
        if bds is not None and (bds.width, bds.height) != (ds.width, ds.height):
            raise DetectError(
                f"{before}: {bds.width}x{bds.height} pixels, but {image} is {ds.width}x{ds.height}: "
                "the two dates must share one pixel grid"
            )
        if (
            bds is not None
            and ds.crs is not None
            and (bds.crs != ds.crs or not np.allclose(tuple(bds.transform)[:6], tuple(ds.transform)[:6]))
        ):
            raise DetectError(f"{before}: not on the same grid (CRS/transform) as {image}; resample it first")
        georef = ds.crs is not None
        t = ds.transform
        if not georef:
            notes.append(
                {
                    "en": "the image has no CRS (not georeferenced): coordinates are image pixels (x right, y down), "
                    "not longitude/latitude",
                    "zh": "影像无坐标参考（未地理配准）：坐标为像素坐标（x向右、y向下），不是经纬度",
                }
            )
        elif abs(t.b) > 1e-12 or abs(t.d) > 1e-12:
            notes.append(
                {
                    "en": "the raster's transform is rotated/skewed: each box is the rotated quadrilateral on the map",
                    "zh": "影像仿射变换含旋转/错切：每个框在地图上为相应的旋转四边形",
                }
            )
        areas = None
        try:
            areas = pixel_areas(ds.crs, t, (ds.height, ds.width), pixel_size, name=str(image))
            notes += areas.notes
        except MeasureError as e:
            notes.append({"en": f"no areas: {e}", "zh": f"未计算面积：{e}"})
        grid = TileGrid(ds.width, ds.height, tile, overlap)
        spec = render_spec(ds.count, ds.descriptions, input_spec(engine).preprocess, bands)
        bspec = (
            render_spec(bds.count, bds.descriptions, input_spec(engine).preprocess, bands) if bds is not None else None
        )
        frame = engine_frame(engine, tile, tile)
        if frame is None:
            notes.append(
                {
                    "en": "remote model: its box numbers are read as pixels of the tile image",
                    "zh": "远程模型：框坐标按分块图像像素读取",
                }
            )
        n_img = 2 if bds is not None else 1
        dets: list[Detection] = []
        counts = {"tiles": grid.count, "nodata": 0, "asked": 0, "unparsed": 0, "boxes_raw": 0}
        unparsed_examples: list[dict] = []
        batch: list = []

        def flush():
            if not batch:
                return
            reqs = [ChatRequest([user_turn(question, n_img)], imgs) for _, _, imgs in batch]
            answers = engine.generate(reqs, params)
            for (rc, win, _), text in zip(batch, answers):
                counts["asked"] += 1
                boxes = parse_text(frame, text)
                if boxes is None:
                    counts["unparsed"] += 1
                    if len(unparsed_examples) < 5:
                        unparsed_examples.append({"tile": list(rc), "answer": str(text)[:200]})
                    continue
                for b in tile_to_raster(boxes, win):
                    counts["boxes_raw"] += 1
                    dets.append(
                        Detection(
                            b["bbox"],
                            b.get("label") or "",
                            rc,
                            is_cut(b["bbox"], win, ds.width, ds.height),
                            b.get("score"),
                        )
                    )
            batch.clear()

        with tqdm(total=grid.count, desc="detect tiles", unit="tile", file=sys.stderr, disable=not progress) as bar:
            for r, c in grid:
                win = grid.window(r, c).flatten()  # (col_off, row_off, width, height)
                rgb, valid = read_rgb(ds, spec, win)
                if not valid.any():
                    counts["nodata"] += 1
                    bar.update(1)
                    continue
                imgs = [png_bytes(rgb, pad_to=tile)]
                if bds is not None:
                    brgb, _ = read_rgb(bds, bspec, win)
                    imgs.insert(0, png_bytes(brgb, pad_to=tile))
                batch.append(((r, c), win, imgs))
                if len(batch) >= batch_size:
                    flush()
                bar.update(1)
            flush()
        merged = merge(dets)
        features, rings_native, props = [], [], []
        for k, d in enumerate(merged, 1):
            p = {"id": k, "label": d.label, "pixel_bbox": [round(v, 3) for v in d.bbox], "tiles": d.tiles}
            if d.score is not None:
                p["score"] = d.score
            if areas is not None:
                m2 = box_area_m2(areas, d.bbox)
                p |= {
                    "area_m2": round(m2, 3),
                    "area_ha": round(convert(m2, "ha"), 6),
                    "area_mu": round(convert(m2, "mu"), 4),
                }
            native = pixel_ring(t, d.bbox)
            rings_native.append(ccw_closed(native) if georef else [list(map(float, q)) for q in native + native[:1]])
            if georef:
                geom = ccw_closed(to_wgs84(ds.crs, pixel_ring(t, d.bbox, DENSIFY)))
            else:  # pixel coordinates, y down: listed as corners (clockwise on screen)
                geom = rings_native[-1]
            features.append(
                {"type": "Feature", "id": k, "geometry": {"type": "Polygon", "coordinates": [geom]}, "properties": p}
            )
            props.append(p)
        header = {
            "schema": SCHEMA,
            "question": question,
            "image": str(image),
            "before": str(before) if before else None,
            "georeferenced": georef,
            "crs": ds.crs.to_string() if georef else None,
            "coordinates": "WGS 84 longitude/latitude" if georef else "image pixels (x right, y down)",
            "transform": [t.a, t.b, t.c, t.d, t.e, t.f],
            "grid": grid.to_json(),
            "areas": areas.to_json() if areas is not None else None,
            "notes": notes,
            "engine": getattr(engine, "name", type(engine).__name__),
        }
        geojson = {"type": "FeatureCollection", "features": features, "geovl": header}
        _write_json(out_dir / "detections.geojson", geojson)
        write_geoparquet(out_dir / "detections.parquet", rings_native, props, ds.crs if georef else None)
        summary = header | {
            "counts": counts | {"detections": len(merged)},
            "unparsed_examples": unparsed_examples,
            "outputs": {
                "geojson": str(out_dir / "detections.geojson"),
                "geoparquet": str(out_dir / "detections.parquet"),
            },
        }
        _write_json(out_dir / "detections.json", summary)
        return summary
    finally:
        ds.close()
        if bds is not None:
            bds.close()
