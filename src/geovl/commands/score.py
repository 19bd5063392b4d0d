"""``geovl score PREDS.jsonl``: metrics from a predictions file without regenerating."""

from __future__ import annotations

from ..cli import CLIError, run_lazy


def register(sub) -> None:
    p = sub.add_parser(
        "score",
        help="score a predictions file (from `geovl eval`) without regenerating / 对预测结果重新计分",
        description="Score a predictions JSONL file (id, qtype, question, reference, prediction, ...) with "
        "per-qtype rules: yes/no and counts exact after parsing (English/Chinese), areas and numbers within a "
        "relative tolerance after unit conversion, choices after synonym mapping, open answers exact + "
        "character similarity. Prints a table and writes the metrics as JSON.",
    )
    p.add_argument("preds", help="predictions file (.jsonl) written by `geovl eval`")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON instead of a table")
    p.add_argument("--out", metavar="FILE", help="metrics JSON to write (default: PREDS stem + .metrics.json)")
    p.add_argument(
        "--tolerance", type=float, default=0.02, help="relative tolerance for area/number answers (default 0.02)"
    )
    p.set_defaults(func=run_lazy("geovl.commands.score:run"))


def run(args) -> int:
    import json
    from pathlib import Path

    from geovl.evaluate.score import PredictionsFileError, default_metrics_path, format_metrics, score_file, write_json

    if args.tolerance < 0:
        raise CLIError(f"--tolerance must be >= 0, got {args.tolerance}")
    try:
        _, metrics = score_file(args.preds, args.tolerance)
    except PredictionsFileError as e:
        raise CLIError(str(e)) from e
    out = Path(args.out) if args.out else default_metrics_path(args.preds)
    write_json(metrics, out)
    if args.json:
        print(json.dumps(metrics, ensure_ascii=False, indent=2))
    else:
        print(f"{args.preds}: {metrics['n']} samples, tolerance {args.tolerance:g}")
        print(format_metrics(metrics))
        print(f"\nmetrics → {out}")
    return 0
