"""Reward rules: one prediction text and one reference → a score in [0, 1].

They reuse the normalisers and scoring rules of evaluation (:mod:`geovl.evaluate.normalize`), so a
reward of 1.0 means ``geovl score`` counts the answer correct (for yes/no, count, number, choice).
None of them raises on junk text: what cannot be read scores 0.0.

==========  =====================================================================================
rule        score
==========  =====================================================================================
yes_no      1.0 when ``is_correct("yes_no", ...)`` (both parse to the same yes/no), else 0.0
count       ``exp(-|p - r| / max(1, 0.25·|r|))``: 1.0 exact; one off a small count ≈ 0.37, one
            off 20 ≈ 0.82 — absolute error for small counts, relative error (25 %) for large ones
number      value + unit → SI (1 km² = 100 公顷 = 1500 亩 = 10⁶ m²; km / m / cm; %): 1.0 within
            2 % relative error, else ``exp(-5·rel_err)``; area vs length → 0.0; a number without
            a unit is read as written and in the other side's unit (the closer reading counts,
            as in evaluation). A measured value in ``meta["gt"]["m2"]`` (or ``["area_m2"]``)
            replaces the rounded reference text.
choice      1.0 when ``normalize_choice`` of both agree (against ``meta["choices"]`` if given)
date        1.0 when ``is_correct("date", ...)``: the same year / date / interval after ``parse_date``
            (a more precise prediction cut to the reference's precision), else 0.0
open        ``0.6 · char_similarity + 0.4 · BLEU`` on normalised text (LCS ratio per character via
            rapidfuzz, so for Chinese too; BLEU: :mod:`geovl.rewards.bleu`)
format      1.0 for ``<answer>…</answer>`` (optionally after ``<think>…</think>``) and nothing else;
            0.5 when an answer block is there with other text around it; else 0.0
brevity     1.0 up to ``max(8, 2·len(reference))`` characters (normalised), then ``budget / len``
grounding   boxes read back to stored-image pixels through ``meta["box_frame"]`` against
            ``meta["boxes"]`` (:mod:`geovl.evaluate.grounding`): one referred object → its IoU;
            every object → IoU-weighted F1 at IoU 0.5 (Hungarian matching: 2·Σ matched IoU /
            (predicted + reference); 1.0 only when every box is exact); unreadable → 0.0
box count   ``count`` rule on the number of predicted vs reference boxes (0.0 if unreadable)
box format  1.0 when boxes can be read from the answer (or it says "none": ``[]``, 无), else 0.0
==========  =====================================================================================

Identical non-empty answers (after ``normalize_text``) score 1.0 under every rule but format/brevity.
"""

from __future__ import annotations

import math
import re

from ..evaluate.normalize import is_correct, normalize_text, parse_number, score_sample
from ..evaluate.quantities import find_quantity
from ..evaluate.rules import char_similarity
from .bleu import text_bleu

__all__ = [
    "TOLERANCE",
    "box_count_score",
    "box_format_score",
    "date_score",
    "brevity_score",
    "choice_score",
    "count_score",
    "format_score",
    "grounding_score",
    "measured_m2",
    "number_score",
    "open_score",
    "score",
    "yes_no_score",
]

TOLERANCE = 0.02  # relative error that still counts as exact for numbers (same default as `geovl score`)
OPEN_SIM_WEIGHT, OPEN_BLEU_WEIGHT = 0.6, 0.4


def _clip(x: float) -> float:
    if x is None or not math.isfinite(x):
        return 0.0
    return min(1.0, max(0.0, float(x)))


def _same_text(pred, ref) -> bool:
    p = normalize_text(pred)
    return bool(p) and p == normalize_text(ref)


def yes_no_score(pred, ref, **_) -> float:
    return 1.0 if is_correct("yes_no", pred, ref) else 0.0


def count_score(pred, ref, **_) -> float:
    r = parse_number(ref)
    if r is None:
        return 1.0 if _same_text(pred, ref) else 0.0
    p = parse_number(pred)
    if p is None:
        return 0.0
    d = abs(p - r)
    if d == 0:
        return 1.0
    return _clip(math.exp(-d / max(1.0, 0.25 * abs(r))))


def measured_m2(meta) -> float | None:
    """The measured area in m² carried by a sample's ``meta["gt"]`` (``m2`` or ``area_m2``), else None."""
    gt = meta.get("gt") if isinstance(meta, dict) else None
    if not isinstance(gt, dict):
        return None
    for key in ("m2", "area_m2"):
        v = gt.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0:
            return float(v)
    return None


