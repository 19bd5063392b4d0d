"""Boxes written in conversation text with normalised coordinates (LLaVA / MMDU / GeoChat style).

``geovl data convert --from llava --boxes 0-1|0-100|0-1000``: the user says which scale the numbers
are on — nothing is guessed. :func:`find_boxes` reads, in this order:

- GeoChat / MiniGPT-v2: ``{<x1><y1><x2><y2>}``, optionally ``{<x1><y1><x2><y2>|<θ>}`` (θ ≠ 0 is a
  rotated box), labelled by the nearest ``<p>phrase</p>`` before it;
- Qwen2-VL tokens ``<|object_ref_start|>label<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>``,
  JSON ``{"bbox_2d": [...], "label": ...}`` and bare ``[x1, y1, x2, y2]`` lists
  (:func:`geovl.models.box_format.parse_syntax`).

:func:`to_pixels` turns them into stored-image pixels of a ``width`` × ``height`` image, raising
``SampleError`` for a rotated box (``rotated_box``), a number outside ``[0, scale]``
(``box_outside_image``) or a box with no label (``box_missing_label``).
"""

from __future__ import annotations

import re

from ..schema import SampleError

SCALES = {"0-1": 1.0, "0-100": 100.0, "0-1000": 1000.0}
_N = r"[-+]?\d+(?:\.\d+)?"
_GEOCHAT = re.compile(rf"\{{\s*<({_N})>\s*<({_N})>\s*<({_N})>\s*<({_N})>\s*(?:\|\s*<({_N})>\s*)?\}}")
_PHRASE = re.compile(r"<p>(.*?)</p>", re.S)


def find_boxes(text: str) -> list[tuple[list[float], str, float]]:
    """``[(coords as written, label, angle)]`` in ``text`` (empty when there is none)."""
    found = []
    for m in _GEOCHAT.finditer(text or ""):
        phrases = _PHRASE.findall(text[: m.start()])
        label = phrases[-1].strip() if phrases else ""
        found.append(([float(v) for v in m.groups()[:4]], label, float(m.group(5) or 0.0)))
    if found:
        return found
    from ...models.box_format import parse_syntax

    return [(coords, label, 0.0) for coords, label, _ in (parse_syntax(text) or [])]


def to_pixels(found, scale: float, width: int, height: int) -> list[dict]:
    boxes = []
    for coords, label, angle in found:
        if angle:
            raise SampleError(
                "rotated_box", f"box {coords} has angle {angle:g}: only axis-aligned boxes are supported for now"
            )
        if any(v < 0 or v > scale for v in coords):
            raise SampleError("box_outside_image", f"box {coords} is outside the declared 0-{scale:g} range")
        if not label.strip():
            raise SampleError("box_missing_label", f'box {coords} has no label (<p>phrase</p>, object_ref or "label")')
        x1, y1, x2, y2 = coords
        boxes.append(
            {
                "bbox": [x1 / scale * width, y1 / scale * height, x2 / scale * width, y2 / scale * height],
                "label": label.strip(),
                "image": 0,
            }
        )
    return boxes
