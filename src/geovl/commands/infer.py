"""``geovl infer``: answer a question about images (streamed), an image list, or a dataset."""

from __future__ import annotations

import argparse

from ..cli import run_lazy
from .eval import add_engine_args


def register(sub) -> None:
    p = sub.add_parser(
        "infer",
        help="ask a model about images (answer streamed to the terminal) / 对影像提问",
        description=(
            "Ask a model about one or more images (the answer is streamed as it is generated), about every image "
            "of a list file, or about every sample of a dataset (optionally comparing with the references). "
            "GeoTIFFs are rendered to RGB. 对影像提问：单张/多张影像流式输出，或批量处理影像列表/数据集。"
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_engine_args(p)
    p.set_defaults(max_new_tokens=128)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--image", action="append", metavar="PATH", help="image file (repeat for several images in one question)")
    src.add_argument("--images", metavar="LIST.txt", help="text file with one image path per line (needs --out)")
    src.add_argument("--data", metavar="FILE", help="dataset file (.parquet/.jsonl) (needs --out)")
    p.add_argument("--question", "-q", help="the question (with --image / --images)")
    p.add_argument("--bands", metavar="SPEC", help="with --image: raster bands shown as R,G,B — 1-based numbers (3,2,1) "
                   "or the file's band names in order (blue,green,red,nir); ignored when the model's "
                   "geovl_preprocess.json fixes rgb_bands/band_order (default: the rules of geovl.imagery.render)")
    p.add_argument("--out", help="results file (.jsonl)")
    p.add_argument("--compare-gt", action="store_true", help="with --data: add the reference answer and a correct flag (structured answers: parsed fields and per-field scores)")
    p.add_argument("--limit", type=int, default=None, help="with --data: only the first N samples")
    q = p.add_mutually_exclusive_group()
    q.add_argument("--load-in-4bit", action="store_true", help="4-bit weights (bitsandbytes; CUDA only)")
    q.add_argument("--load-in-8bit", action="store_true", help="8-bit weights (bitsandbytes; CUDA only)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_lazy("geovl.infer:run"))
