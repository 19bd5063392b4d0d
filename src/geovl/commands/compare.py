"""``geovl compare BEFORE.jsonl AFTER.jsonl``: before/after report of two predictions files."""

from __future__ import annotations

from ..cli import run_lazy


def register(sub) -> None:
    p = sub.add_parser(
        "compare",
        help="compare two predictions files (e.g. base vs fine-tuned) / 对比两次评测结果",
        description="Match the samples of two predictions files by id and report accuracy per qtype (before, "
        "after, delta), the samples that were fixed or broken, and ids found in one file only. Writes "
        "report.md, report.html (self-contained), chart.png and compare.json.",
    )
    p.add_argument("before", help="predictions file of the earlier model (.jsonl)")
    p.add_argument("after", help="predictions file of the later model (.jsonl)")
    p.add_argument("--out", metavar="DIR", help="report folder (default: compare_<before>_vs_<after> next to AFTER)")
    p.add_argument("--names", metavar="A,B", help="labels of the two runs, e.g. base,finetuned (default before,after)")
    p.add_argument("--tolerance", type=float, default=0.02, help="relative tolerance for area/number (default 0.02)")
    p.add_argument("--data", metavar="DATASET", help="the dataset both files predicted (to draw the boxes of changed grounding samples)")
    p.add_argument("--max-rows", type=int, default=200, help="changed samples listed per section in the reports")
    p.set_defaults(func=run_lazy("geovl.evaluate.compare:run"))
