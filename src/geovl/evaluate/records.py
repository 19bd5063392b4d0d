"""The prediction record: one line of a predictions file (``geovl eval`` writes it; ``geovl score``,
``geovl compare``, ``geovl judge`` and ``geovl rewards`` read it). One schema, checked on both sides::

    {"id", "qtype", "question", "reference", "prediction", "source"?, "lang"?, "meta"?, ...}

- ``id``: a non-empty string (an integer is accepted and read as its string); unique in a file;
- ``qtype``: a non-empty string (``yes_no``, ``count``, ``number``, ``area``, ``choice``, ``open``,
  ``structured``, ``grounding`` …);
- ``question``, ``reference``, ``prediction``: present; read as text (``null`` → ``""``, numbers and
  booleans as JSON, objects as JSON text), so a ``null`` prediction is an empty, wrong answer;
- ``meta``: an object when present (``lang``/``language``, ``choices``, ``box_frame`` …);
- ``source``, ``lang`` and any other keys are kept as they are.

A record that breaks a rule is a :class:`PredictionsFileError` (a :class:`~geovl.errors.GeoVLError`)
whose message names the file and line (reading) or the sample (writing) and the rule.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import GeoVLError

REQUIRED = ("id", "qtype", "question", "reference", "prediction")


class PredictionsFileError(GeoVLError, ValueError):
    """A predictions file or record that breaks the schema; the message names the file (and line)."""


def as_text(v) -> str:
    """A record field as text: ``None`` → ``""``, strings unchanged, numbers/booleans and objects as JSON."""
    if v is None:
        return ""
    if isinstance(v, str):
        return v
    if isinstance(v, (int, float, bool)):
        return json.dumps(v)
    return json.dumps(v, ensure_ascii=False)  # structured answers given as objects


def check_record(rec, where: str) -> dict:
    """``rec`` checked against the schema and normalised (``id`` a string, ``meta`` an object, the three
    text fields as text); raises :class:`PredictionsFileError` naming ``where`` and the broken rule."""
    if not isinstance(rec, dict):
        raise PredictionsFileError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    missing = [f for f in REQUIRED if f not in rec]
    if missing:
        raise PredictionsFileError(f"{where}: missing required field(s) {', '.join(missing)}")
    if not isinstance(rec["id"], (str, int)) or rec["id"] == "":
        raise PredictionsFileError(f"{where}: 'id' must be a non-empty string")
    if not isinstance(rec["qtype"], str) or not rec["qtype"]:
        raise PredictionsFileError(f"{where}: 'qtype' must be a non-empty string")
    if rec.get("meta") is not None and not isinstance(rec["meta"], dict):
        raise PredictionsFileError(f"{where}: 'meta' must be an object")
    out = dict(rec, id=str(rec["id"]), meta=rec.get("meta") or {})
    for f in ("question", "reference", "prediction"):
        out[f] = as_text(rec[f])
    return out


def prediction_record(
    sample_id,
    qtype: str,
    question,
    reference,
    prediction,
    source: str = "",
    lang=None,
    meta: dict | None = None,
    **extra,
) -> dict:
    """A new record as ``geovl eval`` writes it, checked against the schema (the writer's side)."""
    rec = {
        "id": sample_id,
        "qtype": qtype,
        "question": question,
        "reference": reference,
        "prediction": prediction,
        "source": source,
        "lang": lang,
        "meta": meta if meta is not None else {},
        **extra,
    }
    check_record(rec, f"prediction record {sample_id!r}")
    return rec


def read_predictions(path) -> list[dict]:
    """Records of a predictions file, checked and normalised (:func:`check_record`), each with ``_line``
    (its 1-based line number); duplicate ids, a bad line and an empty file are errors naming the file."""
    from ..fileio import iter_jsonl

    path = Path(path)
    if not path.is_file():
        raise PredictionsFileError(f"{path}: no such predictions file")
    records: list[dict] = []
    seen: dict[str, int] = {}
    for lineno, rec in iter_jsonl(path, error_class=PredictionsFileError):
        where = f"{path}:{lineno}"
        rec = check_record(rec, where)
        rid = rec["id"]
        if rid in seen:
            raise PredictionsFileError(f"{where}: duplicate id {rid!r} (first at line {seen[rid]})")
        seen[rid] = lineno
        rec["_line"] = lineno
        records.append(rec)
    if not records:
        raise PredictionsFileError(f"{path}: no predictions in the file")
    return records
