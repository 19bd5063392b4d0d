"""Boxes in a served answer: the API's ``geovl.boxes`` extension field and the web app's box panel.

:func:`answer_boxes` reads the boxes of a model's answer (any syntax :mod:`geovl.models.box_format`
reads) back to pixels of the **last image of the request** (the one a "where" question is about; for
two dates, the later one), through the local model's family convention and resize; a remote model's
numbers are read as pixels. Returned only when the answer holds at least one box::

    {"image": 1, "width": 224, "height": 224, "coordinates": "pixels (x right, y down, origin top-left)",
     "boxes": [{"bbox": [x1, y1, x2, y2], "label": "building"}, ...]}

:func:`boxes_geojson` gives the same boxes as a GeoJSON FeatureCollection in those pixel coordinates
(an uploaded picture carries no georeference; ``geovl detect`` places boxes on the map).
"""

from __future__ import annotations

PIXELS = "pixels (x right, y down, origin top-left)"


def _size(data: bytes) -> tuple[int, int] | None:
    from ..data.inspect import image_size

    try:
        return image_size(bytes(data))
    except Exception:  # noqa: BLE001 - e.g. a TIFF PIL cannot read: no boxes rather than an error
        return None


def answer_boxes(engine, images, text: str) -> dict | None:
    if not images or not isinstance(text, str) or not text.strip():
        return None
    from ..models.box_format import engine_frame, parse_text

    size = _size(images[-1])
    if size is None:
        return None
    w, h = size
    boxes = parse_text(engine_frame(engine, w, h), text)
    if not boxes:
        return None
    return {
        "image": len(images) - 1,
        "width": w,
        "height": h,
        "coordinates": PIXELS,
        "boxes": [{k: v for k, v in b.items() if k in ("bbox", "label", "score")} for b in boxes],
    }


def boxes_geojson(info: dict) -> dict:
    feats = []
    for k, b in enumerate(info["boxes"], 1):
        x1, y1, x2, y2 = b["bbox"]
        ring = [[x1, y1], [x2, y1], [x2, y2], [x1, y2], [x1, y1]]
        props = {"label": b.get("label", ""), "pixel_bbox": b["bbox"]} | ({"score": b["score"]} if "score" in b else {})
        feats.append(
            {"type": "Feature", "id": k, "geometry": {"type": "Polygon", "coordinates": [ring]}, "properties": props}
        )
    return {
        "type": "FeatureCollection",
        "features": feats,
        "geovl": {
            "coordinates": info["coordinates"],
            "image_size": [info["width"], info["height"]],
            "note": "image pixel coordinates, not longitude/latitude: use geovl detect on a GeoTIFF for map coordinates",
        },
    }
