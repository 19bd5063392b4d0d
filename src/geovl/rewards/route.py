"""Which reward rule a sample gets: its ``qtype`` when known, else detected from the question.

Routes (reward kinds): ``yes_no``, ``count``, ``number`` (areas, lengths, ratios with units),
``choice``, ``open``, ``grounding``, ``date`` (a year, a date or an interval). Dataset qtypes map onto them: ``area`` → ``number``,
``structured`` → ``open``. Detection from the question text: :mod:`geovl.data.qtype` (shared with the
converters).
"""

from __future__ import annotations

from ..data.qtype import detect_qtype

__all__ = ["KINDS", "QTYPE_TO_KIND", "detect_qtype", "route"]

KINDS = ("yes_no", "count", "number", "choice", "open", "grounding", "date")
QTYPE_TO_KIND = {
    "yes_no": "yes_no",
    "count": "count",
    "number": "number",
    "area": "number",
    "choice": "choice",
    "open": "open",
    "structured": "open",
    "grounding": "grounding",
    "date": "date",
}


def route(qtype=None, question=None) -> tuple[str, str]:
    """``(kind, source)``: the sample's qtype mapped to a reward kind (``source="qtype"``), or when the
    qtype is absent, empty or unknown, the kind detected from the question (``source="question"``)."""
    if isinstance(qtype, str) and qtype.strip():
        kind = QTYPE_TO_KIND.get(qtype.strip().lower())
        if kind is not None:
            return kind, "qtype"
    return detect_qtype(question), "question"
