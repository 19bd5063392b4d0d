"""The OpenAI-compatible HTTP API (FastAPI): ``POST /v1/chat/completions`` (plain and SSE streaming),
``GET /v1/models``, ``GET /health``.

- Every inference goes through the engine interface: non-streaming requests through the
  :class:`~geovl.serve.batcher.MicroBatcher` (grouped into shared ``generate`` calls), streaming
  requests through ``engine.stream``; one lock keeps the engine single-threaded.
- Limits, each a clear 4xx in the OpenAI error shape: request body bytes, images per request,
  image bytes, pixels (read from the header before decoding), ``max_tokens``; the waiting queue
  (503 when full).
- ``Authorization: Bearer KEY`` on ``/v1/*`` when an API key is set (401 otherwise); ``/health`` is
  open so load balancers can probe it.
- Images: :mod:`geovl.serve.images` (data URIs; http(s) only when allowed; local files only inside
  the allowed folder).
- Georeferenced measurement and grounded answers: ``POST /v1/geo/measure``, ``POST /v1/geo/ask`` and
  the ``"geovl": {"grounded": true}`` extension of chat completions (:mod:`geovl.serve.geo_api`).
- Boxes: a non-streaming answer that locates objects also carries them as data in the response's
  extension member ``"geovl": {"boxes": {...}}`` (:mod:`geovl.serve.answer_boxes`: pixels of the last
  image, read back through the model's own box convention); OpenAI clients ignore the extra member
  (``completion.model_extra["geovl"]`` in the official Python client). Streaming answers carry text only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import threading
import time
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .batcher import MicroBatcher, QueueFull, supports_usage
from .engine import EngineError
from .images import ImageLimits, ImageRefError, fetch_image
from .openai_format import APIError, build_request, chunk, completion, convert_messages, generation_params, new_id, parse_body, usage_dict

log = logging.getLogger("geovl.serve")


@dataclass
class ServerConfig:
    served_model_name: str
    api_key: str | None = None
    limits: ImageLimits = field(default_factory=ImageLimits)
    max_tokens_limit: int = 2048
    default_max_tokens: int = 512
    batch_window_ms: float = 10.0
    max_batch: int = 8
    max_queue: int = 256

    def max_body_bytes(self) -> int:
        # every image as base64 plus 1 MiB of text
        return self.limits.max_images * ((self.limits.max_image_bytes + 2) // 3 * 4 + 64) + (1 << 20)


def _error_response(err: APIError):
    headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
    return JSONResponse(err.body(), status_code=err.status, headers=headers)


async def _read_body(request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise APIError(413, f"request body is {declared} bytes, over the limit of {limit} bytes / 请求体过大", "request_too_large")
    buf = bytearray()
    async for part in request.stream():
        buf += part
        if len(buf) > limit:
            raise APIError(413, f"request body is over the limit of {limit} bytes / 请求体过大", "request_too_large")
    return bytes(buf)


def _image_error(e: ImageRefError, index: int) -> APIError:
    return APIError(e.status, f"image {index + 1}: {e.message}", e.code, "messages")


def create_app(engine, config: ServerConfig):
    """The FastAPI app serving ``engine`` (any object with the engine interface)."""

    engine_lock = threading.Lock()
    batcher = MicroBatcher(engine, engine_lock, window_ms=config.batch_window_ms, max_batch=config.max_batch, max_queue=config.max_queue)
    stream_usage = supports_usage(engine.stream)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        batcher.close()

    app = FastAPI(title="geovl OpenAI-compatible API", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.engine, app.state.batcher, app.state.config = engine, batcher, config

    @app.exception_handler(APIError)
    async def _api_error(request, exc: APIError):
        return _error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error_response(APIError(exc.status_code, f"{exc.detail}: {request.method} {request.url.path}", code))

    @app.exception_handler(Exception)
    async def _internal(request, exc):  # pragma: no cover - a bug, logged with its traceback
        log.exception("internal error")
        return JSONResponse({"error": {"message": f"internal error: {type(exc).__name__}", "type": "server_error", "param": None, "code": "internal_error"}}, status_code=500)

    def check_key(request) -> None:
        if not config.api_key:
            return
        auth = request.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise APIError(401, "missing API key: send the header Authorization: Bearer <key> / 缺少 API 密钥", "missing_api_key")
        if not hmac.compare_digest(token.strip().encode(), config.api_key.encode()):
            raise APIError(401, "invalid API key / API 密钥错误", "invalid_api_key")

    @app.get("/health")
    async def health():
        # counters let operators (and bench/bench_api.py) see how well requests are grouped
        return {
            "status": "ok",
            "model": config.served_model_name,
            "queued": batcher.queued(),
            "engine_calls": batcher.calls,
            "batched_requests": batcher.batched,
        }

    @app.get("/v1/models")
    async def models(request: Request):
        check_key(request)
        return {"object": "list", "data": [{"id": config.served_model_name, "object": "model", "created": 0, "owned_by": "geovl"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        check_key(request)
        raw = await _read_body(request, config.max_body_bytes())
        try:
            obj = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise APIError(400, f"request body is not valid JSON: {e} / 请求体不是合法 JSON", "invalid_json") from None
        body = parse_body(obj)
        if body.model and body.model != config.served_model_name:
            raise APIError(404, f"model {body.model!r} is not served here; this server serves {config.served_model_name!r} / 模型不存在", "model_not_found", "model")
        parsed = convert_messages(body.messages)
        if len(parsed.image_refs) > config.limits.max_images:
            raise APIError(
                400,
                f"{len(parsed.image_refs)} images in the request, over the limit of {config.limits.max_images} (--max-images) / 图像数量超限",
                "too_many_images",
                "messages",
            )
        try:
            params = generation_params(body, config.max_tokens_limit, config.default_max_tokens)
        except EngineError as e:
            raise APIError(400, str(e), "invalid_parameter") from None
        images = []
        for i, ref in enumerate(parsed.image_refs):
            try:
                images.append(await run_in_threadpool(fetch_image, ref, config.limits))
            except ImageRefError as e:
                raise _image_error(e, i) from None
        geo = None
        if obj.get("geovl") is not None:  # request extension: a grounded answer about GeoTIFFs (geo_api)
            from .geo_api import ground_chat

            req, geo = await ground_chat(obj["geovl"], parsed, images, engine, config)
        if geo is None:
            req = build_request(parsed, images)
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(_sse(req, params, include_usage, geo), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            fut = batcher.submit(req, params)
        except QueueFull as e:
            raise APIError(503, str(e), "server_busy") from None
        try:
            text, usage = await asyncio.wrap_future(fut)
        except EngineError as e:
            raise APIError(400, str(e), "engine_error") from None
        except Exception as e:  # noqa: BLE001 - undecodable image in the processor, ...
            if type(e).__name__ == "ImageError":
                raise APIError(400, f"image could not be processed: {e}", "invalid_image") from None
            raise
        out = completion(new_id(), config.served_model_name, text, usage)
        from .answer_boxes import answer_boxes  # extension field: the answer's boxes as data (geovl.boxes)

        boxes = answer_boxes(engine, images, text)
        if boxes is not None:
            geo = dict(geo or {}, boxes=boxes)
        return out | {"geovl": geo} if geo is not None else out

    async def _sse(req, params, include_usage: bool, geo: dict | None = None):
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()
        cancelled = threading.Event()
        usage: dict = {}

        def put(item) -> None:
            try:
                loop.call_soon_threadsafe(q.put_nowait, item)
            except RuntimeError:  # the event loop is gone (server shutting down)
                cancelled.set()

        def work():
            try:
                with engine_lock:
                    gen = engine.stream(req, params, usage=usage) if stream_usage else engine.stream(req, params)
                    for delta in gen:
                        if cancelled.is_set():
                            gen.close()
                            break
                        put(("delta", delta))
                put(("done", None))
            except BaseException as e:  # noqa: BLE001 - reported in the stream
                put(("error", e))

        cid, created, model = new_id(), int(time.time()), config.served_model_name
        first = chunk(cid, model, created, {"role": "assistant", "content": ""})
        yield _event(first | {"geovl": geo} if geo is not None else first)
        threading.Thread(target=work, name="geovl-sse", daemon=True).start()
        try:
            while True:
                kind, val = await q.get()
                if kind == "delta":
                    yield _event(chunk(cid, model, created, {"content": val}))
                elif kind == "done":
                    yield _event(chunk(cid, model, created, {}, usage.get("finish_reason", "stop")))
                    if include_usage:
                        yield _event({"id": cid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [], "usage": usage_dict(usage)})
                    break
                else:
                    log.warning("stream failed: %s", val)
                    err = APIError(400 if isinstance(val, EngineError) else 500, f"generation failed: {type(val).__name__}: {val}", "stream_error")
                    yield _event(err.body())
                    break
            yield "data: [DONE]\n\n"
        finally:
            cancelled.set()  # client gone: the worker stops at the next delta

    from .geo_api import add_geo_routes

    add_geo_routes(app, engine, config, batcher, check_key)
    return app


def _event(obj: dict) -> str:
    return "data: " + json.dumps(obj, ensure_ascii=False) + "\n\n"
