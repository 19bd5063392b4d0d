"""Boxes in each Qwen-VL family's own convention, and back to stored-image pixels.

Datasets keep one convention (:mod:`geovl.data.boxes`: pixels of the stored image). What a model
reads and writes depends on its family (``Family.box_style`` in :mod:`geovl.models.registry`):

=============  ==================================================================================
style          what the model writes (checked against the Qwen model cards / cookbooks)
=============  ==================================================================================
``qwen2``      Qwen2-VL: ``<|object_ref_start|>label<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>``,
               coordinates on a 0–1000 grid of the image (relative, so the resize does not move them)
``abs_json``   Qwen2.5-VL: JSON ``[{"bbox_2d": [x1, y1, x2, y2], "label": "..."}]`` in absolute pixels
               **of the resized image** (the size ``smart_resize`` gives under the run's min/max pixels)
``rel_json``   Qwen3-VL: the same JSON, coordinates on a 0–1000 grid (relative, like Qwen2-VL)
=============  ==================================================================================

A :class:`BoxFrame` holds the stored and the resized size of one image and converts coordinates
both ways; the resized size comes from ``Family.resized_size`` — the same rule as the processor.
Round trip (stored → model text → parsed): within 0.5 resized pixel for ``abs_json``; within half a
grid step (0.5/1000 of the side, ≤ 1 resized pixel while the resized side is ≤ 2000 px) on a grid.

Parsing (:func:`parse_text`) reads any of the three syntaxes — JSON objects with ``bbox_2d`` (or
``bbox``), optionally in a ```json fence; Qwen2-VL box tokens, also with the special tokens removed
by decoding (``building(12,34),(56,78)``); bare ``[x1, y1, x2, y2]`` lists — and then scales with the
family's coordinates. It returns ``None`` for text with no box in it (unparseable), ``[]`` for an
explicit "nothing" (``[]``, 无, 没有, none). It never raises on junk.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

GRID = 1000
STYLES = ("qwen2", "abs_json", "rel_json")
MAX_CHARS = 20000  # parse at most this much text (bounded cost on junk completions)
MAX_BOXES = 1000

_NUM = r"[-+]?\d+(?:\.\d+)?"
_QWEN2 = re.compile(
    rf"(?:<\|object_ref_start\|>(?P<label>.*?)<\|object_ref_end\|>)?\s*(?:<\|box_start\|>)?\s*"
    rf"\(\s*(?P<x1>{_NUM})\s*,\s*(?P<y1>{_NUM})\s*\)\s*,\s*\(\s*(?P<x2>{_NUM})\s*,\s*(?P<y2>{_NUM})\s*\)\s*(?:<\|box_end\|>)?",
    re.S,
)
_OBJECT = re.compile(r"\{[^{}]{0,2000}\}", re.S)
_LIST4 = re.compile(rf"\[\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*\]")
_FENCE = re.compile(r"```(?:json)?|<\|im_end\|>|<\|endoftext\|>|</?answer>", re.I)
_NOTHING = {"[]", "无", "没有", "没有目标", "不存在", "none", "nothing", "no", "no objects", "no object", "n/a"}


@dataclass(frozen=True)
class BoxFrame:
    """One image as the model sees it: stored size, resized size and the family's box style."""

    style: str
    stored_w: int
    stored_h: int
    resized_w: int
    resized_h: int

    def __post_init__(self):
        if self.style not in STYLES:
            raise ValueError(f"unknown box style {self.style!r}; one of {STYLES}")

    @property
    def grid(self) -> bool:
        return self.style in ("qwen2", "rel_json")

    def to_model(self, bbox) -> list[int]:
        """Stored-image pixels → the integers the model writes."""
        x1, y1, x2, y2 = (float(v) for v in bbox)
        if self.grid:
            sx, sy, mx, my = GRID / self.stored_w, GRID / self.stored_h, GRID, GRID
        else:
            sx, sy = self.resized_w / self.stored_w, self.resized_h / self.stored_h
            mx, my = self.resized_w, self.resized_h
        return [_clamp_int(x1 * sx, mx), _clamp_int(y1 * sy, my), _clamp_int(x2 * sx, mx), _clamp_int(y2 * sy, my)]

    def from_model(self, coords) -> list[float]:
        """The model's numbers → stored-image pixels (clipped to the image)."""
        x1, y1, x2, y2 = (float(v) for v in coords)
        if self.grid:
            sx, sy = self.stored_w / GRID, self.stored_h / GRID
        else:
            sx, sy = self.stored_w / self.resized_w, self.stored_h / self.resized_h
        return [
            _clip(x1 * sx, self.stored_w),
            _clip(y1 * sy, self.stored_h),
            _clip(x2 * sx, self.stored_w),
            _clip(y2 * sy, self.stored_h),
        ]

    def resized_pixel(self) -> tuple[float, float]:
        """Size of one resized pixel in stored pixels (x, y)."""
        return self.stored_w / self.resized_w, self.stored_h / self.resized_h

    def as_dict(self) -> dict:
        return {
            "style": self.style,
            "stored": [self.stored_w, self.stored_h],
            "resized": [self.resized_w, self.resized_h],
        }

    @classmethod
    def from_dict(cls, d) -> "BoxFrame | None":
        """A frame from :meth:`as_dict` (e.g. ``meta["box_frame"]``), or None if it is not one."""
        try:
            return cls(
                str(d["style"]), int(d["stored"][0]), int(d["stored"][1]), int(d["resized"][0]), int(d["resized"][1])
            )
        except (KeyError, TypeError, ValueError, IndexError):
            return None


