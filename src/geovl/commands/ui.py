"""``geovl ui``: the bilingual web app (Gradio) for county land-use Q&A."""

from __future__ import annotations

import argparse

from ..cli import CLIError, run_lazy
from .serve import add_model_args


def register(sub) -> None:
    p = sub.add_parser(
        "ui",
        help="web app for image Q&A (Chinese/English) / 启动网页问答界面",
        description=(
            "A Gradio web app: upload images or videos, ask questions (quick-question buttons), streamed answers, multi-turn "
            "chat that remembers earlier images. GeoTIFFs (one date, or before/after) are measured (areas per class in "
            "m², km², 公顷, 亩, change matrix) and answered with the measured figures in the prompt; a button maps "
            "flagged tiles. A time-series card takes several dated GeoTIFFs (dates typed, or read from file names or tags) and asks about them in date order. Runs a local model (--model) or talks to an OpenAI-compatible server (--api). Binds "
            "127.0.0.1; --share is off unless asked. 县域国土空间智能问答网页。"
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_model_args(p, required=False)
    p.add_argument(
        "--api", metavar="URL", help="OpenAI-compatible server instead of a local model, e.g. http://localhost:8000/v1"
    )
    p.add_argument("--api-key", help="API key for --api (default: $OPENAI_API_KEY)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--lang", choices=["zh", "en"], default="zh", help="initial language (switchable in the page)")
    p.add_argument(
        "--share", action="store_true", help="create a public gradio.live link (needs internet; off by default)"
    )
    p.add_argument("--max-new-tokens", type=int, default=256, help="initial value of the answer-length slider")
    p.add_argument("--max-upload-bytes", type=int, default=20 * 1024 * 1024, help="per uploaded image")
    p.add_argument("--max-images", type=int, default=8, help="images per conversation")
    p.add_argument("--max-videos", type=int, default=2, help="videos per conversation")
    p.add_argument("--max-video-bytes", type=int, default=64 * 1024 * 1024, help="per uploaded video")
    p.add_argument(
        "--no-geo",
        action="store_true",
        help="plain chat only: no GeoTIFF measurement, grounded answers or flags maps in the side panel",
    )
    p.set_defaults(func=run_lazy("geovl.commands.ui:run"))


def run(args) -> int:
    import os

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from geovl.inference import EngineError
    from geovl.ui.webapp import ChatApp, launch

    from .serve import open_local_engine

    if bool(args.api) == bool(args.model):
        raise CLIError("give either --model FOLDER (a local model) or --api URL (an OpenAI-compatible server)")
    for name in ("max_new_tokens", "max_upload_bytes", "max_images", "max_videos", "max_video_bytes"):
        if getattr(args, name) < 1:
            raise CLIError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.api:
        if args.adapter:
            raise CLIError("--adapter cannot be used with --api (the server decides which weights it serves)")
        from geovl.inference import open_engine

        try:
            engine = open_engine(api=args.api, api_key=args.api_key or os.environ.get("OPENAI_API_KEY"))
        except EngineError as e:
            raise CLIError(str(e)) from e
        where = engine.base_url
    else:
        engine, where = open_local_engine(args), None
    extension = None
    if not getattr(args, "no_geo", False):
        from geovl.ui.geo_panel import GeoPanel

        extension = GeoPanel(engine)
    app = ChatApp(
        engine,
        lang=args.lang,
        max_upload_bytes=args.max_upload_bytes,
        max_images=args.max_images,
        max_videos=args.max_videos,
        max_video_bytes=args.max_video_bytes,
        max_new_tokens=args.max_new_tokens,
        where=where,
        extension=extension,
    )
    launch(app, host=args.host, port=args.port, share=args.share)
    return 0