def _measured_reference(ref, m2: float, meta: dict) -> str:
    """The measured area written in the unit the reference (or ``meta["gt"]["unit"]``) uses."""
    q = find_quantity(ref)
    if q is not None and q.kind == "area" and q.unit:
        return f"{m2 / q.factor:.12g} {q.unit}"
    unit = str((meta.get("gt") or {}).get("unit") or "")
    q = find_quantity(f"1 {unit}") if unit else None
    if q is not None and q.kind == "area" and q.unit:
        return f"{m2 / q.factor:.12g} {q.unit}"
    return f"{m2:.12g} m2"


def number_score(pred, ref, meta=None, tolerance: float = TOLERANCE, **_) -> float:
    m2 = measured_m2(meta)
    if m2 is not None:
        ref = _measured_reference(ref, m2, meta)
    res = score_sample("number", pred, ref, tolerance=tolerance)
    if res.get("note") == "unit_mismatch":
        return 0.0
    if res["correct"]:
        return 1.0
    err = res.get("rel_err")
    if err is None:
        return 0.0
    return _clip(math.exp(-5.0 * err))


def choice_score(pred, ref, meta=None, **_) -> float:
    choices = meta.get("choices") if isinstance(meta, dict) else None
    if not (isinstance(choices, (list, tuple)) and all(isinstance(c, str) for c in choices)):
        choices = None
    return 1.0 if is_correct("choice", pred, ref, choices=choices) else 0.0


def date_score(pred, ref, **_) -> float:
    return 1.0 if is_correct("date", pred, ref) else 0.0


def open_score(pred, ref, **_) -> float:
    p, r = normalize_text(pred), normalize_text(ref)
    if not p or not r:
        return 0.0
    if p == r:
        return 1.0
    return _clip(OPEN_SIM_WEIGHT * char_similarity(p, r) + OPEN_BLEU_WEIGHT * text_bleu(p, r))


_THINK_LEAD = re.compile(r"^\s*<think>.*?</think>", re.S | re.I)
_ANSWER_BLOCK = re.compile(r"<answer>(.*?)</answer>", re.S | re.I)


def format_score(completion, **_) -> float:
    """See the module table: the ``<answer>…</answer>`` output format."""
    t = completion if isinstance(completion, str) else ("" if completion is None else str(completion))
    t = t.replace("<|im_end|>", "").replace("<|endoftext|>", "")
    blocks = _ANSWER_BLOCK.findall(t)
    if not blocks or not any(b.strip() for b in blocks):
        return 0.0
    rest = _ANSWER_BLOCK.sub("", _THINK_LEAD.sub("", t, count=1)).strip()
    return 1.0 if len(blocks) == 1 and not rest else 0.5


def brevity_score(pred, ref, **_) -> float:
    """See the module table: a length penalty for answers much longer than the reference."""
    n = len(normalize_text(pred))
    if n == 0:
        return 0.0
    budget = max(8, 2 * len(normalize_text(ref)))
    return 1.0 if n <= budget else _clip(budget / n)


def grounding_score(pred, ref, meta=None, **_) -> float:
    from ..evaluate.grounding import score_text

    if not (isinstance(meta, dict) and isinstance(meta.get("boxes"), list)) and _same_text(pred, ref):
        return 1.0  # no boxes in meta: the reference text is the truth, and it was repeated
    res = score_text(pred, ref, meta)
    if not res["parsed"] or res.get("note"):
        return 0.0
    return _clip(res["iou"] if res["mode"] == "referring" else res["soft_f1"])


def box_count_score(pred, ref, meta=None, **_) -> float:
    from ..evaluate.grounding import score_text

    res = score_text(pred, ref, meta)
    if not res["parsed"] or res.get("note"):
        return 0.0
    return count_score(str(res["n_pred"]), str(res["n_ref"]))


def box_format_score(pred, meta=None, **_) -> float:
    from ..evaluate.grounding import predicted_boxes

    return 1.0 if predicted_boxes(meta or {}, pred) is not None else 0.0


SCORES = {
    "yes_no": yes_no_score,
    "count": count_score,
    "number": number_score,
    "choice": choice_score,
    "open": open_score,
    "grounding": grounding_score,
    "date": date_score,
}


def score(kind: str, pred, ref, meta=None) -> float:
    """The score of ``pred`` against ``ref`` under reward kind ``kind`` (``open`` if unknown)."""
    return SCORES.get(kind, open_score)(pred, ref, meta=meta if isinstance(meta, dict) else None)
