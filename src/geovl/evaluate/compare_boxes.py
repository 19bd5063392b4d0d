"""Grounding in ``geovl compare``: box metrics before/after and the boxes of changed samples drawn.

:func:`add_grounding` adds ``result["grounding"]`` when the files hold qtype ``grounding`` samples:
``metrics`` (Acc@0.5 and mean IoU for referring questions, P/R/F1@0.5 and AP50 for "every X",
count accuracy from boxes, unparsed answers — for both runs, from :mod:`.grounding`) and, given the
dataset (``--data``, to read the images), ``images``: one PNG per changed grounding sample (at most
``max_images``, fixed first) with the reference boxes in green and each run's boxes in red, written to
``OUT/boxes/`` and embedded in ``report.html`` by :func:`html_section`.

``tests`` (from :func:`paired_tests`, computed by ``compare_files`` on the matched pairs) gives the
grounding metrics the same uncertainty as the per-qtype table, on a per-sample paired success:
Acc@0.5 hit (referring questions), every box matched at IoU 0.5 with nothing extra ("every X"
questions: the sample's F1@0.5 is 1) and the count from boxes — each with its fixed/broken counts,
exact McNemar p, paired bootstrap interval of the change and verdict (:mod:`.significance`). A pair
counts only where both runs scored the sample in the same mode.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

KEYS = [
    ("acc_at_0_5", "Acc@0.5 (referring)", True),
    ("mean_iou", "mean IoU (referring)", False),
    ("precision_at_0_5", "precision@0.5", True),
    ("recall_at_0_5", "recall@0.5", True),
    ("f1_at_0_5", "F1@0.5", True),
    ("mean_object_iou", "mean IoU per object", False),
    ("ap50", "AP50", True),
    ("count_accuracy", "count from boxes", True),
    ("unparsed", "unparsed answers / 未解析", False),
]


# (key, label, mode or None for every grounding sample, the per-sample success field)
TESTS = [
    ("acc_at_0_5", "Acc@0.5 (referring)", "referring", "correct"),
    ("all_matched_at_0_5", "all boxes matched @0.5 / 全部框匹配", "all", "correct"),
    ("count_from_boxes", "count from boxes / 框计数", None, "count_correct"),
]


def paired_tests(pairs: list[tuple[dict, dict]]) -> list[dict]:
    """Uncertainty rows of the grounding metrics from (before, after) per-sample grounding scores."""
    from .compare import _row

    out = []
    for key, label, mode, field in TESTS:
        sel = [
            ({"correct": bool(b.get(field))}, {"correct": bool(a.get(field))})
            for b, a in pairs
            if b.get("mode") == a.get("mode") and (mode is None or b.get("mode") == mode)
        ]
        if sel:
            out.append(_row(key, sel) | {"label": label})
    return out


def test_rows(result: dict) -> tuple[list[str], list[list]]:
    """(headers, rows) of the grounding uncertainty table (same columns as the per-qtype table)."""
    from .compare import VERDICT_TEXT, _ci_text, _delta_pp, _p_text, table_rows
    from .table import pct

    headers, _ = table_rows(result)

    rows = [[r["label"], r["n"], pct(r["before_acc"]), pct(r["after_acc"]), _delta_pp(r["before_acc"], r["after_acc"]),
             r["fixed"], r["broken"], _p_text(r["mcnemar_p"]), _ci_text(r["delta_ci95"]), VERDICT_TEXT[r["verdict"]]]
            for r in result.get("grounding", {}).get("tests", [])]  # fmt: skip
    return ["metric/指标"] + headers[1:], rows


def _metrics(result: dict) -> dict | None:
    m = result.get("metrics") or {}
    b = (m.get("before") or {}).get("by_qtype", {}).get("grounding")
    a = (m.get("after") or {}).get("by_qtype", {}).get("grounding")
    return {"before": b, "after": a} if b and a else None


def add_grounding(result: dict, before, after, data=None, out_dir=None, max_images: int = 12) -> None:
    """Set ``result["grounding"]`` (see the module docstring); nothing when there are no grounding samples."""
    tests = result.pop("grounding_tests", [])
    g = _metrics(result)
    if g is None:
        return
    result["grounding"] = {"metrics": g, "tests": tests, "images": []}
    changed = [c for c in result["fixed"] + result["broken"] if c["qtype"] == "grounding"][:max_images]
    if not data or not changed or out_dir is None:
        return
    from ..data.io import read_samples
    from .box_draw import draw_boxes
    from .grounding import predicted_boxes, reference_boxes
    from .score import read_predictions

    recs = {
        "before": {r["id"]: r for r in read_predictions(before)},
        "after": {r["id"]: r for r in read_predictions(after)},
    }
    want = {c["id"]: c for c in changed}
    folder = Path(out_dir) / "boxes"
    folder.mkdir(parents=True, exist_ok=True)
    for s in read_samples(data):
        c = want.pop(s["id"], None)
        if c is None:
            continue
        rb, ra = recs["before"][s["id"]], recs["after"][s["id"]]
        ref = reference_boxes(ra["meta"], ra["reference"]) or []
        k = min((b.get("image", 0) for b in ref), default=len(s["images"]) - 1) if s["images"] else None
        if k is None:
            continue
        files = {}
        for side, rec in (("before", rb), ("after", ra)):
            png = draw_boxes(s["images"][k], ref, predicted_boxes(rec["meta"], rec["prediction"]) or [], scale=2)
            path = folder / f"{_safe(s['id'])}.{side}.png"
            path.write_bytes(png)
            files[side] = str(path)
        result["grounding"]["images"].append({"id": s["id"], "change": c["change"], "files": files})
        if not want:
            break


def _safe(s: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in s)[:120]


def _fmt(v, is_pct: bool) -> str:
    if v is None:
        return "-"
    return f"{100 * v:.1f}%" if is_pct else (str(v) if isinstance(v, int) else f"{v:.3f}")


def rows(result: dict) -> list[list[str]]:
    g = result["grounding"]["metrics"]
    return [
        [label, _fmt(g["before"].get(k), p), _fmt(g["after"].get(k), p)]
        for k, label, p in KEYS
        if g["before"].get(k) is not None or g["after"].get(k) is not None
    ]


def md_section(result: dict) -> list[str]:
    if "grounding" not in result:
        return []
    nb, na = result["names"]
    out = ["", "## Grounding / 目标定位", "", f"| metric | {nb} | {na} |", "|---|---:|---:|"]
    out += [f"| {a} | {b} | {c} |" for a, b, c in rows(result)]
    h, r = test_rows(result)
    if r:
        out += [
            "",
            "Per-sample paired success, exact McNemar and bootstrap interval / 逐样本配对显著性:",
            "",
            "| " + " | ".join(h) + " |",
            "|---" + "|---:" * (len(h) - 2) + "|---|",
        ]
        out += ["| " + " | ".join(str(c) for c in row) + " |" for row in r]
    if result["grounding"]["images"]:
        out += [
            "",
            f"Boxes of changed samples (green reference, red prediction): {len(result['grounding']['images'])} "
            "pictures in boxes/ and in report.html.",
        ]
    return out


def html_section(result: dict) -> list[str]:
    if "grounding" not in result:
        return []
    nb, na = result["names"]
    parts = [
        "<h2>Grounding / 目标定位</h2>",
        f"<table><thead><tr><th>metric</th><th>{html.escape(nb)}</th><th>{html.escape(na)}</th></tr></thead><tbody>",
    ]
    parts += [
        f'<tr><td>{html.escape(a)}</td><td class="n">{b}</td><td class="n">{c}</td></tr>' for a, b, c in rows(result)
    ]
    parts.append("</tbody></table>")
    h, r = test_rows(result)
    if r:
        from .compare_report import _html_table

        parts.append(
            '<p class="muted">Per-sample paired success, exact McNemar and bootstrap interval / 逐样本配对显著性</p>'
        )
        parts.append(_html_table(h, r, numeric_from=1))
    imgs = result["grounding"]["images"]
    if imgs:
        parts.append(
            '<p class="muted">Changed samples: reference boxes green, predicted red / 变化样本：绿色为参考框，红色为预测框</p>'
        )
        for it in imgs:
            cells = []
            for side, name in (("before", nb), ("after", na)):
                b64 = base64.b64encode(Path(it["files"][side]).read_bytes()).decode("ascii")
                cells.append(
                    f'<figure style="display:inline-block;margin:.3em"><img alt="{html.escape(name)}" '
                    f'src="data:image/png;base64,{b64}"><figcaption>{html.escape(name)}</figcaption></figure>'
                )
            parts.append(f"<div><b>{html.escape(it['id'])}</b> ({html.escape(it['change'])})<br>{''.join(cells)}</div>")
    return parts
