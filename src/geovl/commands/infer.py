"""``geovl infer``: answer a question about images (streamed), an image list, or a dataset."""

from __future__ import annotations

import argparse

from ..cli import CLIError, run_lazy
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
    src.add_argument(
        "--image", action="append", metavar="PATH", help="image file (repeat for several images in one question)"
    )
    p.add_argument(
        "--video",
        action="append",
        metavar="PATH",
        help="video file (MP4/WebM/…; repeatable; with or without --image): sampled with the model's video settings / 视频文件",
    )
    src.add_argument("--images", metavar="LIST.txt", help="text file with one image path per line (needs --out)")
    src.add_argument("--data", metavar="FILE", help="dataset file (.parquet/.jsonl) (needs --out)")
    p.add_argument("--question", "-q", help="the question (with --image / --images)")
    p.add_argument(
        "--bands",
        metavar="SPEC",
        help="with --image: raster bands shown as R,G,B — 1-based numbers (3,2,1) "
        "or the file's band names in order (blue,green,red,nir); ignored when the model's "
        "geovl_preprocess.json fixes rgb_bands/band_order (default: the rules of geovl.imagery.render)",
    )
    p.add_argument("--out", help="results file (.jsonl)")
    p.add_argument(
        "--compare-gt",
        action="store_true",
        help="with --data: add the reference answer and a correct flag (structured answers: parsed fields and per-field scores)",
    )
    p.add_argument("--limit", type=int, default=None, help="with --data: only the first N samples")
    q = p.add_mutually_exclusive_group()
    q.add_argument("--load-in-4bit", action="store_true", help="4-bit weights (bitsandbytes; CUDA only)")
    q.add_argument("--load-in-8bit", action="store_true", help="8-bit weights (bitsandbytes; CUDA only)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_lazy("geovl.commands.infer:run"))


def run(args) -> int:
    import json
    from pathlib import Path

    from geovl.imagery.decode import ImageError
    from geovl.infer import CUBE_SUFFIXES, build_request, infer_list, load_for_model, request_image, stream_answer
    from geovl.inference import EngineError
    from geovl.log import get_logger

    from .eval import local_preprocess, open_engine_from_args, params_from_args, print_summary

    if args.images is None and args.data is None and not args.image and not args.video:
        raise CLIError("give --image PATH / --video PATH (repeatable), --images LIST.txt or --data FILE")
    if args.video and (args.images or args.data):
        raise CLIError(
            "--video goes with --image (one question), not with --images / --data (datasets carry their videos)"
        )
    if (args.image or args.images or args.video) and not args.question:
        raise CLIError("--question is required with --image / --video / --images")
    for v in args.video or []:
        if not Path(v).is_file():
            raise CLIError(f"{v}: no such file / 文件不存在")
    if (args.images or args.data) and not args.out:
        raise CLIError("--out results.jsonl is required with --images / --data")
    if args.compare_gt and not args.data:
        raise CLIError("--compare-gt needs --data (a dataset with reference answers)")
    quant = "4bit" if args.load_in_4bit else "8bit" if args.load_in_8bit else "none"
    if quant != "none" and args.api:
        raise CLIError("--load-in-4bit/--load-in-8bit apply to local models, not --api")
    params = params_from_args(args)
    if (
        args.image
    ):  # read the images before loading the model: a typo fails fast (cubes: checked once the model is known)
        for p in args.image:
            if Path(p).suffix.lower() in CUBE_SUFFIXES:
                if not Path(p).is_file():
                    raise CLIError(f"{p}: no such file / 文件不存在")
            else:
                try:
                    loaded = load_for_model(p, local_preprocess(args), getattr(args, "bands", None))
                except ImageError as e:
                    raise CLIError(f"{p}: {e} / 影像无法读取") from None
                if "band_order" in loaded.meta:  # rasters: say which bands the model is shown
                    get_logger("geovl.infer").info(f"[波段 bands] {p}: {loaded.meta['band_order']}")
    engine = open_engine_from_args(args, quantization=quant)
    try:
        if args.image or args.video:
            # the engine renders raw TIFFs with the model's bands/stretch; a spectral model takes the cubes;
            # videos are sampled by the engine with the model's video settings
            images = [request_image(p, engine, getattr(args, "bands", None)) for p in args.image or []]
            request = build_request(images, args.question, [Path(v) for v in args.video or []])
            answer = stream_answer(engine, request, params)
            if args.out:
                Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                rec = {"images": list(args.image or []), "question": args.question, "prediction": answer}
                if args.video:
                    rec["videos"] = list(args.video)
                Path(args.out).write_text(json.dumps(rec, ensure_ascii=False) + "\n", encoding="utf-8")
        elif args.images:
            c = infer_list(engine, args.images, args.question, args.out, params, progress=not args.no_progress)
            msg = f"answered {c['written']} of {c['read']} images → {c['out']}"
            if c["rejected"]:
                msg += f"; {c['rejected']} unreadable (see the .rejects.jsonl)"
            print(msg + " / 已完成推理")
        else:
            from geovl.evaluate.generate import run_predictions

            counts = run_predictions(
                engine,
                args.data,
                args.out,
                params,
                limit=args.limit,
                compare_gt=args.compare_gt,
                progress=not args.no_progress,
            )
            if args.compare_gt:  # structured answers: parsed fields and per-field scores per record
                from geovl.evaluate.structured import annotate_predictions

                annotate_predictions(args.out)
            print_summary(counts)
    except EngineError as e:
        raise CLIError(str(e)) from e
    return 0
