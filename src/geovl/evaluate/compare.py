"""``geovl compare BEFORE.jsonl AFTER.jsonl``: what fine-tuning changed, per qtype and per sample.

Samples are matched by ``id``; the tables cover the matched samples only, and ids found in one
file only are listed (never silently dropped). Each side is scored against its own reference;
ids whose qtype or reference differ between the files are listed too.

Outputs in ``--out DIR``: ``report.md``, ``report.html`` (self-contained, chart embedded),
``chart.png`` and ``compare.json`` (see :mod:`.compare_report`).
"""

from __future__ import annotations

from pathlib import Path

from .score import (
    PredictionsFileError,
    _order,
    group_metrics,
    read_predictions,
    score_record,
)
from .significance import BOOTSTRAP_REPS, BOOTSTRAP_SEED, CONFIDENCE, bootstrap_delta_ci, mcnemar_exact, verdict
from .table import format_table, pct


def _delta_pp(before: float | None, after: float | None) -> str:
    if before is None or after is None:
        return "-"
    return f"{100 * (after - before):+.1f} pp"


def _ci_text(ci: list[float]) -> str:
    return f"[{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}] pp"


def _p_text(p: float) -> str:
    return "1" if p >= 0.9995 else f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


VERDICT_TEXT = {"gain": "gain/提升", "loss": "loss/下降", "no measurable change": "no measurable change/无可测变化"}


def _row(qtype: str, pairs: list[tuple[dict, dict]]) -> dict:
    n = len(pairs)
    bc = sum(1 for b, _ in pairs if b["correct"])
    ac = sum(1 for _, a in pairs if a["correct"])
    fixed = sum(1 for b, a in pairs if a["correct"] and not b["correct"])
    broken = sum(1 for b, a in pairs if b["correct"] and not a["correct"])
    ci = list(bootstrap_delta_ci(fixed, broken, n))
    return {
        "qtype": qtype,
        "n": n,
        "before_correct": bc,
        "after_correct": ac,
        "before_acc": bc / n,
        "after_acc": ac / n,
        "delta": (ac - bc) / n,
        "fixed": fixed,
        "broken": broken,
        "mcnemar_p": mcnemar_exact(fixed, broken),
        "delta_ci95": ci,
        "verdict": verdict(ci),
    }


def compare_files(before, after, tolerance: float = 0.02, names: tuple[str, str] = ("before", "after")) -> dict:
    """The whole comparison as a JSON-serialisable dict (what ``compare.json`` holds)."""
    recs_b, recs_a = read_predictions(before), read_predictions(after)
    idx_a = {r["id"]: r for r in recs_a}
    idx_b = {r["id"]: r for r in recs_b}
    common = [r["id"] for r in recs_b if r["id"] in idx_a]
    if not common:
        raise PredictionsFileError(f"{before} and {after} have no sample ids in common")
    pairs: dict[str, tuple[dict, dict]] = {}
    changes, mismatches = [], []
    for rid in common:
        rb, ra = idx_b[rid], idx_a[rid]
        sb, sa = score_record(rb, tolerance), score_record(ra, tolerance)
        pairs[rid] = (sb, sa)
        if rb["qtype"] != ra["qtype"] or rb["reference"] != ra["reference"]:
            mismatches.append(
                {"id": rid, "qtype": [rb["qtype"], ra["qtype"]], "reference": [rb["reference"], ra["reference"]]}
            )
        if sb["correct"] != sa["correct"]:
            changes.append(
                {
                    "id": rid,
                    "qtype": rb["qtype"],
                    "change": "fixed" if sa["correct"] else "broken",
                    "question": rb["question"],
                    "reference": rb["reference"],
                    "before": rb["prediction"],
                    "after": ra["prediction"],
                    "lang": sb.get("lang"),
                }
            )
    by_type: dict[str, list] = {}
    for rid in common:
        by_type.setdefault(idx_b[rid]["qtype"], []).append(pairs[rid])
    rows = [_row(q, by_type[q]) for q in _order(by_type)]
    overall = _row("overall", list(pairs.values()))
    g_pairs = [
        pairs[rid] for rid in common if idx_b[rid]["qtype"] == "grounding" and idx_a[rid]["qtype"] == "grounding"
    ]
    macro_b = sum(r["before_acc"] for r in rows) / len(rows)
    macro_a = sum(r["after_acc"] for r in rows) / len(rows)
    result = {
        "names": list(names),
        "files": {"before": str(before), "after": str(after)},
        "tolerance": tolerance,
        "n_before": len(recs_b),
        "n_after": len(recs_a),
        "n_matched": len(common),
        "only_in_before": [r["id"] for r in recs_b if r["id"] not in idx_a],
        "only_in_after": [r["id"] for r in recs_a if r["id"] not in idx_b],
        "mismatched": mismatches,
        "by_qtype": rows,
        "overall": overall,
        "macro": {"before_acc": macro_b, "after_acc": macro_a, "delta": macro_a - macro_b},
        "significance": {
            "test": "exact McNemar (two-sided binomial test of fixed vs broken discordant pairs, p = 1/2)",
            "interval": f"paired percentile bootstrap of the accuracy change, {CONFIDENCE:.0%}, "
            f"{BOOTSTRAP_REPS} resamples, seed {BOOTSTRAP_SEED}",
            "verdict": "gain / loss only where the interval excludes 0, else 'no measurable change'",
        },
        "fixed": [c for c in changes if c["change"] == "fixed"],
        "broken": [c for c in changes if c["change"] == "broken"],
        "metrics": {
            "before": group_metrics([s for s, _ in pairs.values()]),
            "after": group_metrics([s for _, s in pairs.values()]),
        },
    }
    if g_pairs:  # per-sample paired tests of the grounding metrics (moved under "grounding" by add_grounding)
        from .compare_boxes import paired_tests

        result["grounding_tests"] = paired_tests(g_pairs)
    return result


