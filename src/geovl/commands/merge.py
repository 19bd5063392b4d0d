"""``geovl merge --base M --adapter A --out DIR``: fold a LoRA adapter (or validate full weights) into
one model folder that stock transformers / vLLM load."""

from __future__ import annotations

from ..cli import run_lazy


def register(sub) -> None:
    p = sub.add_parser(
        "merge",
        help="merge a LoRA adapter into its base model (for serving / vLLM)",
        description="Load BASE + the LoRA adapter of a training run, check that every adapter tensor is used, "
        "merge LoRA and the fully trained modules (e.g. the merger) into the base weights, and write a folder with "
        "safetensors weights, processor, chat template and geovl_preprocess.json. A full fine-tuning run's "
        "weights are validated against BASE and re-saved. 合并 LoRA 适配器到基座模型。",
    )
    p.add_argument(
        "--base", required=True, metavar="MODEL_DIR", help="the base model folder the adapter was trained on"
    )
    p.add_argument("--adapter", required=True, metavar="RUN_DIR", help="a run's final/ (or checkpoint-N/) folder")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created; must be empty unless --force)")
    p.add_argument(
        "--dtype", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
        help="weight dtype of the merged model (default auto: the base model's dtype)",
    )  # fmt: skip
    p.add_argument("--force", action="store_true", help="replace a non-empty --out folder")
    p.set_defaults(func=run_lazy("geovl.commands.merge:run"))


def run(args) -> int:
    import signal
    import threading

    from geovl.merge import merge

    def terminated(signum, frame):  # SIGTERM unwinds like Ctrl-C: merge() removes its temporary folder
        raise SystemExit(128 + signum)

    previous = (
        signal.signal(signal.SIGTERM, terminated) if threading.current_thread() is threading.main_thread() else None
    )
    try:
        info = merge(args.base, args.adapter, args.out, dtype=args.dtype, overwrite=args.force)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    what = (
        f"{info['lora_tensors']} LoRA + {info['modules_to_save_tensors']} fully trained tensors merged"
        if info["kind"] == "lora"
        else f"{info['tensors']} full fine-tuned tensors validated"
    )
    print(
        f"merged {info['family']} model written to {args.out} ({what}); load it with AutoModelForImageTextToText / vLLM"
    )
    return 0
