""" "Where" questions in ``geovl ask``: the boxes of the answer in pixel and map coordinates, with areas.

:func:`is_where_question` tells a question that asks to locate (框出 / 标出 / 在哪 / 哪里 / 位置 /
定位 / where / locate / location / bounding box / mark) from one that asks how much.

:func:`locate_answer` reads the model's answer as boxes exactly as ``geovl detect`` and the API do
(:func:`geovl.models.box_format.parse_text` with the engine's family convention and resize, for the
image the model was shown — the (later) raster as rendered by :func:`geovl.geo.tiles.image_for_model`;
a remote model's numbers are read as pixels of that image), scales them from the shown image to the
raster's pixels (a large raster is shown decimated) and places each on the map with the helpers of
:mod:`geovl.geo.detect`: the quadrilateral of its corners through the raster's affine transform (in
the raster's CRS and in WGS 84 longitude/latitude), and its ground area — covered pixel fractions ×
pixel areas (:func:`geovl.geo.detect.box_area_m2`, :func:`geovl.geo.geodesy.pixel_areas`) — in m²,
公顷 and 亩. :func:`boxes_geojson` gives the RFC 7946 FeatureCollection (WGS 84; image pixels with a
note for a raster without a CRS). An answer with no readable box gives ``parsed: False`` and no boxes.
"""

from __future__ import annotations

import re

from .detect import DENSIFY, _open, box_area_m2, ccw_closed, pixel_ring, to_wgs84

SCHEMA = "geovl.ask_boxes/1"
_WHERE = re.compile(
    r"框出|框选|标出|标注出|在哪|哪里|哪儿|哪些位置|位置|定位|分布在"
    r"|\bwhere\b|\blocate\b|\blocations?\b|\bbounding box(es)?\b|\bmark\b|\bbox(es)?\b",
    re.IGNORECASE,
)


def is_where_question(question: str) -> bool:
    """True when the question asks to locate objects (see the module docstring)."""
    return bool(_WHERE.search(question or ""))


