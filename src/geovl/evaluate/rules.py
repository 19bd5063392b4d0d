"""Per-question-type scoring rules: :func:`score_sample` and :func:`is_correct`.

=============  ==========================================================================
qtype          correct when …  (secondary metrics in the result dict)
=============  ==========================================================================
yes_no         :func:`parse_yes_no` of both agree
count          :func:`parse_number` of both are equal  (``abs_err``, ``within_1``)
number, area   relative error of the SI values ≤ ``tolerance``  (``rel_err``,
               ``within_10pct``, ``kind``); a side without a unit is read both as written
               and in the other side's unit, the closer reading counts ("10632" vs
               "10632 m2", "12" vs "12 ha", "0.12" vs "12%"); area vs length → wrong
choice         :func:`normalize_choice` of both (against ``choices`` if given) agree
open           normalised exact match  (``char_sim``: LCS ratio per character, works for Chinese)
structured     exact match of the JSON objects if both parse, else of normalised text
               (``char_sim``) — per-field scoring plugs in at :func:`score_structured`
grounding      boxes (:mod:`geovl.evaluate.grounding`): IoU ≥ 0.5 (referring) or every box
               matched at IoU 0.5 and none extra (all)  (``iou``, ``f1``, ``tp``/``fp``/``fn``, ...)
date           :func:`parse_date` of both equal (a year, month, day or interval "START/END"); a
               prediction more precise than the reference is first cut to its precision
               ("2019-06-01" answers "which year: 2019"), never the reverse
=============  ==========================================================================

Every result is JSON-serialisable: ``{"qtype", "correct", "parsed", "pred", "ref", ...}``;
``parsed`` says whether the prediction could be read, ``note`` explains oddities
(``reference_unparseable``, ``unit_mismatch``, ``zero_reference``, ``unknown_qtype``).
Identical non-empty answers (after :func:`normalize_text`) are always correct.
Unknown qtypes are scored like ``open``.
"""

from __future__ import annotations

import json
import re
from typing import Callable, Sequence

from rapidfuzz.distance import LCSseq

from .normalize import date_at_precision, normalize_choice, normalize_text, parse_date, parse_yes_no, strip_markup
from .quantities import Quantity, find_quantity, parse_number

__all__ = ["SCORERS", "char_similarity", "is_correct", "score_sample", "score_structured"]


def char_similarity(a: str, b: str) -> float:
    """Character similarity of two (normalised) strings in [0, 1]: ``2·LCS / (len(a) + len(b))`` with LCS the
    longest common subsequence (rapidfuzz's bit-parallel ``LCSseq``, so whole answers are compared — no length
    cap); 0.0 if either is empty.

    The same formula as difflib's ``SequenceMatcher.ratio()`` (``2·M / T``), which it replaces: the two agree
    whenever difflib's greedy longest-block matching finds a longest common subsequence (e.g. one inserted,
    deleted or changed stretch); otherwise difflib counts fewer matches and this value is higher
    (``"acac"`` vs ``"cbba"``: 0.5 here, 0.25 by difflib). tests/test_fuzzy_parity.py checks both."""
    if not a or not b:
        return 0.0
    return 2.0 * LCSseq.similarity(a, b) / (len(a) + len(b))  # difflib's own arithmetic: same floats where M agrees


def _within(err: float, tolerance: float) -> bool:
    return err <= tolerance * (1 + 1e-9) + 1e-12  # 1.02 vs 1 is within 2 % despite float noise


def _rel_err(p: float, r: float) -> float | None:
    if r == 0:
        return 0.0 if p == 0 else None
    return abs(p - r) / abs(r)


def score_yes_no(pred, ref, tolerance, choices) -> dict:
    p, r = parse_yes_no(pred), parse_yes_no(ref)
    return {"correct": p is not None and p == r, "parsed": p is not None, "pred": p, "ref": r}


def score_count(pred, ref, tolerance, choices) -> dict:
    p, r = parse_number(pred), parse_number(ref)
    out = {"correct": p is not None and p == r, "parsed": p is not None, "pred": p, "ref": r}
    if p is not None and r is not None:
        out["abs_err"] = abs(p - r)
        out["within_1"] = abs(p - r) <= 1
    else:
        out["abs_err"], out["within_1"] = None, False
    return out


def _readings(q: Quantity, other: Quantity) -> list[float]:
    """SI readings of ``q``: as written, and (if it has no unit) in ``other``'s unit."""
    if q.kind is None and other.kind is not None:
        return [q.value, q.value * other.factor]
    return [q.si]


