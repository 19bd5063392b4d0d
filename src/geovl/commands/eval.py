"""``geovl eval``: predictions for every sample of a dataset file (scored by ``geovl score``)."""

from __future__ import annotations

import argparse

from ..cli import run_lazy


def add_engine_args(p: argparse.ArgumentParser) -> None:
    """The options that choose an inference engine (shared with ``geovl infer``)."""
    p.add_argument(
        "--model", help="model folder (or a LoRA run's final/ adapter folder); with --api: the served model name"
    )
    p.add_argument("--adapter", help="peft adapter folder (e.g. OUT/final of `geovl train sft`)")
    p.add_argument(
        "--api", metavar="URL", help="OpenAI-compatible server instead of a local model, e.g. http://localhost:8000/v1"
    )
    p.add_argument("--api-key", help="API key for --api (default: $OPENAI_API_KEY)")
    p.add_argument(
        "--api-retries", type=int, default=2, help="--api: retries of a request that got 429/5xx or no connection"
    )
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (local models)")
    p.add_argument("--batch-size", type=int, default=8, help="requests per batch (local) / concurrent requests (--api)")
    p.add_argument("--max-new-tokens", type=int, default=32, help="answer length limit in tokens")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (deterministic)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling (with --temperature > 0)")
    p.add_argument("--seed", type=int, default=None, help="sampling seed (with --temperature > 0)")


def register(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="predict answers for a dataset file (JSONL records for `geovl score`) / 批量评测预测",
        description=(
            "Run a model over a dataset file: the prompt is each conversation up to its last assistant turn, the "
            "reference is that turn. Writes JSONL records {id, qtype, question, reference, prediction, source, lang, "
            "meta} in dataset order. 对数据集逐条生成预测，输出 JSONL。"
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_engine_args(p)
    p.add_argument("--data", required=True, help="dataset file (.parquet or .jsonl)")
    p.add_argument("--out", required=True, help="predictions file (.jsonl)")
    p.add_argument("--limit", type=int, default=None, help="only the first N samples")
    p.add_argument("--resume", action="store_true", help="keep the records already in --out and skip their ids")
    p.add_argument(
        "--forced-choice",
        action="store_true",
        help="answer yes/no and choice questions by the candidate with the highest log-probability (local models); "
        "shows what an untrained model prefers (its free generation is junk, scoring 0 %% rather than chance)",
    )
    p.add_argument(
        "--dialogue",
        action="store_true",
        help="multi-turn mode (MMDU-style): answer every turn of each dialogue with the model's own earlier answers in "
        "the history; one record per dialogue {id, source, turns: [{question, reference, prediction, n_images}], meta} "
        "for `geovl judge` / 多轮对话评测",
    )
    p.add_argument(
        "--spectral-root",
        metavar="DIR",
        help="models with a spectral projector: folder the samples' meta.cube paths "
        "are relative to (default: the dataset file's folder)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_lazy("geovl.commands.eval:run"))


def open_engine_from_args(args, quantization: str = "none"):
    import os

    from geovl.cli import CLIError
    from geovl.inference import EngineError, open_engine

    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be >= 1, got {args.batch_size}")
    try:
        return open_engine(
            model=args.model,
            adapter=args.adapter,
            api=args.api,
            api_key=args.api_key or os.environ.get("OPENAI_API_KEY"),
            batch_size=args.batch_size,
            device=args.device,
            quantization=quantization,
            api_retries=getattr(args, "api_retries", 2),
        )
    except EngineError as e:
        raise CLIError(str(e)) from e


def params_from_args(args):
    from geovl.cli import CLIError
    from geovl.inference import EngineError, GenerationParams

    try:
        return GenerationParams(
            max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed
        )
    except EngineError as e:
        raise CLIError(str(e)) from e


def print_summary(counts: dict) -> None:
    """Counts, then the score table when geovl.evaluate.score is available."""
    import sys

    from geovl.evaluate.generate import print_scores

    eng = counts["engine"]
    line = (
        f"predicted {counts['predicted']} of {counts['read']} samples"
        + (f", skipped {counts['skipped']} already in {counts['out']}" if counts["skipped"] else "")
        + (f", rejected {counts['rejected']} (see the .rejects.jsonl)" if counts["rejected"] else "")
        + f" → {counts['out']} / 已生成预测"
    )
    print(line)
    if counts["by_qtype"]:
        print("by qtype: " + ", ".join(f"{k} {v}" for k, v in counts["by_qtype"].items()))
    if counts.get("correct") is not None and counts["predicted"]:
        print(
            f"correct: {counts['correct']} / {counts['predicted']} ({100 * counts['correct'] / counts['predicted']:.1f} %)"
        )
    if eng.get("forward_calls") and eng.get("samples"):
        print(
            f"LLM forward calls: {eng['forward_calls']} ({eng['forward_calls'] / eng['samples']:.2f} per sample), generated tokens: {eng['generated_tokens']}"
        )
    sys.stdout.flush()
    print_scores(counts["out"])


def run(args) -> int:
    from geovl.cli import CLIError
    from geovl.evaluate.generate import run_predictions
    from geovl.inference import EngineError

    if args.limit is not None and args.limit < 0:
        raise CLIError(f"--limit must be >= 0, got {args.limit}")
    params = params_from_args(args)
    if getattr(args, "dialogue", False):
        return run_dialogue_mode(args, params)
    engine = open_engine_from_args(args)
    try:
        counts = run_predictions(
            engine,
            args.data,
            args.out,
            params,
            limit=args.limit,
            resume=args.resume,
            progress=not args.no_progress,
            forced_choice=args.forced_choice,
            spectral_root=args.spectral_root,
        )
    except EngineError as e:
        raise CLIError(str(e)) from e
    print_summary(counts)
    return 0


def run_dialogue_mode(args, params) -> int:
    """``geovl eval --dialogue``: :func:`geovl.evaluate.dialogue.run_dialogues`."""
    from geovl.cli import CLIError
    from geovl.evaluate.dialogue import print_dialogue_summary, run_dialogues
    from geovl.inference import EngineError

    if args.forced_choice:
        raise CLIError("--forced-choice and --dialogue cannot be combined (dialogue answers are free text)")
    engine = open_engine_from_args(args)
    try:
        counts = run_dialogues(
            engine, args.data, args.out, params, limit=args.limit, resume=args.resume, progress=not args.no_progress
        )
    except EngineError as e:
        raise CLIError(str(e)) from e
    print_dialogue_summary(counts)
    return 0


def local_preprocess(args):
    """The preprocessing config a local model will use (None for ``--api`` or when absent), read
    before the model loads so inputs are rendered and checked first — the engine's own rule
    (:func:`geovl.inference.adapter.preprocess_for`)."""
    from pathlib import Path

    from geovl.cli import CLIError
    from geovl.inference.adapter import preprocess_for, resolve_folders

    model = getattr(args, "model", None)
    if getattr(args, "api", None) or not model or not Path(model).is_dir():
        return None
    try:
        return preprocess_for(*resolve_folders(model, getattr(args, "adapter", None)))
    except ValueError as e:
        if "preprocessing" in str(e):
            raise CLIError(str(e)) from None
        return None  # a broken folder: the engine names the problem when it loads
    except Exception:  # noqa: BLE001
        return None