def _clamp_int(v: float, hi: int) -> int:
    return int(min(hi, max(0, math.floor(v + 0.5))))


def _clip(v: float, hi: float) -> float:
    return float(min(hi, max(0.0, v)))


def render(frame: BoxFrame, boxes: list[dict]) -> str:
    """The answer text a model of ``frame.style`` is trained on, for boxes in stored pixels."""
    if not boxes:
        return "[]"
    if frame.style == "qwen2":
        parts = []
        for b in boxes:
            x1, y1, x2, y2 = frame.to_model(b["bbox"])
            parts.append(
                f"<|object_ref_start|>{b['label']}<|object_ref_end|><|box_start|>({x1},{y1}),({x2},{y2})<|box_end|>"
            )
        return "\n".join(parts)
    return json.dumps([{"bbox_2d": frame.to_model(b["bbox"]), "label": b["label"]} for b in boxes], ensure_ascii=False)


def _finite4(vals) -> list[float] | None:
    try:
        out = [float(v) for v in vals]
    except (TypeError, ValueError):
        return None
    return out if len(out) == 4 and all(math.isfinite(v) for v in out) else None


def parse_syntax(text) -> list[tuple[list[float], str, float | None]] | None:
    """``[(coords, label, score), ...]`` as written (no scaling); ``[]`` for an explicit nothing; None if unreadable."""
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    t = text[:MAX_CHARS]
    bare = _FENCE.sub("", t).strip()
    if bare.lower().strip(" .。!！") in _NOTHING:
        return []
    found: list[tuple[list[float], str, float | None]] = []
    if "bbox" in t:
        for m in _OBJECT.finditer(t):
            try:
                obj = json.loads(m.group(0))
            except ValueError:
                continue
            if not isinstance(obj, dict):
                continue
            coords = _finite4(obj.get("bbox_2d", obj.get("bbox")))
            if coords is None:
                continue
            label = obj.get("label")
            score = obj.get("score")
            score = (
                float(score)
                if isinstance(score, (int, float)) and not isinstance(score, bool) and math.isfinite(score)
                else None
            )
            found.append((coords, label if isinstance(label, str) else "", score))
            if len(found) >= MAX_BOXES:
                break
        if found:
            return found
    prev = 0
    for m in _QWEN2.finditer(t):
        coords = _finite4([m.group("x1"), m.group("y1"), m.group("x2"), m.group("y2")])
        label = m.group("label")
        if label is None:  # special tokens stripped by decoding: the label is the text before the box
            label = re.sub(r"<\|[^|]*\|>", "", t[prev : m.start()]).strip(" \n\t,;:，；：、")
        prev = m.end()
        if coords is not None:
            found.append((coords, label.strip(), None))
        if len(found) >= MAX_BOXES:
            break
    if found:
        return found
    for m in _LIST4.finditer(t):
        coords = _finite4(m.groups())
        if coords is not None:
            found.append((coords, "", None))
        if len(found) >= MAX_BOXES:
            break
    if found:
        return found
    try:
        if json.loads(bare) == []:
            return []
    except ValueError:
        pass
    return None


def parse_text(frame: BoxFrame | None, text) -> list[dict] | None:
    """Boxes of a model's text in stored-image pixels: ``[{"bbox", "label", "score"?}]``, ``[]`` or None.

    ``frame`` None: the numbers are read as stored-image pixels (the dataset convention, e.g. a
    reference ``answer`` or the output of a model that was given the frame-free canonical form)."""
    raw = parse_syntax(text)
    if raw is None:
        return None
    out = []
    for coords, label, score in raw:
        bbox = frame.from_model(coords) if frame is not None else [float(v) for v in coords]
        d = {"bbox": bbox, "label": label}
        if score is not None:
            d["score"] = score
        out.append(d)
    return out


def frame_for(
    family, width: int, height: int, min_pixels: int | None = None, max_pixels: int | None = None
) -> BoxFrame:
    """The frame of a ``width`` × ``height`` stored image for a family under the given pixel bounds."""
    rh, rw = family.resized_size(height, width, min_pixels, max_pixels)
    return BoxFrame(family.box_style, int(width), int(height), int(rw), int(rh))


def engine_frame(engine, width: int, height: int) -> BoxFrame | None:
    """The frame of a ``width`` × ``height`` image for a local engine (its family and the pixel bounds of
    its processor); None for an engine without them (a remote server: boxes are read as image pixels)."""
    fam, proc = getattr(engine, "family", None), getattr(engine, "processor", None)
    if fam is None or proc is None or not hasattr(fam, "box_style"):
        return None
    from .preprocess import PreprocessConfig

    lo, hi = PreprocessConfig.bounds_of(proc)
    return frame_for(fam, width, height, lo, hi)