def score_quantity(pred, ref, tolerance, choices) -> dict:
    qp, qr = find_quantity(pred), find_quantity(ref)
    out: dict = {"correct": False, "parsed": qp is not None, "pred": None, "ref": None}
    out.update(rel_err=None, within_10pct=False, kind=None)
    if qp is not None:
        out["pred"] = qp.si
    if qr is not None:
        out["ref"] = qr.si
    if qp is None or qr is None:
        return out
    if qp.kind and qr.kind and qp.kind != qr.kind:
        out["note"] = "unit_mismatch"
        return out
    best = None
    for p in _readings(qp, qr):
        for r in _readings(qr, qp):
            err = _rel_err(p, r)
            if err is not None and (best is None or err < best[0]):
                best = (err, p, r)
    out["kind"] = qp.kind or qr.kind
    if best is None:  # reference 0, prediction not 0
        out["note"] = "zero_reference"
        return out
    err, out["pred"], out["ref"] = best
    out.update(rel_err=err, within_10pct=_within(err, 0.10), correct=_within(err, tolerance))
    return out


def score_choice(pred, ref, tolerance, choices) -> dict:
    p, r = normalize_choice(pred, choices), normalize_choice(ref, choices)
    return {"correct": p is not None and p == r, "parsed": p is not None, "pred": p, "ref": r}


def score_date(pred, ref, tolerance, choices) -> dict:
    p, r = parse_date(pred), parse_date(ref)
    if p is not None and r is not None:
        p = date_at_precision(p, r)
    return {"correct": p is not None and p == r, "parsed": p is not None, "pred": p, "ref": r}


def score_open(pred, ref, tolerance, choices) -> dict:
    p, r = normalize_text(pred), normalize_text(ref)
    return {"correct": bool(p) and p == r, "parsed": bool(p), "pred": p, "ref": r, "char_sim": char_similarity(p, r)}


_FENCED = re.compile(r"^```[a-z]*\s*|\s*```$", re.I)


def _as_json(s) -> object | None:
    t = _FENCED.sub("", strip_markup(s).strip())
    if not t or t[0] not in "[{":
        return None
    try:
        return json.loads(t)
    except (ValueError, RecursionError):
        return None


def score_structured(pred, ref, tolerance, choices) -> dict:
    """Structured answers (JSON objects such as a defect report).

    Exact: equal JSON values when both parse (key order and spacing ignored), else equal
    normalised text. ``char_sim`` compares the canonical JSON (or normalised text).
    Extension point: per-field scoring adds its keys (e.g. ``"fields"``) to this result."""
    pj, rj = _as_json(pred), _as_json(ref)
    if pj is not None and rj is not None:
        canon = lambda v: json.dumps(v, ensure_ascii=False, sort_keys=True, separators=(",", ":"))  # noqa: E731
        p, r = canon(pj), canon(rj)
        return {
            "correct": pj == rj,
            "parsed": True,
            "pred": p,
            "ref": r,
            "json": True,
            "char_sim": char_similarity(p, r),
        }
    out = score_open(pred, ref, tolerance, choices)
    out["json"] = False
    return out


def score_grounding(pred, ref, tolerance, choices, meta: dict | None = None) -> dict:
    """Boxes (:mod:`geovl.evaluate.grounding`); without ``meta`` both texts are read as stored-image pixels."""
    from .grounding import score_text

    out = score_text(pred, ref, meta)
    out.pop("qtype", None)
    out["pred"], out["ref"] = out["n_pred"] if out["parsed"] else None, None if out.get("note") else out["n_ref"]
    return out


# qtype -> scorer(prediction, reference, tolerance, choices) -> partial result dict
SCORERS: dict[str, Callable[..., dict]] = {
    "yes_no": score_yes_no,
    "count": score_count,
    "number": score_quantity,
    "area": score_quantity,
    "choice": score_choice,
    "open": score_open,
    "structured": score_structured,
    "grounding": score_grounding,
    "date": score_date,
}


def score_sample(
    qtype: str, prediction, reference, tolerance: float = 0.02, choices: Sequence[str] | None = None
) -> dict:
    """Score one prediction against its reference; see the module docstring."""
    scorer = SCORERS.get(qtype)
    note = None
    if scorer is None:
        scorer, note = score_open, "unknown_qtype"
    out = {"qtype": qtype, **scorer(prediction, reference, tolerance, choices)}
    if out.get("ref") is None and "note" not in out:
        out["note"] = "reference_unparseable"
    if note:
        out["note"] = note
    if not out["correct"]:
        text = normalize_text(prediction)
        if text and text == normalize_text(reference):
            out["correct"] = True
    return out


def is_correct(
    qtype: str, prediction, reference, tolerance: float = 0.02, choices: Sequence[str] | None = None
) -> bool:
    """``score_sample(...)["correct"]``."""
    return bool(score_sample(qtype, prediction, reference, tolerance, choices)["correct"])
