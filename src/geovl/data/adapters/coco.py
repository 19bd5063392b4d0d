"""COCO detection JSON -> "locate all X" grounding samples (``geovl data convert --from coco``).

Input: one COCO instances file (``{"images": [...], "annotations": [...], "categories": [...]}``,
bbox ``[x, y, width, height]`` in pixels of the image, top-left origin); image ``file_name`` paths
are relative to ``--images-root`` (default: the JSON's folder). ``--classes a,b`` keeps only those
category names (default: all; an unknown name is a fatal error naming the file's categories).

Output: one sample per (image, class present in it), in image then category order: qtype
``grounding``, ``meta["grounding"] = "all"``, the question "Locate every {class} in the image.",
every box of that class as ``[x, y, x + w, y + h]`` (:mod:`geovl.data.boxes`), the answer
:func:`~geovl.data.boxes.answer_text`. Crowd regions (``iscrowd: 1``) are not objects to locate:
they are left out and counted in ``meta["crowd_skipped"]``.

Records and rejects (each input record is written or rejected once):

- each (image, class) group is one record; a group with a bad box is rejected whole with the
  schema's reason (``box_outside_image``, ``box_zero_area``, ``box_nan``, ...), a rotated box
  (an ``angle``/``theta`` ≠ 0 or a 5-number bbox) with ``rotated_box``, a bbox that is not 4
  numbers with ``bad_boxes``;
- an image whose file does not load is rejected per group (``missing_image``, ...); a file
  whose size differs from the JSON's ``width``/``height`` (e.g. EXIF rotation) with
  ``image_size_mismatch``;
- an annotation naming an unknown image or category is its own rejected record
  (``unknown_image`` / ``unknown_category``).

The JSON is read whole (COCO files are one object); only ``(image, category, bbox)`` per
annotation is kept, and images are decoded one at a time.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterator

from ...imagery.decode import ImageError, load_image, resolve_image_path
from ..boxes import answer_text, validate_boxes
from ..convert import ConvertError, ConvertOptions
from ..schema import SampleError, make_sample

QUESTION = "Locate every {label} in the image."


def parse_classes(spec: str | None) -> list[str] | None:
    if not spec:
        return None
    names = [c.strip() for c in spec.split(",") if c.strip()]
    if not names:
        raise ConvertError(f"--classes {spec!r}: no class names")
    return names


def rotated(ann: dict) -> bool:
    bbox = ann.get("bbox")
    if isinstance(bbox, list) and len(bbox) == 5:
        return True
    for k in ("angle", "theta", "rotation"):
        v = ann.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v != 0:
            return True
    return False


def _xyxy(bbox) -> list:
    x, y, w, h = bbox
    return [x, y, x + w, y + h]


def _load(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8-sig") as f:
            doc = json.load(f)
    except (OSError, UnicodeDecodeError) as e:
        raise ConvertError(f"{path}: cannot read ({e})") from None
    except json.JSONDecodeError as e:
        raise ConvertError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(doc, dict) or not all(
        isinstance(doc.get(k), list) for k in ("images", "annotations", "categories")
    ):
        raise ConvertError(f"{path}: not a COCO detection file (needs 'images', 'annotations' and 'categories' lists)")
    return doc


def iter_records(o: ConvertOptions) -> Iterator[tuple[str, object]]:
    path = o.input
    if not path.is_file():
        raise ConvertError(f"{path}: --from coco expects a COCO instances .json file")
    doc = _load(path)
    root = o.images_root or path.parent
    cats = {c.get("id"): str(c.get("name", "")).strip() for c in doc["categories"] if isinstance(c, dict)}
    wanted = parse_classes(getattr(o, "classes", None))
    if wanted is not None:
        unknown = [c for c in wanted if c not in cats.values()]
        if unknown:
            raise ConvertError(
                f"{path}: --classes {', '.join(unknown)} not among the categories: {', '.join(sorted(set(cats.values())))}"
            )
    images = {im.get("id"): im for im in doc["images"] if isinstance(im, dict)}
    groups: dict = {}
    for k, ann in enumerate(doc["annotations"]):
        source = f"{path.name}#ann{ann.get('id', k) if isinstance(ann, dict) else k}"
        if not isinstance(ann, dict):
            yield source, SampleError("bad_record", "annotation is not an object")
            continue
        if ann.get("image_id") not in images:
            yield (
                source,
                SampleError("unknown_image", f"annotation names image {ann.get('image_id')!r}, not in 'images'"),
            )
            continue
        if ann.get("category_id") not in cats:
            yield (
                source,
                SampleError(
                    "unknown_category", f"annotation names category {ann.get('category_id')!r}, not in 'categories'"
                ),
            )
            continue
        name = cats[ann["category_id"]]
        if wanted is not None and name not in wanted:
            continue
        groups.setdefault(ann["image_id"], {}).setdefault(ann["category_id"], []).append(
            (ann.get("bbox"), bool(ann.get("iscrowd")), rotated(ann))
        )
    del doc
    for image_id, by_cat in groups.items():
        im = images[image_id]
        loaded, err = None, None
        try:
            loaded = load_image(resolve_image_path(root, str(im.get("file_name", ""))), o.pixel_limit)
            if (loaded.width, loaded.height) != (im.get("width"), im.get("height")):
                err = SampleError(
                    "image_size_mismatch",
                    f"{im.get('file_name')}: the file is {loaded.width}x{loaded.height}, "
                    f"the JSON says {im.get('width')}x{im.get('height')}",
                )
        except ImageError as e:
            err = e
        for cat_id in sorted(by_cat, key=lambda c: (str(type(c)), c)):
            name = cats[cat_id]
            source = f"{path.name}#{image_id}/{name}"
            if err is not None:
                yield source, err
                continue
            try:
                yield source, _sample(image_id, name, by_cat[cat_id], loaded, im, source)
            except SampleError as e:
                yield source, e


def _sample(image_id, name: str, anns: list, loaded, im: dict, source: str) -> dict:
    if not name:
        raise SampleError("box_missing_label", "the category has no name")
    boxes, crowd = [], 0
    for bbox, is_crowd, is_rotated in anns:
        if is_rotated:
            raise SampleError("rotated_box", f"a rotated box {bbox!r}: only axis-aligned boxes are supported for now")
        if not isinstance(bbox, list) or len(bbox) != 4:
            raise SampleError("bad_boxes", f"bbox {bbox!r} is not [x, y, width, height]")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox):
            raise SampleError("box_not_numeric", f"bbox {bbox!r} has a non-number")
        if not all(math.isfinite(v) for v in bbox):
            raise SampleError("box_nan", f"bbox {bbox!r} has NaN or infinity")
        if is_crowd:
            crowd += 1
            continue
        boxes.append({"bbox": [float(v) for v in _xyxy(bbox)], "label": name, "image": 0})
    if not boxes:
        raise SampleError("only_crowd", f"every {name!r} annotation of the image is a crowd region")
    validate_boxes(boxes, [(loaded.width, loaded.height)])
    boxes.sort(key=lambda b: (b["bbox"][1], b["bbox"][0]))
    meta = {
        "dataset": "coco",
        "lang": "en",
        "image_id": image_id,
        "file_name": im.get("file_name"),
        "category": name,
        "boxes": boxes,
        "grounding": "all",
    }
    if crowd:
        meta["crowd_skipped"] = crowd
    return make_sample(
        f"{image_id}-{name}",
        QUESTION.format(label=name),
        answer_text(boxes),
        [loaded.data],
        qtype="grounding",
        source=source,
        meta=meta,
    )
