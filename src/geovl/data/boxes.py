"""The one box convention of geovl datasets, and its validation.

A sample that locates objects (qtype ``grounding``, or any sample carrying boxes) keeps them in
``meta["boxes"]``: a list of ::

    {"bbox": [x1, y1, x2, y2], "label": "building", "image": 0}

- ``bbox`` — pixel coordinates **of the stored image** (the bytes in ``images``), top-left origin,
  x to the right, y down, ``x1 < x2`` and ``y1 < y2``; pixel edges, so a box covering the whole
  W×H image is ``[0, 0, W, H]``. Floats are allowed (sub-pixel truth), NaN/inf are not.
- ``label`` — a non-empty string (the class, or the referring expression's object).
- ``image`` — the index of the image (0-based, order of ``images``) the box lies on; optional when
  the sample has exactly one image.

``meta["grounding"]`` says what the question asks: ``"referring"`` (one referred object: scored by
IoU, Acc@0.5) or ``"all"`` (every object of a kind: matched F1 at IoU 0.5, AP50, count from boxes;
the default). Zero boxes is a valid "all" answer (nothing there).

Model families write boxes differently (0–1000 grid, resized-image pixels, special tokens); the
model registry (:mod:`geovl.models.box_format`) converts to and from this convention — datasets never
hold a family's format. The canonical ``answer`` text of a grounding sample is :func:`answer_text`
(JSON in stored-image pixels), readable by people and by ``geovl score`` without a model.

:func:`validate_boxes` is called by :func:`geovl.data.schema.validate_sample`; its
:class:`~geovl.data.schema.SampleError` reasons: ``bad_boxes`` (not a list of box objects),
``box_not_numeric``, ``box_nan``, ``box_missing_label``, ``box_bad_image``, ``box_inverted``
(x2 < x1 or y2 < y1), ``box_zero_area``, ``box_outside_image``, ``missing_boxes`` (a grounding
sample without ``meta["boxes"]``), ``bad_grounding_mode``.
"""

from __future__ import annotations

import json
import math
from typing import Sequence

MODES = ("referring", "all")


def _error(reason: str, detail: str):
    from .schema import SampleError

    return SampleError(reason, detail)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def validate_boxes(boxes, image_sizes: Sequence[tuple[int, int]]) -> None:
    """Raise ``SampleError`` unless ``boxes`` follow the convention on images of ``image_sizes`` ((w, h) each)."""
    if not isinstance(boxes, list):
        raise _error("bad_boxes", f"meta.boxes must be a list, got {type(boxes).__name__}")
    for k, b in enumerate(boxes):
        where = f"box {k}"
        if not isinstance(b, dict) or "bbox" not in b:
            raise _error("bad_boxes", f"{where}: must be an object with 'bbox', 'label' (and 'image')")
        bb = b["bbox"]
        if not isinstance(bb, (list, tuple)) or len(bb) != 4:
            raise _error("bad_boxes", f"{where}: bbox must be [x1, y1, x2, y2]")
        if not all(_number(v) for v in bb):
            raise _error("box_not_numeric", f"{where}: bbox {bb!r} has a non-number")
        if not all(math.isfinite(v) for v in bb):
            raise _error("box_nan", f"{where}: bbox {bb!r} has NaN or infinity")
        label = b.get("label")
        if not isinstance(label, str) or not label.strip():
            raise _error("box_missing_label", f"{where}: a box needs a non-empty 'label'")
        img = b.get("image", 0 if len(image_sizes) == 1 else None)
        if img is None:
            raise _error("box_bad_image", f"{where}: the sample has {len(image_sizes)} images; say which with 'image'")
        if not isinstance(img, int) or isinstance(img, bool) or not 0 <= img < len(image_sizes):
            raise _error(
                "box_bad_image", f"{where}: image {img!r} does not exist (the sample has {len(image_sizes)} image(s))"
            )
        x1, y1, x2, y2 = bb
        if x2 < x1 or y2 < y1:
            raise _error("box_inverted", f"{where}: bbox {list(bb)} has x2 < x1 or y2 < y1")
        if x2 == x1 or y2 == y1:
            raise _error("box_zero_area", f"{where}: bbox {list(bb)} has zero area")
        w, h = image_sizes[img]
        if x1 < 0 or y1 < 0 or x2 > w or y2 > h:
            raise _error("box_outside_image", f"{where}: bbox {list(bb)} is not inside image {img} of {w}x{h} pixels")


def validate_sample_boxes(sample: dict) -> None:
    """The box checks of one sample (called by ``validate_sample`` after the general checks)."""
    meta = sample.get("meta") or {}
    if "boxes" not in meta:
        if sample.get("qtype") == "grounding":
            raise _error("missing_boxes", "a grounding sample needs meta.boxes (see geovl.data.boxes)")
        return
    mode = meta.get("grounding", "all")
    if mode not in MODES:
        raise _error("bad_grounding_mode", f"meta.grounding must be one of {MODES}, got {mode!r}")
    from .inspect import image_size

    sizes = []
    for k, b in enumerate(sample["images"]):
        try:
            sizes.append(image_size(bytes(b)))
        except Exception as e:  # noqa: BLE001 - any undecodable header
            raise _error("bad_image", f"image {k}: {e}") from None
    validate_boxes(meta["boxes"], sizes)
    if mode == "referring" and len(meta["boxes"]) != 1:
        raise _error("bad_boxes", f"a referring sample has exactly one box, got {len(meta['boxes'])}")


def box_image(boxes: list[dict], n_images: int) -> int:
    """The one image the boxes of a sample lie on (the last image when there are none)."""
    imgs = {b.get("image", 0) for b in boxes}
    if len(imgs) > 1:
        raise _error(
            "boxes_span_images", f"boxes lie on images {sorted(imgs)}; one answer locates objects in one image"
        )
    return imgs.pop() if imgs else max(0, n_images - 1)


def _num(v: float):
    r = round(float(v), 1)
    return int(r) if r == int(r) else r


def answer_text(boxes: list[dict]) -> str:
    """The canonical answer of a grounding sample: JSON in stored-image pixels (one decimal at most)."""
    return json.dumps(
        [{"bbox_2d": [_num(v) for v in b["bbox"]], "label": b["label"]} for b in boxes], ensure_ascii=False
    )


def box_dict(bbox, label: str, image: int = 0) -> dict:
    """One box in the dataset convention."""
    return {"bbox": [float(v) for v in bbox], "label": str(label), "image": int(image)}
