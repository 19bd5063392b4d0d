"""DIOR-RSVG (Pascal-VOC-style XML, a referring expression per object) -> referring grounding samples.

Input (``geovl data convert --from dior-rsvg --input DIR``): ``DIR/Annotations/*.xml`` (or XML files
directly in ``DIR``) and the images in ``DIR/JPEGImages/`` (or ``--images-root``). One XML per image::

    <annotation>
      <filename>00001.jpg</filename>
      <size><width>800</width><height>800</height></size>
      <object>
        <name>vehicle</name>
        <bndbox><xmin>10</xmin><ymin>20</ymin><xmax>60</xmax><ymax>70</ymax></bndbox>
        <description>The vehicle on the lower left of the road</description>
      </object> ...
    </annotation>

The bndbox numbers are used as the box's pixel edges ``[xmin, ymin, xmax, ymax]``, as the DIOR-RSVG
reference loader does. Each ``<object>`` is one record → one sample: qtype ``grounding``,
``meta["grounding"] = "referring"``, the question "Locate {description}." (English), the box with
the class ``name`` as its label, ``meta["expression"]`` the description.

Rejects (reasons): ``no_expression`` (an object without a description), ``rotated_box`` (a
``<robndbox>`` or an ``<angle>`` ≠ 0: only axis-aligned boxes for now), ``bad_boxes`` (no or a
non-numeric bndbox), the schema's box reasons (``box_outside_image``, ``box_zero_area``, ...),
``image_size_mismatch`` (the image file is not the XML's ``<size>``), ``bad_xml`` (an
unparseable file: one record), the image reasons (``missing_image``, ...).
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Iterator

from ...imagery.decode import ImageError, load_image, resolve_image_path
from ..boxes import answer_text, validate_boxes
from ..convert import ConvertError, ConvertOptions
from ..schema import SampleError, make_sample

QUESTION = "Locate {expression}."


def _xml_files(root: Path) -> list[Path]:
    ann = root / "Annotations"
    files = sorted((ann if ann.is_dir() else root).glob("*.xml"))
    if not files:
        raise ConvertError(f"{root}: no DIOR-RSVG annotation files (*.xml in {root}/Annotations or {root})")
    return files


def _text(el, tag: str) -> str | None:
    t = el.find(tag)
    return t.text.strip() if t is not None and t.text is not None and t.text.strip() else None


def _number(el, tag: str) -> float:
    t = _text(el, tag)
    try:
        v = float(t) if t is not None else math.nan
    except ValueError:
        raise SampleError("bad_boxes", f"<{tag}> {t!r} is not a number") from None
    if t is None:
        raise SampleError("bad_boxes", f"no <{tag}>")
    return v


def iter_records(o: ConvertOptions) -> Iterator[tuple[str, object]]:
    root = o.input
    if not root.is_dir():
        raise ConvertError(f"{root}: --from dior-rsvg expects the dataset folder (with Annotations/ and JPEGImages/)")
    images_root = o.images_root or (root / "JPEGImages" if (root / "JPEGImages").is_dir() else root)
    for xml in _xml_files(root):
        try:
            tree = ET.parse(xml)
        except (ET.ParseError, OSError) as e:
            yield xml.name, SampleError("bad_xml", f"{xml.name}: {e}")
            continue
        ann = tree.getroot()
        objects = ann.findall("object")
        if not objects:
            continue
        fname = _text(ann, "filename") or ""
        loaded, err = None, None
        try:
            loaded = load_image(resolve_image_path(images_root, fname), o.pixel_limit)
            size = ann.find("size")
            declared = (
                (int(float(_text(size, "width") or -1)), int(float(_text(size, "height") or -1)))
                if size is not None
                else None
            )
            if declared is not None and declared != (loaded.width, loaded.height):
                err = SampleError(
                    "image_size_mismatch",
                    f"{fname}: the file is {loaded.width}x{loaded.height}, the XML says {declared[0]}x{declared[1]}",
                )
        except ImageError as e:
            err = e
        except ValueError:
            err = SampleError("bad_xml", f"{xml.name}: <size> is not numeric")
        for k, obj in enumerate(objects):
            source = f"{xml.name}#{k}"
            if err is not None:
                yield source, err
                continue
            try:
                yield source, _sample(xml, k, obj, fname, loaded, source)
            except SampleError as e:
                yield source, e


def _sample(xml: Path, k: int, obj, fname: str, loaded, source: str) -> dict:
    if obj.find("robndbox") is not None or (
        obj.find("bndbox") is not None and _text(obj.find("bndbox"), "angle") not in (None, "0", "0.0")
    ):
        raise SampleError("rotated_box", "a rotated box: only axis-aligned boxes are supported for now")
    name = _text(obj, "name")
    if not name:
        raise SampleError("box_missing_label", "an object without <name>")
    expr = _text(obj, "description")
    if not expr:
        raise SampleError("no_expression", f"object {k} ({name}) has no <description> referring expression")
    bb = obj.find("bndbox")
    if bb is None:
        raise SampleError("bad_boxes", "no <bndbox>")
    box = [_number(bb, t) for t in ("xmin", "ymin", "xmax", "ymax")]
    boxes = [{"bbox": box, "label": name, "image": 0}]
    validate_boxes(boxes, [(loaded.width, loaded.height)])
    meta = {
        "dataset": "dior-rsvg",
        "lang": "en",
        "file_name": fname,
        "expression": expr,
        "category": name,
        "boxes": boxes,
        "grounding": "referring",
    }
    return make_sample(
        f"{xml.stem}-{k}",
        QUESTION.format(expression=expr.rstrip(".")),
        answer_text(boxes),
        [loaded.data],
        qtype="grounding",
        source=source,
        meta=meta,
    )
