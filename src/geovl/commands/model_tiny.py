"""``geovl model tiny``: write a tiny random model of a real Qwen-VL architecture (offline)."""

from __future__ import annotations

import argparse

from geovl.cli import run_lazy
from geovl.models.registry import CLI_NAMES  # a plain table: no heavy imports

FAMILY_CHOICES = tuple(CLI_NAMES)


def register(sub) -> None:
    p = sub.add_parser(
        "tiny",
        help="write a tiny random Qwen-VL model folder (offline) / 生成离线微型模型",
        description=(
            "Write a tiny random model of a real Qwen-VL architecture as a standard Hugging Face folder "
            "(config, safetensors weights, tokenizer, chat template, processor configs) that stock "
            "transformers AutoModelForImageTextToText / AutoProcessor load. Nothing is downloaded. "
            "生成一个真实 Qwen-VL 架构的随机微型模型（标准 Hugging Face 目录，可直接用 transformers 加载）。"
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--family", required=True, help=f"model family: {', '.join(FAMILY_CHOICES)} (or a model_type)")
    p.add_argument("--out", required=True, help="output folder (must be empty or absent unless --force)")
    p.add_argument(
        "--vocab",
        choices=("small", "qwen"),
        default="small",
        help="small: ~800-token BPE trained offline on remote-sensing Q&A; "
        "qwen: the real Qwen vocabulary (needs `pip install --no-deps dashscope==2.0.2`)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed of the weights (same seed → same weights)")
    p.add_argument("--hidden", type=int, default=64, help="LLM width (multiple of 32)")
    p.add_argument("--layers", type=int, default=2, help="LLM decoder layers")
    p.add_argument("--vision-depth", type=int, default=2, help="vision transformer blocks")
    p.add_argument("--min-pixels", type=int, default=None, help="image processor minimum pixels (default: (2·factor)²)")
    p.add_argument(
        "--max-pixels", type=int, default=None, help="image processor maximum pixels (default: (16·factor)²)"
    )
    p.add_argument("--force", action="store_true", help="replace a non-empty output folder")
    p.set_defaults(func=run_lazy("geovl.commands.model_tiny:run"))


def run(args) -> int:
    import json
    import sys

    from geovl.cli import CLIError
    from geovl.models.qwen_vocab import QwenVocabNotFound
    from geovl.models.registry import get_family
    from geovl.models.tiny import META_FILE, TinyModelError, build_tiny

    fam = get_family(args.family.strip().lower())  # UnknownModelType lists the supported families
    try:
        out = build_tiny(
            fam.key,
            args.out,
            vocab=args.vocab,
            seed=args.seed,
            hidden=args.hidden,
            layers=args.layers,
            vision_depth=args.vision_depth,
            min_pixels=args.min_pixels,
            max_pixels=args.max_pixels,
            overwrite=args.force,
        )
    except (TinyModelError, QwenVocabNotFound) as e:
        raise CLIError(str(e)) from e
    meta = json.loads((out / META_FILE).read_text(encoding="utf-8"))
    print(
        f"wrote tiny {fam.display} to {out}: {meta['parameters']:,} parameters, vocab {args.vocab}, "
        f"seed {args.seed}, pixels {meta['min_pixels']}–{meta['max_pixels']} / 已生成微型模型",
        file=sys.stdout,
    )
    return 0
