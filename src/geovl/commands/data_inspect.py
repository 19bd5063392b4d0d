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
    p.add_argument("--recipe", help="SFT recipe: batch size, precision, gradient checkpointing, what trains (for --gpu-memory)")
    p.add_argument("--gpu-memory", metavar="SIZE", help="e.g. 24GiB: estimate each sample's training memory and flag what would not fit "
                   "(default: the recipe's gpu_memory)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run_lazy("geovl.data.inspect:run"))
