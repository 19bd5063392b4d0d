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
    p.add_argument(
        "--max-tokens",
        type=int,
        help="per-sample token budget: samples over it are counted — video samples subsampled to fewer frames "
        "when that fits, else dropped whole",
    )
    p.add_argument("--video-fps", type=float, help="video sampling rate (default: the model's video settings, else 2)")
    p.add_argument("--video-max-frames", type=int, help="frames per video at most (default: the model's, else 16)")
    p.add_argument("--preview", type=int, default=0, metavar="N", help="print N samples with images summarised")
    p.add_argument(
        "--recipe", help="SFT recipe: batch size, precision, gradient checkpointing, what trains (for --gpu-memory)"
    )
    p.add_argument(
        "--gpu-memory",
        metavar="SIZE",
        help="e.g. 24GiB: estimate each sample's training memory and flag what would not fit "
        "(default: the recipe's gpu_memory)",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run_lazy("geovl.commands.data_inspect:run"))


def run(args) -> int:
    import json

    from geovl.data.inspect import format_report, inspect_dataset
    from geovl.models.memory import parse_size, plan_from

    plan, gpu = None, getattr(args, "gpu_memory", None)
    if getattr(args, "recipe", None):  # the memory guard with the recipe's batch size, precision and checkpointing
        from geovl.train.recipe import SFTRecipe, load_recipe

        over = [f"train_data={args.file}"] + ([f"model={args.model}"] if args.model else [])
        recipe = load_recipe(args.recipe, over, SFTRecipe)
        plan, gpu = plan_from(recipe), gpu or recipe.gpu_memory
        args.model = args.model or recipe.model
        # the pixel bounds training will use (options given here still win)
        args.min_pixels = args.min_pixels if args.min_pixels is not None else recipe.min_pixels
        args.max_pixels = args.max_pixels if args.max_pixels is not None else recipe.max_pixels
    report = inspect_dataset(
        args.file,
        family=args.family,
        model=args.model,
        min_pixels=args.min_pixels,
        max_pixels=args.max_pixels,
        budget=args.max_tokens,
        preview=args.preview,
        progress=not args.json,
        gpu_memory=parse_size(gpu) if gpu else None,
        plan=plan,
        video={"fps": getattr(args, "video_fps", None), "max_frames": getattr(args, "video_max_frames", None)},
    )
    if args.json:
        print(json.dumps(report, ensure_ascii=False, indent=2))
    else:
        print(format_report(report))
    return 0