def table_rows(result: dict) -> tuple[list[str], list[list]]:
    """(headers, rows) of the per-qtype table, shared by the terminal and the reports."""
    nb, na = result["names"]
    headers = ["type/类型", "n/数量", f"{nb} acc", f"{na} acc", "Δ/变化", "fixed/修正", "broken/退步",
               "McNemar p", "95% CI Δ/置信区间", "verdict/结论"]  # fmt: skip

    def cells(label, r):
        return [label, r["n"], pct(r["before_acc"]), pct(r["after_acc"]), _delta_pp(r["before_acc"], r["after_acc"]),
                r["fixed"], r["broken"], _p_text(r["mcnemar_p"]), _ci_text(r["delta_ci95"]), VERDICT_TEXT[r["verdict"]]]  # fmt: skip

    rows = [cells(r["qtype"], r) for r in result["by_qtype"]]
    o, m = result["overall"], result["macro"]
    rows.append(cells("overall/总体 (micro)", o))
    rows.append(["macro/宏平均", "", pct(m["before_acc"]), pct(m["after_acc"]),
                 _delta_pp(m["before_acc"], m["after_acc"]), "", "", "", "", ""])  # fmt: skip
    return headers, rows


def format_comparison(result: dict) -> str:
    headers, rows = table_rows(result)
    lines = [format_table(headers, rows)]
    for key, label in (("only_in_before", result["names"][0]), ("only_in_after", result["names"][1])):
        ids = result[key]
        if ids:
            shown = ", ".join(ids[:10]) + (" …" if len(ids) > 10 else "")
            lines.append(f"{len(ids)} id(s) only in {label} / 仅在{label}中: {shown}")
    if result["mismatched"]:
        lines.append(f"{len(result['mismatched'])} id(s) with different qtype/reference in the two files")
    if result.get("grounding", {}).get("tests"):
        from .compare_boxes import test_rows

        lines += ["", "Grounding / 目标定位 (per-sample paired success):", format_table(*test_rows(result))]
    sig = result["significance"]
    lines.append(f"McNemar p: {sig['test']}; CI: {sig['interval']}; {sig['verdict']}")
    return "\n".join(lines)


def parse_names(text: str | None) -> tuple[str, str]:
    if not text:
        return ("before", "after")
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"--names wants two comma-separated names like 'base,finetuned', got {text!r}")
    return parts[0], parts[1]


def default_out_dir(before, after) -> Path:
    b, a = Path(before), Path(after)
    return a.parent / f"compare_{b.stem}_vs_{a.stem}"
