"""Structured answers (inspection reports such as the building-defect table): render, validate, score.

The report schema — field names in order, which fields are required, which take a value from a
closed list (``allowed``, e.g. 风险等级: 轻微/中等/严重), the answer template — is declared once, in
the CSV preset (``geovl/data/presets/building-defect.yaml``), and read from there with
:func:`geovl.data.adapters.csv_table.load_mapping`. It is used three ways:

1. :func:`render_answer` renders a training answer from fields exactly as the CSV adapter does
   (the preset's ``answer_template``).
2. :func:`parse_report` reads a prediction back into fields: ``风险：…`` lines with ``:``/``：``,
   spaces, markdown bullets/bold/``【风险】`` labels, numbered lists, several fields on one line
   separated by ``；``, any field order, values over several lines, the CSV column names
   (``data_风险``) as labels, or a JSON object. The first occurrence of a field wins (repeats are
   listed in ``duplicates``). A prediction is ``valid`` when every required field is present
   and non-empty and every closed-list field holds an allowed value.
3. :func:`score_report` / :func:`structured_metrics` score per field: closed-list fields by
   accuracy and a confusion matrix (rows: reference level; columns: the allowed levels +
   ``invalid``, which counts missing and unrecognised values alike), text fields by character
   similarity (:func:`~geovl.evaluate.rules.char_similarity`, an LCS ratio, of :func:`~geovl.evaluate.normalize.normalize_text` forms; 0 when
   the field is missing).

Reading a level (:func:`level_of`): the allowed value itself; or a synonym that the shared
choice table maps to the same canonical level (中度/moderate → 中等); or a value that starts
with exactly one allowed level and mentions no other (``中等风险``, ``严重（需立即处理）``).
``不严重`` or ``轻微至中等`` are invalid.

``geovl score`` adds :func:`structured_metrics` for ``qtype=structured`` records (key
``"structured"``, one entry per preset) and ``geovl infer --data … --compare-gt`` writes
:func:`score_report` per record (key ``"structured"``).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from .normalize import canonical_choice, normalize_text, strip_markup
from .rules import char_similarity
from .table import format_table, num, pct

INVALID = "invalid"


@dataclass(frozen=True)
class ReportSchema:
    name: str
    fields: tuple[str, ...]
    allowed: dict = field(default_factory=dict)  # field -> tuple of allowed values
    required: dict = field(default_factory=dict)  # field -> bool
    aliases: dict = field(default_factory=dict)  # label as written -> field (names and CSV columns)
    template: str | None = None

    @property
    def level_fields(self) -> list[str]:
        return [f for f in self.fields if self.allowed.get(f)]

    @property
    def text_fields(self) -> list[str]:
        return [f for f in self.fields if not self.allowed.get(f)]


def schema_from_mapping(m: dict) -> ReportSchema:
    fields = tuple(m["fields"])
    aliases = {f: f for f in fields}
    aliases.update({spec["column"]: f for f, spec in m["fields"].items()})
    return ReportSchema(
        name=m["name"],
        fields=fields,
        allowed={f: tuple(spec["allowed"]) for f, spec in m["fields"].items() if spec.get("allowed")},
        required={f: bool(spec.get("required", True)) for f, spec in m["fields"].items()},
        aliases=aliases,
        template=m.get("answer_template"),
    )


@lru_cache(maxsize=32)
def load_schema(preset: str | None = "building-defect", mapping: str | None = None) -> ReportSchema:
    """The report schema of a CSV preset (or mapping file); raises ``ConvertError`` if unknown."""
    from ..data.adapters.csv_table import load_mapping

    m = load_mapping(preset=preset, mapping=mapping)
    if not m["fields"]:
        from ..data.convert import ConvertError

        raise ConvertError(f"mapping {m['name']!r} declares no 'fields'; it has no structured answer")
    return schema_from_mapping(m)


def schema_for_record(rec: dict) -> ReportSchema | None:
    """The schema of a predictions record: its ``meta["preset"]``; else a schema with the field
    names of ``meta["fields"]`` (no closed lists); else ``None``."""
    from ..data.convert import ConvertError

    meta = rec.get("meta") or {}
    if meta.get("preset"):
        try:
            return load_schema(str(meta["preset"]))
        except ConvertError:
            pass
    if isinstance(meta.get("fields"), dict) and meta["fields"]:
        names = tuple(str(k) for k in meta["fields"])
        return ReportSchema(
            name=str(meta.get("preset") or "fields"),
            fields=names,
            required={f: True for f in names},
            aliases={f: f for f in names},
        )
    return None


def render_answer(schema: ReportSchema, fields: dict) -> str:
    """The answer text for ``fields`` (the preset's template, as the CSV adapter renders it)."""
    if schema.template:
        return schema.template.format_map({f: fields.get(f, "") for f in schema.fields}).strip()
    return "\n".join(f"{f}：{fields.get(f, '')}" for f in schema.fields)


# -- parsing ------------------------------------------------------------------------------------------
_FENCE = re.compile(r"^\s*```[a-z]*\s*|\s*```\s*$", re.I)
_EDGE = " \t\r\n*_#>|;；,，、"


@lru_cache(maxsize=32)
def _label_re(labels: tuple[str, ...]) -> re.Pattern:
    alts = "|".join(re.escape(x) for x in sorted(labels, key=len, reverse=True))
    return re.compile(
        r"(?:^|(?<=[\s;；,，。|]))[ \t]*(?:[-*+•·>#]+[ \t]*|\d{1,2}[.、)）][ \t]*)?(?:\*\*|__)?"
        rf"(?:[【\[](?P<l1>{alts})[】\]](?:\*\*|__)?[ \t]*[:：]?|(?P<l2>{alts})(?:\*\*|__)?[ \t]*[:：])(?:\*\*|__)?",
        re.M,
    )


def _clean(v: str) -> str:
    v = v.strip(_EDGE)
    v = re.sub(r"\*\*|__", "", v)
    return v.strip(_EDGE + "。")


def _from_json(text: str, schema: ReportSchema) -> dict | None:
    t = _FENCE.sub("", strip_markup(text).strip())
    if not t.startswith("{"):
        return None
    try:
        obj = json.loads(t)
    except (ValueError, RecursionError):
        return None
    if not isinstance(obj, dict):
        return None
    out = {}
    for k, v in obj.items():
        f = schema.aliases.get(str(k).strip())
        if f and f not in out and v is not None:
            out[f] = _clean(v if isinstance(v, str) else json.dumps(v, ensure_ascii=False))
    return out


def level_of(value: str | None, allowed) -> str | None:
    """The allowed level a value names (module docstring), else ``None``."""
    if not value:
        return None
    v = _clean(strip_markup(value))
    if v in allowed:
        return v
    canon = canonical_choice(normalize_text(v))
    hits = [a for a in allowed if canonical_choice(normalize_text(a)) == canon]
    if len(hits) == 1:
        return hits[0]
    starts = [a for a in allowed if v.startswith(a)]
    if len(starts) == 1 and not any(a in v[len(starts[0]) :] for a in allowed):
        return starts[0]
    return None


def parse_report(text, schema: ReportSchema) -> dict:
    """Fields of a prediction: ``{"fields", "missing", "invalid", "duplicates", "valid", "format"}``.

    ``fields`` holds the values as written (cleaned); closed-list fields hold the recognised
    level, and an unrecognised value is listed in ``invalid`` (field → value) instead."""
    text = "" if text is None else str(text)
    raw: dict[str, str] = {}
    duplicates: list[str] = []
    fmt = "none"
    js = _from_json(text, schema)
    if js:
        raw, fmt = js, "json"
    else:
        t = strip_markup(text)
        matches = list(_label_re(tuple(schema.aliases)).finditer(t))
        for i, m in enumerate(matches):
            f = schema.aliases[m.group("l1") or m.group("l2")]
            end = matches[i + 1].start() if i + 1 < len(matches) else len(t)
            if f in raw:
                duplicates.append(f)
                continue
            raw[f] = _clean(t[m.end() : end])
        if matches:
            fmt = "labels"
    fields, invalid = {}, {}
    for f in schema.fields:
        v = raw.get(f, "")
        if not v:
            continue
        if schema.allowed.get(f):
            lv = level_of(v, schema.allowed[f])
            if lv is None:
                invalid[f] = v
            else:
                fields[f] = lv
        else:
            fields[f] = v
    missing = [f for f in schema.fields if not raw.get(f)]
    valid = not invalid and not any(schema.required.get(f, True) for f in missing)
    return {
        "fields": fields,
        "missing": missing,
        "invalid": invalid,
        "duplicates": duplicates,
        "valid": valid,
        "format": fmt,
    }


# -- scoring ------------------------------------------------------------------------------------------
def reference_fields(rec: dict, schema: ReportSchema) -> dict:
    """Reference fields of a record: ``meta["fields"]`` (written by the CSV adapter), else parsed
    from the reference text."""
    meta_fields = (rec.get("meta") or {}).get("fields")
    if isinstance(meta_fields, dict) and meta_fields:
        return {f: str(meta_fields.get(f, "")) for f in schema.fields}
    return parse_report(rec.get("reference", ""), schema)["fields"]


def score_report(prediction, ref_fields: dict, schema: ReportSchema) -> dict:
    """Per-field scores of one prediction: closed-list fields ``correct`` (and the predicted
    level or ``invalid``), text fields ``char_sim``; plus the parse (valid, missing, invalid)."""
    p = parse_report(prediction, schema)
    per = {}
    for f in schema.fields:
        ref = ref_fields.get(f) or ""
        pred = p["fields"].get(f)
        if schema.allowed.get(f):
            ref_level = level_of(ref, schema.allowed[f]) or INVALID
            per[f] = {"pred": pred or INVALID, "ref": ref_level, "correct": pred is not None and pred == ref_level}
        else:
            sim = char_similarity(normalize_text(pred), normalize_text(ref)) if pred else 0.0
            per[f] = {"pred": pred, "ref": ref, "char_sim": round(sim, 6)}
    return {"schema": schema.name, "valid": p["valid"], "missing": p["missing"], "invalid": p["invalid"],
            "duplicates": p["duplicates"], "format": p["format"], "fields": per}  # fmt: skip


def score_record(rec: dict) -> dict | None:
    """:func:`score_report` of a predictions record (``None`` when it has no report schema)."""
    schema = schema_for_record(rec)
    if schema is None:
        return None
    return score_report(rec.get("prediction"), reference_fields(rec, schema), schema)


def _aggregate(schema: ReportSchema, reports: list[dict]) -> dict:
    n = len(reports)
    out = {"n": n, "valid": sum(r["valid"] for r in reports)}
    out["valid_rate"] = out["valid"] / n if n else None
    out["missing"] = {f: sum(f in r["missing"] for r in reports) for f in schema.fields}
    out["invalid"] = {f: sum(f in r["invalid"] for r in reports) for f in schema.fields}
    fields = {}
    for f in schema.fields:
        if schema.allowed.get(f):
            labels = list(schema.allowed[f])
            rows = labels + ([INVALID] if any(r["fields"][f]["ref"] == INVALID for r in reports) else [])
            conf = {a: {b: 0 for b in labels + [INVALID]} for a in rows}
            for r in reports:
                conf[r["fields"][f]["ref"]][r["fields"][f]["pred"]] += 1
            correct = sum(r["fields"][f]["correct"] for r in reports)
            fields[f] = {
                "kind": "level",
                "labels": labels,
                "correct": correct,
                "accuracy": correct / n if n else None,
                "confusion": conf,
            }
        else:
            sims = [r["fields"][f]["char_sim"] for r in reports]
            fields[f] = {
                "kind": "text",
                "mean_char_sim": sum(sims) / n if n else None,
                "present": n - out["missing"][f],
            }
    out["fields"] = fields
    text = [fields[f]["mean_char_sim"] for f in schema.text_fields if fields[f]["mean_char_sim"] is not None]
    out["mean_text_sim"] = sum(text) / len(text) if text else None
    return out


def structured_metrics(records: list[dict], reports: list[dict | None] | None = None) -> dict:
    """``{schema name: metrics}`` over the ``qtype=structured`` records that have a schema."""
    reports = (
        reports
        if reports is not None
        else [score_record(r) if r.get("qtype") == "structured" else None for r in records]
    )
    groups: dict[str, tuple[ReportSchema, list]] = {}
    for rec, rep in zip(records, reports):
        if rep is None:
            continue
        schema = schema_for_record(rec)
        groups.setdefault(rep["schema"], (schema, []))[1].append(rep)
    return {name: _aggregate(schema, reps) for name, (schema, reps) in groups.items()}


def format_structured(metrics: dict) -> str:
    """Text tables of :func:`structured_metrics` (per field, then each confusion matrix)."""
    parts = []
    for name, m in metrics.items():
        parts.append(
            f"structured answers / 结构化答案 ({name}): {m['n']} predictions, valid {m['valid']} ({pct(m['valid_rate'])})"
        )
        rows = []
        for f, fm in m["fields"].items():
            score = (
                f"accuracy {pct(fm['accuracy'])}" if fm["kind"] == "level" else f"char sim {num(fm['mean_char_sim'])}"
            )
            rows.append([f, f"{m['n'] - m['missing'][f]}/{m['n']}", m["invalid"][f], score])
        parts.append(
            format_table(
                ("field / 字段", "present / 出现", "invalid / 非法", "score / 得分"),
                rows,
                right=[False, True, True, False],
            )
        )
        for f, fm in m["fields"].items():
            if fm["kind"] != "level":
                continue
            cols = fm["labels"] + [INVALID]
            crow = [[ref] + [fm["confusion"][ref][c] for c in cols] for ref in fm["confusion"]]
            parts.append(f"confusion {f} (rows: reference, columns: prediction / 行：参考，列：预测)")
            parts.append(format_table([f"{f}"] + cols, crow))
    return "\n".join(parts)


def add_to_scores(records: list[dict], results: list[dict], metrics: dict) -> None:
    """The ``geovl score`` hook: per-field results on structured records and ``metrics["structured"]``."""
    reports = []
    for rec, res in zip(records, results):
        rep = score_record(rec) if rec.get("qtype") == "structured" else None
        reports.append(rep)
        if rep is not None:
            res["structured"] = rep
    if any(r is not None for r in reports):
        metrics["structured"] = structured_metrics(records, reports)


def annotate_predictions(path: str | os.PathLike) -> int:
    """Add ``"structured"`` (:func:`score_report`) to every structured record of a predictions
    file, in place (``geovl infer --data … --compare-gt``); returns how many were annotated."""
    from ..fileio import iter_jsonl, write_jsonl

    path = Path(path)
    n, out = 0, []
    for _, rec in iter_jsonl(path, objects=True):
        if rec.get("qtype") == "structured":
            rep = score_record(rec)
            if rep is not None:
                rec["structured"] = rep
                n += 1
        out.append(rec)
    write_jsonl(path, out)
    return n
