"""``geovl data inspect``: pre-flight statistics of a dataset file."""

from __future__ import annotations

from ..cli import run_lazy


def register(sub) -> None:
    p = sub.add_parser(
        "inspect",
        help="pre-flight statistics: qtypes, image sizes, visual tokens, sequence lengths, budgets",
        description="Pre-flight statistics of a dataset file (Parquet/JSONL): what the model will see.",
    )
    p.add_argument("file", help="dataset file (.parquet or .jsonl)")
    p.add_argument("--family", help="qwen2-vl | qwen2.5-vl | qwen3-vl (default: from --model, else qwen2.5-vl)")
    p.add_argument("--model", help="model folder: exact sequence lengths with its tokenizer and chat template")
    p.add_argument("--min-pixels", type=int, help="lower pixel bound per image (default: the family's)")
    p.add_argument("--max-pixels", type=int, help="upper pixel bound per image (default: the family's)")
    p.add_argument("--max-tokens", type=int, help="per-sample token budget: report samples over it")
    p.add_argument("--preview", type=int, default=0, metavar="N", help="print N samples with images summarised")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run_lazy("geovl.commands.data_inspect:run"))


def run(args) -> int:
    import json

    from geovl.data.inspect import format_report, inspect_dataset

    report = inspect_dataset(
        args.file,
        family=args.family,
        model=args.model,
        min_pixels=args.min_pixels,
        max_pixels=args.max_pixels,
        budget=args.max_tokens,
        preview=args.preview,
        progress=not args.json,
    )
    if args.json:
        print(json.dumps(report, ensure_ascii=False, indent=2))
    else:
        print(format_report(report))
    return 0
