"""``geovl model download``: real weights from a hub, for machines that have one."""

from __future__ import annotations

from ..cli import run_lazy


def register(sub) -> None:
    p = sub.add_parser(
        "download",
        help="download real weights (e.g. Qwen/Qwen2.5-VL-3B-Instruct) from Hugging Face or ModelScope",
        description="Download a Qwen-VL model folder from a hub. Fails fast with a clear message when no hub is reachable.",
    )
    p.add_argument("name", help="hub model id, e.g. Qwen/Qwen2.5-VL-3B-Instruct")
    p.add_argument("--hub", choices=["huggingface", "modelscope"], default="huggingface")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--revision", help="branch, tag or commit")
    p.set_defaults(func=run_lazy("geovl.commands.model_download:run"))


def run(args) -> int:
    from geovl.models.download import download

    path = download(args.name, args.out, hub=args.hub, revision=args.revision)
    print(f"downloaded {args.name} from {args.hub} to {path}")
    return 0
