"""``geovl compare BEFORE.jsonl AFTER.jsonl``: before/after report of two predictions files."""

from __future__ import annotations

from ..cli import CLIError, run_lazy


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
    p.add_argument(
        "--data",
        metavar="DATASET",
        help="the dataset both files predicted (to draw the boxes of changed grounding samples)",
    )
    p.add_argument("--max-rows", type=int, default=200, help="changed samples listed per section in the reports")
    p.set_defaults(func=run_lazy("geovl.commands.compare:run"))


def run(args) -> int:
    from pathlib import Path

    from geovl.evaluate.compare import compare_files, default_out_dir, format_comparison, parse_names
    from geovl.evaluate.compare_boxes import add_grounding  # box metrics and pictures of changed grounding samples
    from geovl.evaluate.compare_report import write_report
    from geovl.evaluate.score import PredictionsFileError, write_json

    if args.tolerance < 0:
        raise CLIError(f"--tolerance must be >= 0, got {args.tolerance}")
    try:
        names = parse_names(args.names)
        result = compare_files(args.before, args.after, args.tolerance, names)
    except (PredictionsFileError, ValueError) as e:
        raise CLIError(str(e)) from e
    out = Path(args.out) if args.out else default_out_dir(args.before, args.after)
    add_grounding(result, args.before, args.after, getattr(args, "data", None), out)
    paths = write_report(result, out, max_rows=args.max_rows)
    write_json(result, out / "compare.json")
    print(f"{result['n_matched']} matched samples ({args.before} → {args.after})")
    print(format_comparison(result))
    print(f"\nreport: {paths['html']}  (also {paths['md'].name}, {paths['png'].name}, compare.json in {out})")
    return 0