def locate_answer(engine, image_path, shown: dict, text: str, pixel_size=None) -> dict:
    """The boxes of ``text`` (the answer about the image shown with info ``shown`` = the render info of
    ``image_path``: its ``width``/``height`` and, for a decimated raster, ``source_size``) on the raster
    ``image_path``: ``{schema, image, crs, georeferenced, parsed, notes, boxes: [{label, score?,
    image_bbox, pixel_bbox, map_ring, lonlat_ring, area_m2, area_ha, area_mu}]}``."""
    import warnings

    from rasterio.errors import NotGeoreferencedWarning

    from ..models.box_format import engine_frame, parse_text
    from .errors import MeasureError
    from .geodesy import pixel_areas
    from .units import convert

    w, h = int(shown["width"]), int(shown["height"])
    frame = engine_frame(engine, w, h)
    boxes = parse_text(frame, text)
    notes = []
    if frame is None:
        notes.append(
            {
                "en": "remote model: its box numbers are read as pixels of the image it was shown",
                "zh": "远程模型：框坐标按所给图像的像素读取",
            }
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        ds = _open(image_path, "raster")
    try:
        W, H = ds.width, ds.height
        sx, sy = W / w, H / h  # shown image → raster pixels (1 unless the raster was shown decimated)
        georef = ds.crs is not None
        t = ds.transform
        if not georef:
            notes.append(
                {
                    "en": "the image has no CRS (not georeferenced): coordinates are image pixels (x right, y down)",
                    "zh": "影像无坐标参考（未地理配准）：坐标为像素坐标（x向右、y向下）",
                }
            )
        areas = None
        try:
            areas = pixel_areas(ds.crs, t, (H, W), pixel_size, name=str(image_path))
            notes += areas.notes
        except MeasureError as e:
            notes.append({"en": f"no areas: {e}", "zh": f"未计算面积：{e}"})
        out = []
        for b in boxes or []:
            x1, y1, x2, y2 = b["bbox"]
            px = [
                min(max(x1 * sx, 0.0), W),
                min(max(y1 * sy, 0.0), H),
                min(max(x2 * sx, 0.0), W),
                min(max(y2 * sy, 0.0), H),
            ]
            if px[2] <= px[0] or px[3] <= px[1]:
                notes.append(
                    {
                        "en": f"box {b['bbox']} lies outside the image: left out",
                        "zh": f"框 {b['bbox']} 在影像之外：已略去",
                    }
                )
                continue
            d = {
                "label": b.get("label") or "",
                "image_bbox": [round(v, 3) for v in b["bbox"]],
                "pixel_bbox": [round(v, 3) for v in px],
            }
            if b.get("score") is not None:
                d["score"] = b["score"]
            if georef:
                d["map_ring"] = ccw_closed(pixel_ring(t, px))
                d["lonlat_ring"] = ccw_closed(to_wgs84(ds.crs, pixel_ring(t, px, DENSIFY)))
            if areas is not None:
                m2 = box_area_m2(areas, px)
                d |= {
                    "area_m2": round(m2, 3),
                    "area_ha": round(convert(m2, "ha"), 6),
                    "area_mu": round(convert(m2, "mu"), 4),
                }
            out.append(d)
        return {
            "schema": SCHEMA,
            "image": str(image_path),
            "georeferenced": georef,
            "crs": ds.crs.to_string() if georef else None,
            "shown_size": [w, h],
            "raster_size": [W, H],
            "parsed": boxes is not None,
            "boxes": out,
            "notes": notes,
        }
    finally:
        ds.close()


def boxes_geojson(info: dict, question: str = "") -> dict:
    """RFC 7946 FeatureCollection of :func:`locate_answer`'s boxes (WGS 84 lon/lat; image pixels
    with a note when the raster has no CRS), one Feature per box with label, score, areas, pixel_bbox."""
    feats = []
    for k, b in enumerate(info["boxes"], 1):
        if info["georeferenced"]:
            ring = b["lonlat_ring"]
        else:
            x1, y1, x2, y2 = b["pixel_bbox"]
            ring = [[x1, y1], [x2, y1], [x2, y2], [x1, y2], [x1, y1]]
        props = {k2: b[k2] for k2 in ("label", "score", "area_m2", "area_ha", "area_mu", "pixel_bbox") if k2 in b}
        feats.append(
            {"type": "Feature", "id": k, "geometry": {"type": "Polygon", "coordinates": [ring]}, "properties": props}
        )
    header = {
        "schema": info["schema"],
        "question": question,
        "image": info["image"],
        "crs": info["crs"],
        "coordinates": "WGS 84 longitude/latitude" if info["georeferenced"] else "image pixels (x right, y down)",
        "notes": info["notes"],
    }
    return {"type": "FeatureCollection", "features": feats, "geovl": header}


def boxes_text(info: dict, lang: str = "zh") -> str:
    """Human-readable lines: one per box with its pixel box, centre (lon/lat) and area."""
    from .units import fmt

    zh = lang == "zh"
    if not info["parsed"]:
        return "[框 boxes] 回答中没有可读取的框" if zh else "[boxes 框] no box could be read from the answer"
    lines = [f"[框 boxes] {len(info['boxes'])} 个" if zh else f"[boxes 框] {len(info['boxes'])}"]
    for k, b in enumerate(info["boxes"], 1):
        s = f"  {k}. {b['label'] or '-'}  pixels {b['pixel_bbox']}"
        if "lonlat_ring" in b:
            ring = b["lonlat_ring"][:-1]
            lon = sum(p[0] for p in ring) / len(ring)
            lat = sum(p[1] for p in ring) / len(ring)
            s += f"  centre {lon:.6f}, {lat:.6f} (lon, lat)"
        if "area_m2" in b:
            s += f"  {fmt(b['area_m2'], 'm2')} m² = {fmt(b['area_ha'], 'ha')} 公顷 ha = {fmt(b['area_mu'], 'mu')} 亩 mu"
        lines.append(s)
    lines += [f"  note: {n['zh' if zh else 'en']}" for n in info["notes"]]
    return "\n".join(lines)
