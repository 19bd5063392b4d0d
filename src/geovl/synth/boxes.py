"""The box tasks of ``geovl data synth`` (qtype ``grounding``): exact boxes from the scene's truth.

Not part of the default ``--tasks all``; select them with ``--tasks boxes`` (all three) or by name:

- ``box_buildings`` (one image, "before" or "after"; ``meta["grounding"] = "all"``): "框出所有建筑" /
  "Locate every building" — every building's rectangle as drawn in the layout (exact: the
  building is that rectangle of the class map); no building → the answer ``[]``.
- ``box_new_buildings`` (two images, before then after): "框出第二张图中所有新增建筑" /
  "Locate every new building in the second image" — the boxes of the buildings added between
  the dates, on image 1 (the second image).
- ``box_water`` (one image; ``"referring"``): "框出最大的水体" / "Locate the largest water body" —
  the bounding box of the largest 4-connected water component of the class map; asked only when
  that component is clearly the largest (≥ 1.5 × the next one) and covers ≥ 1 % of the image.

Boxes are in pixels of the stored PNG (the scene size), ``[x0, y0, x1, y1]`` with exclusive ends =
pixel edges (:mod:`geovl.data.boxes`); the answer is :func:`geovl.data.boxes.answer_text`.
``meta["gt"]`` repeats the count of boxes (compare a count read from boxes with a direct count).
"""

from __future__ import annotations

import numpy as np

from ..data.boxes import answer_text, box_dict
from .classes import WATER

WATER_MIN_SHARE = 0.01
WATER_DOMINANCE = 1.5

QUESTIONS = {
    "box_buildings": {
        "zh": ["框出所有建筑", "框出图中所有建筑的位置。"],
        "en": ["Locate every building", "Draw a box around every building in the image."],
    },
    "box_new_buildings": {
        "zh": ["框出第二张图中所有新增建筑", "第二张图相比第一张图新增了哪些建筑？请框出。"],
        "en": [
            "Locate every new building in the second image compared with the first.",
            "Draw a box around each building that is new in the second image.",
        ],
    },
    "box_water": {
        "zh": ["框出最大的水体", "最大的水体在哪里？请框出。"],
        "en": ["Locate the largest water body.", "Where is the largest water body? Draw a box around it."],
    },
}
LABELS = {
    "box_buildings": {"zh": "建筑", "en": "building"},
    "box_new_buildings": {"zh": "新增建筑", "en": "new building"},
    "box_water": {"zh": "最大的水体", "en": "the largest water body"},
}


def water_bodies(classes: np.ndarray) -> list[dict]:
    """4-connected water components, largest first: ``{"box": [x0, y0, x1, y1], "pixels": n}``."""
    from scipy import ndimage

    lab, n = ndimage.label(classes == WATER)
    if n == 0:
        return []
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    out = []
    for k, sl in enumerate(ndimage.find_objects(lab), start=1):
        ys, xs = sl
        out.append({"box": [int(xs.start), int(ys.start), int(xs.stop), int(ys.stop)], "pixels": int(sizes[k])})
    return sorted(out, key=lambda b: (-b["pixels"], b["box"]))


def largest_water(truth_date: dict, n_pixels: int) -> dict | None:
    """The clearly largest water body of one date's truth, or None (see the module docstring)."""
    bodies = truth_date.get("water_bodies") or []
    if not bodies or bodies[0]["pixels"] < WATER_MIN_SHARE * n_pixels:
        return None
    if len(bodies) > 1 and bodies[0]["pixels"] < WATER_DOMINANCE * bodies[1]["pixels"]:
        return None
    return bodies[0]


def candidates(truth: dict) -> dict[str, list[tuple]]:
    n_px = sum(truth["before"]["class_pixels"].values())
    return {
        "box_buildings": [(d,) for d in ("before", "after")],
        "box_new_buildings": [()],
        "box_water": [(d,) for d in ("before", "after") if largest_water(truth[d], n_px) is not None],
    }


def ask_boxes(rng: np.random.Generator, task: str, spec: tuple, truth: dict, lang: str):
    """One box question (see the module docstring) as a :class:`~.qa.Question` with its boxes."""
    from . import qa

    text = qa._pick(rng, QUESTIONS[task][lang])
    label = LABELS[task][lang]
    if task == "box_buildings":
        (date,) = spec
        dates, image, mode = (date,), 0, "all"
        raw = truth[date]["buildings"]["boxes"]
    elif task == "box_new_buildings":
        dates, image, mode = ("before", "after"), 1, "all"
        raw = truth["change"]["new_building_boxes"]
    elif task == "box_water":
        (date,) = spec
        dates, image, mode = (date,), 0, "referring"
        body = largest_water(truth[date], sum(truth[date]["class_pixels"].values()))
        if body is None:
            raise ValueError(f"{task}: no clearly largest water body on {date}")
        raw = [body["box"]]
    else:
        raise ValueError(f"unknown box task {task!r}")
    boxes = [box_dict(b, label, image) for b in sorted(raw, key=lambda b: (b[1], b[0]))]  # reading order
    gt = {"n_boxes": len(boxes), "label": label}
    q = qa.Question(task, dates, text, answer_text(boxes), gt)
    q.boxes, q.grounding = boxes, mode
    return q
