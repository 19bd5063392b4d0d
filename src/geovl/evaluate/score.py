"""``geovl score PREDS.jsonl``: metrics from a predictions file, without regenerating anything.

A predictions file (written by ``geovl eval``) is JSONL, one object per sample::

    {"id", "qtype", "question", "reference", "prediction", "source", "lang"?, "meta"?, ...}

``id``, ``qtype``, ``question``, ``reference`` and ``prediction`` are required (a ``null``
prediction counts as an empty, wrong answer); ``lang`` falls back to ``meta["lang"]`` /
``meta["language"]``; ``meta["choices"]`` (list of options) is used for ``choice`` questions.

Metrics (see :func:`summarize`): per qtype ``n``, ``correct``, ``accuracy``, ``unparsed``; for
area/number also mean/median relative error and the share within 10 %; for count the share
within ±1 and the mean absolute error; for open/structured the mean character similarity; for
grounding Acc@0.5 and mean IoU (referring), P/R/F1 at IoU 0.5 and AP50 (all), count accuracy from
boxes (:mod:`geovl.evaluate.grounding`; unreadable boxes score 0 and count as unparsed).
``overall`` is micro-averaged, ``macro_accuracy`` is the mean over qtypes; ``by_lang`` repeats
all of it per language when the file has languages.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from .records import REQUIRED, PredictionsFileError, as_text, read_predictions  # noqa: F401  (re-exported)
from .rules import score_sample
from .table import format_table, num, pct

QTYPE_ORDER = ("yes_no", "count", "number", "area", "choice", "date", "open", "structured", "grounding")
_text = as_text
# The schema of a prediction record and its reader: geovl.evaluate.records.


def record_lang(rec: dict) -> str | None:
    lang = rec.get("lang") or rec["meta"].get("lang") or rec["meta"].get("language")
    return str(lang) if lang else None


def record_choices(rec: dict) -> list[str] | None:
    choices = rec["meta"].get("choices") or rec.get("choices")
    if isinstance(choices, list) and choices:
        return [_text(c) for c in choices]
    return None


def score_record(rec: dict, tolerance: float = 0.02) -> dict:
    """:func:`score_sample` of one record, plus its ``id`` and ``lang``."""
    if rec["qtype"] == "grounding":  # boxes: the reference and the model's frame are in meta
        from .rules import score_grounding

        res = {
            "qtype": "grounding",
            **score_grounding(rec["prediction"], rec["reference"], tolerance, None, rec["meta"]),
        }
    else:
        res = score_sample(rec["qtype"], rec["prediction"], rec["reference"], tolerance, record_choices(rec))
    res["id"] = rec["id"]
    res["lang"] = record_lang(rec)
    return res


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def summarize(results: list[dict]) -> dict:
    """Metrics of one group of results (one qtype, or all of them)."""
    n = len(results)
    correct = sum(1 for r in results if r["correct"])
    out = {"n": n, "correct": correct, "accuracy": correct / n if n else None}
    out["unparsed"] = sum(1 for r in results if not r.get("parsed"))
    if any("rel_err" in r for r in results):
        errs = [r["rel_err"] for r in results if r.get("rel_err") is not None]
        out["n_rel_err"] = len(errs)
        out["mean_rel_err"] = _mean(errs)
        out["median_rel_err"] = statistics.median(errs) if errs else None
        out["within_10pct"] = sum(1 for r in results if r.get("within_10pct")) / n
    if any("within_1" in r for r in results):
        out["within_1"] = sum(1 for r in results if r.get("within_1")) / n
        out["mean_abs_err"] = _mean([r["abs_err"] for r in results if r.get("abs_err") is not None])
    if any("char_sim" in r for r in results):
        out["mean_char_sim"] = sum(r.get("char_sim", 0.0) for r in results) / n
    if any(r.get("qtype") == "grounding" for r in results) and all(r.get("qtype") == "grounding" for r in results):
        from .grounding import summarize_grounding

        out.update(summarize_grounding(results))
    return out


def _order(qtypes) -> list[str]:
    known = [q for q in QTYPE_ORDER if q in qtypes]
    return known + sorted(q for q in qtypes if q not in QTYPE_ORDER)


def group_metrics(results: list[dict]) -> dict:
    """``{"overall": {...micro..., "macro_accuracy"}, "by_qtype": {qtype: summary}}``."""
    by_qtype = {q: summarize([r for r in results if r["qtype"] == q]) for q in _order({r["qtype"] for r in results})}
    overall = summarize(results)
    overall = {k: overall[k] for k in ("n", "correct", "accuracy", "unparsed")}
    overall["macro_accuracy"] = _mean([m["accuracy"] for m in by_qtype.values()])
    overall["n_qtypes"] = len(by_qtype)
    return {"overall": overall, "by_qtype": by_qtype}


def compute_metrics(results: list[dict]) -> dict:
    """Overall + per-qtype metrics, and the same per language when any result has one."""
    out = {"n": len(results), **group_metrics(results), "by_lang": {}}
    langs = {r.get("lang") for r in results}
    if langs - {None}:
        for lang in sorted(langs, key=lambda x: (x is None, x or "")):
            out["by_lang"][lang or "unknown"] = group_metrics([r for r in results if r.get("lang") == lang])
    return out


def score_file(path, tolerance: float = 0.02) -> tuple[list[dict], dict]:
    """(per-sample results, metrics) of a predictions file."""
    records = read_predictions(path)
    results = [score_record(r, tolerance) for r in records]
    metrics = {"file": str(path), "tolerance": tolerance, **compute_metrics(results)}
    # structured answers (qtype=structured): per-field scores, see geovl.evaluate.structured
    from .structured import add_to_scores

    add_to_scores(records, results, metrics)
    return results, metrics


def _details(m: dict) -> str:
    parts = []
    if "mean_rel_err" in m:
        parts.append(f"rel.err mean {num(m['mean_rel_err'])} median {num(m['median_rel_err'])}")
        parts.append(f"≤10%: {pct(m['within_10pct'])}")
    if "within_1" in m:
        parts.append(f"±1: {pct(m['within_1'])}, mean |err| {num(m['mean_abs_err'], 2)}")
    if "mean_char_sim" in m:
        parts.append(f"char sim {num(m['mean_char_sim'])}")
    if "acc_at_0_5" in m:
        parts.append(f"referring Acc@0.5 {pct(m['acc_at_0_5'])}, mean IoU {num(m['mean_iou'])}")
    if "f1_at_0_5" in m:
        parts.append(
            f"all P/R/F1@0.5 {pct(m['precision_at_0_5'])}/{pct(m['recall_at_0_5'])}/{pct(m['f1_at_0_5'])}, "
            f"mean IoU/object {num(m['mean_object_iou'])}, AP50 {pct(m['ap50'])}"
        )
    if "count_accuracy" in m:
        parts.append(f"count from boxes {pct(m['count_accuracy'])}")
    return "; ".join(parts)


HEADERS = ("type/类型", "n/数量", "correct/正确", "acc/准确率", "unparsed/未解析", "details/详情")


def format_metrics(metrics: dict) -> str:
    """The metrics as aligned text tables (per qtype, then per language)."""
    rows = [
        [q, m["n"], m["correct"], pct(m["accuracy"]), m["unparsed"], _details(m)]
        for q, m in metrics["by_qtype"].items()
    ]
    o = metrics["overall"]
    rows.append(["overall/总体 (micro)", o["n"], o["correct"], pct(o["accuracy"]), o["unparsed"], ""])
    rows.append(["macro/宏平均", "", "", pct(o["macro_accuracy"]), "", f"mean of {o['n_qtypes']} qtypes"])
    text = format_table(HEADERS, rows, right=[False, True, True, True, True, False])
    if metrics.get("by_lang"):
        lrows = []
        for lang, g in metrics["by_lang"].items():
            lo = g["overall"]
            per = ", ".join(f"{q} {pct(m['accuracy'])}" for q, m in g["by_qtype"].items())
            lrows.append([lang, lo["n"], lo["correct"], pct(lo["accuracy"]), pct(lo["macro_accuracy"]), per])
        lheaders = ("lang/语言", "n/数量", "correct/正确", "acc/准确率", "macro/宏平均", "by type/各类型")
        text += "\n\n" + format_table(lheaders, lrows, right=[False, True, True, True, True, False])
    if metrics.get("structured"):  # per-field tables of structured answers (geovl.evaluate.structured)
        from .structured import format_structured

        text += "\n\n" + format_structured(metrics["structured"])
    return text


def write_json(obj, path) -> None:
    """``obj`` as JSON to ``path``, whole or not at all (:func:`geovl.fileio.write_json`)."""
    from ..fileio import write_json as _write_json

    _write_json(path, obj)


def default_metrics_path(preds) -> Path:
    p = Path(preds)
    return p.with_name(p.stem + ".metrics.json")
