"""``geovl serve``: an OpenAI-compatible API (``/v1/chat/completions``, ``/v1/models``, ``/health``)."""

from __future__ import annotations

import argparse

from ..cli import run_lazy


def add_model_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    """Local-model options shared with ``geovl ui``."""
    p.add_argument("--model", required=required, help="model folder (or a LoRA run's final/ adapter folder)")
    p.add_argument("--adapter", help="peft adapter folder (e.g. OUT/final of `geovl train sft`)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    q = p.add_mutually_exclusive_group()
    q.add_argument("--load-in-4bit", action="store_true", help="4-bit weights (bitsandbytes; CUDA only)")
    q.add_argument("--load-in-8bit", action="store_true", help="8-bit weights (bitsandbytes; CUDA only)")
    p.add_argument("--attn-implementation", default=None, help="eager | sdpa | flash_attention_2 (GPU + flash-attn)")


def register(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a model over an OpenAI-compatible HTTP API / 启动 OpenAI 兼容接口",
        description=(
            "Serve a local model (+ adapter) at /v1/chat/completions (OpenAI format, streaming with stream=true), "
            "/v1/models and /health; GeoTIFF measurement and grounded answers at /v1/geo/measure, /v1/geo/ask and "
            'with the request extension "geovl": {"grounded": true} (docs/serving.md). Binds 127.0.0.1 unless --host says otherwise. Images come as data: URIs; '
            "http(s) URLs only with --allow-http-images, local paths/file:// only inside --allowed-image-dir; "
            "videos (video_url parts) follow the same rules under the --max-video-* limits (docs/video.md). "
            "以 OpenAI 兼容接口提供模型服务。"
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_model_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 exposes the server to the network)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--api-key", default=None, help="require Authorization: Bearer KEY (default: $GEOVL_API_KEY; none = open)"
    )
    p.add_argument(
        "--served-model-name", default=None, help="model id in /v1/models and requests (default: the model folder name)"
    )
    p.add_argument("--allow-http-images", action="store_true", help="fetch http(s) image URLs (size and time limited)")
    p.add_argument(
        "--allowed-image-dir", default=None, metavar="DIR", help="allow local paths / file:// URLs inside DIR only"
    )
    p.add_argument("--max-image-bytes", type=int, default=20 * 1024 * 1024, help="per image")
    p.add_argument("--max-pixels", type=int, default=25_000_000, help="per image, read from the header before decoding")
    p.add_argument(
        "--max-decoded-bytes",
        type=int,
        default=256 * 1024 * 1024,
        help="per image: bands x pixels x bytes per sample over every TIFF page/overview, read from the header before decoding",
    )
    p.add_argument(
        "--max-request-decoded-bytes",
        type=int,
        default=512 * 1024 * 1024,
        help="all images of one request together, decoded (from their headers, before decoding)",
    )
    p.add_argument("--max-images", type=int, default=8, help="per request (all turns)")
    p.add_argument(
        "--max-videos",
        type=int,
        default=2,
        help="video_url parts per request (all turns); same reference rules as images",
    )
    p.add_argument("--max-video-bytes", type=int, default=64 * 1024 * 1024, help="per video")
    p.add_argument(
        "--max-video-seconds",
        type=float,
        default=3600.0,
        help="per video, its declared duration (checked before decoding)",
    )
    p.add_argument(
        "--max-video-frame-pixels",
        type=int,
        default=3840 * 2160,
        help="per video, its declared frame width x height (checked before decoding)",
    )
    p.add_argument(
        "--max-video-frames",
        type=int,
        default=64,
        help="frames sampled per video at most (caps the model folder's video max_frames, never raises it)",
    )
    p.add_argument("--max-tokens-limit", type=int, default=2048, help="largest max_tokens a request may ask for")
    p.add_argument(
        "--default-max-tokens",
        type=int,
        default=512,
        help="max_tokens when a request gives none (lowered to fit the context)",
    )
    p.add_argument(
        "--max-prompt-tokens",
        type=int,
        default=32768,
        help="largest prompt (text + image tokens), counted before generation; the model's context also applies",
    )
    p.add_argument(
        "--allowed-hosts",
        default=None,
        metavar="H1,H2",
        help="Host header values accepted besides localhost/127.0.0.1/::1 and the --host address ('.example.com' = "
        "any subdomain, '*' = any; DNS-rebinding protection)",
    )
    p.add_argument(
        "--max-inflight-body-bytes",
        type=int,
        default=None,
        help="request body bytes held by all requests in flight together (503 over it; default: twice the per-request body limit)",
    )
    p.add_argument(
        "--body-timeout", type=float, default=60.0, help="seconds a client may take to send a request body (408 after)"
    )
    p.add_argument(
        "--header-timeout",
        type=float,
        default=10.0,
        help="seconds a new connection may take to send its request line and headers (JSON 408 and closed after)",
    )
    p.add_argument(
        "--shutdown-grace",
        type=float,
        default=10.0,
        help="on SIGTERM, seconds a running batch may take to finish (queued requests get 503 at once, streams end with an error event)",
    )
    p.add_argument(
        "--batch-window-ms",
        type=float,
        default=10.0,
        help="group requests arriving within this window (0 = no micro-batching)",
    )
    p.add_argument("--max-batch-size", type=int, default=8, help="requests per generate call")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=run_lazy("geovl.commands.serve:run"))


