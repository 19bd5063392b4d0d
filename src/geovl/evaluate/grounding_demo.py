"""The last step of ``make grounding-demo`` (``python -m geovl.evaluate.grounding_demo DIR``).

Reads ``DIR/before.jsonl`` / ``DIR/after.jsonl`` (``geovl eval`` predictions on the synthetic test split),
prints and writes ``DIR/grounding_summary.json``: grounding scores before and after fine-tuning
(mean IoU where referring, P/R/F1@0.5, AP50, unparsed answers) and, on the same scenes and dates, the
building count read from the predicted boxes against the model's direct answer to "how many buildings"
(both against the truth). ``DIR/boxes.png``: test images with reference (green) and predicted (red)
boxes after fine-tuning.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _records(path: Path) -> list[dict]:
    from ..fileio import iter_jsonl

    return [rec for _, rec in iter_jsonl(path)]


def summarize(path: Path) -> dict:
    from .normalize import parse_number
    from .score import score_file

    results, metrics = score_file(path)
    g = metrics["by_qtype"].get("grounding", {})
    recs = {r["id"]: r for r in _records(path)}
    by_key: dict = {}
    for res in results:
        rec = recs[res["id"]]
        m = rec.get("meta") or {}
        key = (m.get("scene"), m.get("date"), m.get("lang"))
        if rec["qtype"] == "grounding":
            by_key.setdefault(key, {})["boxes"] = res["n_pred"] if res["parsed"] else None
            by_key[key]["truth"] = res["n_ref"]
        elif rec["qtype"] == "count":
            by_key.setdefault(key, {})["direct"] = parse_number(rec["prediction"])
    pairs = [v for v in by_key.values() if "boxes" in v and "direct" in v]
    n = len(pairs)
    return {
        "grounding": {
            k: g.get(k)
            for k in (
                "n",
                "unparsed",
                "precision_at_0_5",
                "recall_at_0_5",
                "f1_at_0_5",
                "mean_f1_at_0_5",
                "mean_object_iou",
                "ap50",
                "count_accuracy",
            )
        },
        "mean_matched_iou": _mean([r["mean_matched_iou"] for r in results if r.get("mean_matched_iou") is not None]),
        "count_accuracy_direct": metrics["by_qtype"].get("count", {}).get("accuracy"),
        "same_scenes": {
            "pairs": n,
            "count_from_boxes_correct": sum(1 for v in pairs if v["boxes"] == v["truth"]) / n if n else None,
            "direct_count_correct": sum(1 for v in pairs if v["direct"] == v["truth"]) / n if n else None,
            "boxes_agree_with_direct": sum(1 for v in pairs if v["boxes"] is not None and v["boxes"] == v["direct"]) / n
            if n
            else None,
        },
    }


def _mean(xs):
    return sum(xs) / len(xs) if xs else None


def picture(d: Path, path: Path, n: int = 6) -> None:
    """Up to ``n`` test images with reference and predicted boxes, side by side."""
    import io

    from PIL import Image

    from ..data.io import read_samples
    from .box_draw import draw_boxes
    from .grounding import predicted_boxes

    preds = {r["id"]: r for r in _records(path) if r["qtype"] == "grounding"}
    tiles = []
    for s in read_samples(d / "data" / "test.parquet"):
        r = preds.get(s["id"])
        if r is None or not s["meta"].get("boxes"):
            continue
        png = draw_boxes(s["images"][0], s["meta"]["boxes"], predicted_boxes(r["meta"], r["prediction"]) or [], scale=2)
        tiles.append(Image.open(io.BytesIO(png)))
        if len(tiles) >= n:
            break
    if not tiles:
        return
    w, h = tiles[0].size
    sheet = Image.new("RGB", (w * len(tiles), h), (255, 255, 255))
    for i, t in enumerate(tiles):
        sheet.paste(t, (i * w, 0))
    sheet.save(d / "boxes.png")


def main(argv=None) -> int:
    d = Path((argv or sys.argv[1:] or ["grounding_out"])[0])
    out = {name: summarize(d / f"{name}.jsonl") for name in ("before", "after")}
    (d / "grounding_summary.json").write_text(json.dumps(out, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    picture(d, d / "after.jsonl")
    f = lambda v: "-" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    print(f"{'':28}{'before':>10}{'after':>10}")
    num = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    rows = [
        ("mean IoU per building", lambda s: num(s["grounding"]["mean_object_iou"])),
        ("mean IoU of matched boxes", lambda s: num(s["mean_matched_iou"])),
        ("F1@0.5", lambda s: f(s["grounding"]["f1_at_0_5"])),
        ("precision@0.5", lambda s: f(s["grounding"]["precision_at_0_5"])),
        ("recall@0.5", lambda s: f(s["grounding"]["recall_at_0_5"])),
        ("AP50", lambda s: f(s["grounding"]["ap50"])),
        ("unparsed answers", lambda s: str(s["grounding"]["unparsed"])),
        ("count from boxes correct", lambda s: f(s["same_scenes"]["count_from_boxes_correct"])),
        ("direct count correct", lambda s: f(s["same_scenes"]["direct_count_correct"])),
    ]
    for name, get in rows:
        print(f"{name:28}{get(out['before']):>10}{get(out['after']):>10}")
    print(f"(same scenes: {out['after']['same_scenes']['pairs']} scene/date/language pairs with both questions)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