def quantization_of(args) -> str:
    return "4bit" if args.load_in_4bit else "8bit" if args.load_in_8bit else "none"


def open_local_engine(args, batch_size: int = 8):
    from geovl.cli import CLIError
    from geovl.inference import EngineError, LocalEngine

    try:
        return LocalEngine(
            args.model,
            adapter=args.adapter,
            device=args.device,
            batch_size=batch_size,
            quantization=quantization_of(args),
            attn_implementation=args.attn_implementation,
        )
    except EngineError as e:
        raise CLIError(str(e)) from e


def is_loopback(host: str) -> bool:
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")


def run(args) -> int:
    import dataclasses
    import os
    import sys

    from geovl.cli import CLIError
    from geovl.serve.images import ImageLimits

    for name in (
        "max_image_bytes",
        "max_pixels",
        "max_decoded_bytes",
        "max_request_decoded_bytes",
        "max_images",
        "max_videos",
        "max_video_bytes",
        "max_video_frame_pixels",
        "max_tokens_limit",
        "default_max_tokens",
        "max_batch_size",
        "max_prompt_tokens",
    ):
        if getattr(args, name) < 1:
            raise CLIError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not 0 <= args.port <= 65535:
        raise CLIError(f"--port must be 0..65535, got {args.port}")
    try:
        limits = ImageLimits(
            max_image_bytes=args.max_image_bytes,
            max_pixels=args.max_pixels,
            max_decoded_bytes=args.max_decoded_bytes,
            max_request_decoded_bytes=args.max_request_decoded_bytes,
            max_images=args.max_images,
            allow_http=args.allow_http_images,
            allowed_dir=args.allowed_image_dir,
        )
    except ValueError as e:
        raise CLIError(f"--allowed-image-dir: {e}") from e
    from geovl.serve.videos import SERVER_VIDEO_LIMITS

    try:
        video = dataclasses.replace(
            SERVER_VIDEO_LIMITS,
            max_bytes=args.max_video_bytes,
            max_duration_s=args.max_video_seconds,
            max_frame_pixels=args.max_video_frame_pixels,
            max_frames=args.max_video_frames,
        )
    except ValueError as e:
        raise CLIError(f"video limits: {e}") from e
    api_key = args.api_key or os.environ.get("GEOVL_API_KEY") or None
    if not is_loopback(args.host) and not api_key:
        print(
            f"geovl serve: warning: binding {args.host} without an API key: anyone on the network can use the model / 警告：未设置 API 密钥",
            file=sys.stderr,
        )

    if args.max_inflight_body_bytes is not None and args.max_inflight_body_bytes < 1:
        raise CLIError(f"--max-inflight-body-bytes must be >= 1, got {args.max_inflight_body_bytes}")
    for name in ("body_timeout", "header_timeout", "shutdown_grace"):
        if not getattr(args, name) > 0:
            raise CLIError(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    from geovl.serve.api import LOOPBACK_HOSTS, ServerConfig, create_app, serve

    hosts = list(LOOPBACK_HOSTS)
    if args.host not in ("0.0.0.0", "::", ""):
        hosts.append(args.host)
    hosts += [h.strip() for h in (args.allowed_hosts or "").split(",") if h.strip()]
    if args.allowed_hosts is None and not is_loopback(args.host):
        print(
            f"geovl serve: note: only Host headers {', '.join(hosts)} are answered; add the names clients use with "
            "--allowed-hosts / 仅接受上述主机名",
            file=sys.stderr,
        )

    engine = open_local_engine(args, batch_size=args.max_batch_size)
    config = ServerConfig(
        served_model_name=args.served_model_name or engine.name,
        api_key=api_key,
        limits=limits,
        video=video,
        max_videos=args.max_videos,
        max_tokens_limit=args.max_tokens_limit,
        default_max_tokens=min(args.default_max_tokens, args.max_tokens_limit),
        batch_window_ms=args.batch_window_ms,
        max_batch=args.max_batch_size,
        max_prompt_tokens=args.max_prompt_tokens,
        max_inflight_body_bytes=args.max_inflight_body_bytes,
        allowed_hosts=tuple(hosts),
        body_timeout=args.body_timeout,
        header_timeout=args.header_timeout,
        shutdown_grace=args.shutdown_grace,
    )
    app = create_app(engine, config)
    print(
        f"geovl serve: {config.served_model_name} at http://{args.host}:{args.port}/v1 "
        f"(API key {'required' if api_key else 'off'}; images: data URIs"
        f"{', http(s)' if limits.allow_http else ''}{', files in ' + limits.allowed_dir if limits.allowed_dir else ''}; "
        f"videos alike, up to {args.max_videos} per request) / 服务已启动",
        file=sys.stderr,
        flush=True,
    )
    serve(app, args.host, args.port, args.log_level)
    return 0
