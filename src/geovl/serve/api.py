"""The OpenAI-compatible HTTP API (FastAPI): ``POST /v1/chat/completions`` (plain and SSE streaming),
``GET /v1/models``, ``GET /health``.

- Every inference goes through the engine interface and the one queue of the
  :class:`~geovl.serve.batcher.MicroBatcher`: non-streaming requests are grouped into shared
  ``generate`` calls, streaming requests run alone on the same worker; one lock keeps the engine
  single-threaded. A stream whose client goes away stops at the next token.
- Limits, each a clear 4xx in the OpenAI error shape: request body bytes (and the time to send
  it), JSON nesting depth, images per request, image bytes, pixels and decoded bytes (read from
  the header before decoding), prompt tokens (the model's context and ``max_prompt_tokens``,
  counted before generation), ``max_tokens``; the waiting queue (503 when full, streams included).
- Hardening: a ``Host`` allow-list (loopback names by default; DNS rebinding), JSON-only request
  bodies on the API (415 otherwise; the geo routes also take ``multipart/form-data``), no slash
  redirects (no ``Host`` reflected), message text with control tokens refused.
- Graceful shutdown (:func:`serve`): on SIGTERM waiting requests get a JSON 503, running streams
  end with an error event and ``[DONE]``, a running batch finishes (or is stopped after the grace
  period and answered with a JSON 503).
- ``Authorization: Bearer KEY`` on ``/v1/*`` when an API key is set (401 otherwise); ``/health`` is
  open so load balancers can probe it.
- Images: :mod:`geovl.serve.images` (data URIs; http(s) only when allowed; local files only inside
  the allowed folder).
- Videos: ``video_url`` parts (as vLLM takes them) under the same reference rules, decoded once per
  request into sampled frames with the model folder's video settings under the server's video limits
  (bytes, duration, frame size, frames, videos per request) — :mod:`geovl.serve.videos`; a bad video is a
  4xx naming what is wrong (corrupt, not a video, audio only, too long, …).
- Georeferenced measurement and grounded answers: ``POST /v1/geo/measure``, ``POST /v1/geo/ask`` and
  the ``"geovl": {"grounded": true}`` extension of chat completions (:mod:`geovl.serve.geo_api`).
- Boxes: a non-streaming answer that locates objects also carries them as data in the response's
  extension member ``"geovl": {"boxes": {...}}`` (:mod:`geovl.inference.answer_boxes`: pixels of the last
  image, read back through the model's own box convention); OpenAI clients ignore the extra member
  (``completion.model_extra["geovl"]`` in the official Python client). A streamed answer carries them in
  the same member of its final chunk (the one with ``finish_reason``), read once the text is complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
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

from ..errors import GeoVLError
from ..imagery.decode import ImageError
from ..inference.engine import EngineError
from .batcher import MicroBatcher, QueueFull, ShuttingDown
from .images import ImageLimits, ImageRefError, check_request_images, fetch_image
from .openai_format import (
    APIError,
    build_request,
    check_json,
    chunk,
    completion,
    convert_messages,
    generation_params,
    new_id,
    parse_body,
    parse_json,
    usage_dict,
)
from .videos import SERVER_VIDEO_LIMITS, VideoSettings, engine_settings, fetch_video, request_settings

log = logging.getLogger("geovl.serve")


LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
JSON_TYPES = ("application/json",)


@dataclass
class ServerConfig:
    served_model_name: str
    api_key: str | None = None
    limits: ImageLimits = field(default_factory=ImageLimits)
    video: VideoSettings = SERVER_VIDEO_LIMITS  # video limits (bytes, duration, frame size, frames per video)
    max_videos: int = 2  # per request (all turns)
    max_tokens_limit: int = 2048
    default_max_tokens: int = 512
    batch_window_ms: float = 10.0
    max_batch: int = 8
    max_queue: int = 256
    max_prompt_tokens: int = 32768  # also bounded by the model's context
    max_inflight_body_bytes: int | None = None  # request bodies held at once, server-wide (None: 2 x max_body_bytes)
    allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS  # Host header values accepted ("*" = any)
    body_timeout: float = 60.0  # seconds a client may take to send its request body
    header_timeout: float = 10.0  # seconds a new connection may take to send its request line and headers
    shutdown_grace: float = 10.0  # seconds a running batch may take to finish after SIGTERM

    def max_body_bytes(self) -> int:
        # every image and video as base64 plus 1 MiB of text
        images = self.limits.max_images * ((self.limits.max_image_bytes + 2) // 3 * 4 + 64)
        return images + self.max_videos * ((self.video.max_bytes + 2) // 3 * 4 + 64) + (1 << 20)

    def max_text_chars(self) -> int:
        # refused without tokenizing: no token of these tokenizers spans more than 16 characters on average
        return 16 * self.max_prompt_tokens


def _error_response(err: APIError):
    headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
    return JSONResponse(err.body(), status_code=err.status, headers=headers)


def _media_type(request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def check_content_type(request, multipart: bool = False) -> str:
    """The media type of a request body: JSON (``application/json`` or ``*+json``), or
    ``multipart/form-data`` where allowed; 415 otherwise. ``text/plain`` and form posts are the
    bodies a web page can send cross-site without a preflight, so the API never parses them."""
    mt = _media_type(request)
    if mt in JSON_TYPES or mt.endswith("+json") or (multipart and mt == "multipart/form-data"):
        return mt
    allowed = "application/json" + (" or multipart/form-data" if multipart else "")
    raise APIError(
        415,
        f"Content-Type {mt or '(none)'!r} is not accepted; send {allowed} / 请求体类型须为 {allowed}",
        "unsupported_media_type",
    )


class BodyBudget:
    """Bytes of request bodies held by requests in flight, server-wide: a body that would take the
    total over ``limit`` is refused with 503 ``server_busy`` (the default limit, twice the per-request
    body limit, always lets one request through). :class:`BodyBudgetRelease` returns a request's
    bytes when its response is complete (a stream's when the stream ends)."""

    def __init__(self, limit: int):
        self.limit, self.used = int(limit), 0
        self._lock = threading.Lock()

    def take(self, scope: dict, n: int) -> None:
        with self._lock:
            if self.used + n > self.limit:
                raise APIError(
                    503,
                    f"the server holds {self.used} bytes of request bodies in flight; this body would take it over "
                    f"{self.limit} (--max-inflight-body-bytes); try again later / 服务器繁忙",
                    "server_busy",
                )
            self.used += n
            scope["geovl.body_bytes"] = scope.get("geovl.body_bytes", 0) + n

    def release(self, scope: dict) -> None:
        n = scope.pop("geovl.body_bytes", 0)
        if n:
            with self._lock:
                self.used -= n


class BodyBudgetRelease:
    """ASGI middleware: give a request's body bytes back to the :class:`BodyBudget` when it is done."""

    def __init__(self, app, budget: BodyBudget):
        self.app, self.budget = app, budget

    async def __call__(self, scope, receive, send):
        try:
            await self.app(scope, receive, send)
        finally:
            self.budget.release(scope)


async def _read_body(request, limit: int, timeout: float = 60.0) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise APIError(
            413, f"request body is {declared} bytes, over the limit of {limit} bytes / 请求体过大", "request_too_large"
        )
    budget = getattr(request.app.state, "body_budget", None)
    buf = bytearray()

    async def read():
        async for part in request.stream():
            if budget is not None and part:
                budget.take(request.scope, len(part))
            buf.extend(part)
            if len(buf) > limit:
                raise APIError(
                    413, f"request body is over the limit of {limit} bytes / 请求体过大", "request_too_large"
                )

    try:
        await asyncio.wait_for(read(), timeout)  # a total deadline: slow senders do not hold a worker
    except asyncio.TimeoutError:
        raise APIError(
            408, f"the request body was not received within {timeout:g} s / 请求体发送超时", "request_timeout"
        ) from None
    return bytes(buf)


async def read_json(request, config) -> object:
    """The checked JSON document of a request (content type, size, time, depth, text)."""
    check_content_type(request)
    return check_json(parse_json(await _read_body(request, config.max_body_bytes(), config.body_timeout)))


def _host_of(value: str) -> str:
    value = value.strip().lower()
    if value.startswith("["):  # [::1]:8000
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def host_allowed(host: str, allowed) -> bool:
    if "*" in allowed:
        return True
    h = _host_of(host)
    return any(h == a.lower() or (a.startswith(".") and h.endswith(a.lower())) for a in allowed)


class HostAllowList:
    """ASGI middleware: requests whose ``Host`` header is not allowed get a JSON 400 (a web page on
    another site cannot reach a loopback server through DNS rebinding)."""

    def __init__(self, app, allowed):
        self.app, self.allowed = app, tuple(allowed)

    async def __call__(self, scope, receive, send):
        if scope["type"] in ("http", "websocket"):
            host = next((v.decode("latin-1") for k, v in scope.get("headers") or [] if k == b"host"), "")
            if not host_allowed(host, self.allowed):
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                    return
                body = json.dumps(
                    APIError(
                        400,
                        "this server does not answer for that Host header (start it with --allowed-hosts to add "
                        "names) / 主机名不在允许列表中",
                        "host_not_allowed",
                    ).body()
                ).encode()
                await send(
                    {
                        "type": "http.response.start",
                        "status": 400,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def _image_error(e: ImageRefError, index: int) -> APIError:
    return APIError(e.status, f"image {index + 1}: {e.message}", e.code, "messages")


def create_app(engine, config: ServerConfig):
    """The FastAPI app serving ``engine`` (any object with the engine interface)."""

    engine_lock = threading.Lock()
    batcher = MicroBatcher(
        engine, engine_lock, window_ms=config.batch_window_ms, max_batch=config.max_batch, max_queue=config.max_queue
    )

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        batcher.close()

    app = FastAPI(
        title="geovl OpenAI-compatible API", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan
    )
    app.router.redirect_slashes = False  # a redirect would echo the Host header back
    app.state.body_budget = BodyBudget(config.max_inflight_body_bytes or 2 * config.max_body_bytes())
    app.add_middleware(BodyBudgetRelease, budget=app.state.body_budget)
    app.add_middleware(HostAllowList, allowed=config.allowed_hosts)
    app.state.engine, app.state.batcher, app.state.config = engine, batcher, config

    @app.exception_handler(APIError)
    async def _api_error(request, exc: APIError):
        return _error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error_response(APIError(exc.status_code, f"{exc.detail}: {request.method} {request.url.path}", code))

    @app.exception_handler(ShuttingDown)
    async def _stopping(request, exc):
        return _error_response(APIError(503, f"{exc} / 服务器正在关闭", "server_shutting_down"))

    @app.exception_handler(GeoVLError)
    async def _user_error(request, exc: GeoVLError):  # a user-facing error no route turned into an APIError
        return _error_response(APIError(400, str(exc), "invalid_request"))

    @app.exception_handler(Exception)
    async def _internal(request, exc):  # pragma: no cover - a bug, logged with its traceback
        log.exception("internal error")
        return JSONResponse(
            {
                "error": {
                    "message": f"internal error: {type(exc).__name__}",
                    "type": "server_error",
                    "param": None,
                    "code": "internal_error",
                }
            },
            status_code=500,
        )

    def check_key(request) -> None:
        if not config.api_key:
            return
        auth = request.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise APIError(
                401, "missing API key: send the header Authorization: Bearer <key> / 缺少 API 密钥", "missing_api_key"
            )
        if not hmac.compare_digest(token.strip().encode(), config.api_key.encode()):
            raise APIError(401, "invalid API key / API 密钥错误", "invalid_api_key")

    @app.get("/health")
    async def health():
        # counters let operators (and bench/bench_api.py) see how well requests are grouped
        stats = getattr(engine, "stats", None)
        return {
            "status": "draining" if batcher.draining else "ok",
            "model": config.served_model_name,
            "queued": batcher.queued(),
            "running": batcher.running(),
            "engine_calls": batcher.calls,
            "batched_requests": batcher.batched,
            "generated_tokens": getattr(stats, "generated_tokens", None),
        }

    @app.get("/v1/models")
    async def models(request: Request):
        check_key(request)
        return {
            "object": "list",
            "data": [{"id": config.served_model_name, "object": "model", "created": 0, "owned_by": "geovl"}],
        }

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        check_key(request)
        obj = await read_json(request, config)
        body = parse_body(obj)
        if body.model and body.model != config.served_model_name:
            raise APIError(
                404,
                f"model {body.model!r} is not served here; this server serves {config.served_model_name!r} / 模型不存在",
                "model_not_found",
                "model",
            )
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
        check_text_size(parsed.messages, config)
        if len(parsed.video_refs) > config.max_videos:
            raise APIError(
                400,
                f"{len(parsed.video_refs)} videos in the request, over the limit of {config.max_videos} (--max-videos) / 视频数量超限",
                "too_many_videos",
                "messages",
            )
        images = []
        for i, ref in enumerate(parsed.image_refs):
            try:
                images.append(await run_in_threadpool(fetch_image, ref, config.limits))
            except ImageRefError as e:
                raise _image_error(e, i) from None
        try:
            check_request_images(images, config.limits)  # each image passed; all of them together too
        except ImageRefError as e:
            raise APIError(e.status, e.message, e.code, "messages") from None
        clips = []
        if parsed.video_refs:
            if obj.get("geovl") is not None:
                raise APIError(
                    400,
                    "the geovl extension (grounded answers) reads GeoTIFF images, not videos / 地理扩展不支持视频",
                    "unsupported_content",
                    "geovl",
                )
            settings = request_settings(engine_settings(engine), config.video)
            for i, ref in enumerate(parsed.video_refs):
                try:
                    _, clip = await run_in_threadpool(fetch_video, ref, config.limits, settings)
                except ImageRefError as e:
                    raise APIError(e.status, f"video {i + 1}: {e.message}", e.code, "messages") from None
                clips.append(clip)  # the bytes are dropped: the engine gets the sampled frames
        geo = None
        if obj.get("geovl") is not None:  # request extension: a grounded answer about GeoTIFFs (geo_api)
            from .geo_api import ground_chat

            req, geo = await ground_chat(obj["geovl"], parsed, images, engine, config)
        if geo is None:
            req = build_request(parsed, images, clips)
        explicit = (body.max_completion_tokens or body.max_tokens) is not None
        params = await check_prompt(engine, req, params, config, explicit)
        from ..inference.answer_boxes import answer_boxes  # extension field: the answer's boxes as data (geovl.boxes)

        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return start_stream(
                batcher,
                req,
                params,
                include_usage,
                config.served_model_name,
                geo,
                boxes_of=lambda text: answer_boxes(engine, images, text),
            )
        out = await answer(
            batcher,
            req,
            params,
            lambda text, usage: completion(new_id(), config.served_model_name, text, usage),
            request,
        )
        boxes = answer_boxes(engine, images, out["choices"][0]["message"]["content"])
        if boxes is not None:
            geo = dict(geo or {}, boxes=boxes)
        return out | {"geovl": geo} if geo is not None else out

    from .geo_api import add_geo_routes

    add_geo_routes(app, engine, config, batcher, check_key)
    return app


def check_text_size(messages: list[dict], config: ServerConfig) -> None:
    """Refuse text far too long for the prompt limit before the tokenizer sees it."""
    n = sum(len(p.get("text") or "") for m in messages for p in m.get("content") or [] if isinstance(p, dict))
    if n > config.max_text_chars():
        raise APIError(
            400,
            f"the messages hold {n} characters of text, far over the prompt limit of {config.max_prompt_tokens} tokens "
            "(--max-prompt-tokens) / 文本过长",
            "context_length_exceeded",
            "messages",
        )


async def check_prompt(engine, req, params, config: ServerConfig, explicit_max_tokens: bool):
    """Count the prompt's tokens before generation; refuse it over ``max_prompt_tokens`` or the model's
    context (a 400 ``context_length_exceeded``). When ``max_tokens`` was not given, it is lowered to fit
    the context; when it was, prompt + max_tokens must fit. Engines that cannot count (remote ones)
    are left to their server."""
    count = getattr(engine, "count_prompt_tokens", None)
    if count is None:
        return params
    try:
        n = await run_in_threadpool(count, req)
    except EngineError as e:  # e.g. control tokens in the text
        raise APIError(400, str(e), "invalid_text", "messages") from None
    except ImageError as e:  # a corrupt image header
        raise APIError(400, f"image could not be processed: {e}", "invalid_image") from None
    except GeoVLError as e:  # any other user-facing error: the client's request, not the server
        raise APIError(400, str(e), "invalid_request") from None
    context = getattr(engine, "context_length", None)
    if n > config.max_prompt_tokens:
        raise APIError(
            400,
            f"the prompt is {n} tokens, over this server's limit of {config.max_prompt_tokens} (--max-prompt-tokens) / 提示过长",
            "context_length_exceeded",
            "messages",
        )
    if context:
        room = context - n
        if room < 1:
            raise APIError(
                400,
                f"the prompt is {n} tokens; this model's context is {context} tokens / 提示超过模型上下文长度",
                "context_length_exceeded",
                "messages",
            )
        if params.max_new_tokens > room:
            if explicit_max_tokens:
                raise APIError(
                    400,
                    f"the prompt ({n} tokens) plus max_tokens ({params.max_new_tokens}) is over this model's context of "
                    f"{context} tokens / 提示与 max_tokens 之和超过上下文长度",
                    "context_length_exceeded",
                    "max_tokens",
                )
            params = dataclasses.replace(params, max_new_tokens=room)
    return params


async def _disconnected(request) -> None:
    """Returns when the client has closed the connection (the body was read before)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def answer(batcher: MicroBatcher, req, params, build, request=None):
    """Queue a non-streaming request and build its response from (text, usage). A request whose
    client disconnects while it waits in the queue is dropped from it (never generated)."""
    try:
        fut = batcher.submit(req, params)
    except QueueFull as e:
        raise APIError(503, str(e), "server_busy") from None
    waiter = asyncio.wrap_future(fut)
    watch = asyncio.ensure_future(_disconnected(request)) if request is not None else None
    try:
        if watch is not None:
            await asyncio.wait({waiter, watch}, return_when=asyncio.FIRST_COMPLETED)
            if not waiter.done():
                fut.cancel()  # still queued: the worker skips it; already running: its batch finishes
                raise APIError(499, "the client closed the connection / 客户端已断开", "client_closed")
        text, usage = await waiter
    except EngineError as e:
        raise APIError(400, str(e), "engine_error") from None
    except ShuttingDown:
        raise
    except ImageError as e:  # undecodable image in the processor, a cube that does not fit the projector
        raise APIError(400, f"image could not be processed: {e}", "invalid_image") from None
    except GeoVLError as e:  # any other user-facing error: the client's request, not the server
        raise APIError(400, str(e), "invalid_request") from None
    finally:
        if watch is not None:
            watch.cancel()
    return build(text, usage)


def start_stream(
    batcher: MicroBatcher, req, params, include_usage: bool, model: str, geo: dict | None = None, boxes_of=None
):
    """Queue a streaming request (503 at once when the queue is full) and answer with its SSE stream.
    ``boxes_of(text)`` (optional) reads the boxes of the complete answer; when it finds any, the final
    chunk (the one with ``finish_reason``) carries them as ``"geovl": {"boxes": ...}``."""
    loop = asyncio.get_running_loop()
    q: asyncio.Queue = asyncio.Queue()
    cancel = threading.Event()

    def put(item) -> None:
        try:
            loop.call_soon_threadsafe(q.put_nowait, item)
        except RuntimeError:  # the event loop is gone (server stopped)
            cancel.set()

    try:
        fut = batcher.submit_stream(req, params, lambda d: put(("delta", d)), cancel)
    except QueueFull as e:
        raise APIError(503, str(e), "server_busy") from None
    fut.add_done_callback(lambda f: put(("end", f)))
    return StreamingResponse(
        _sse(q, fut, cancel, include_usage, model, geo, boxes_of),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _sse(
    q: asyncio.Queue, fut, cancel: threading.Event, include_usage: bool, model: str, geo: dict | None, boxes_of=None
):
    cid, created = new_id(), int(time.time())
    parts: list[str] = []  # the answer so far: its boxes are read once the text is complete
    first = chunk(cid, model, created, {"role": "assistant", "content": ""})
    try:
        yield _event(first | {"geovl": geo} if geo is not None else first)
        while True:
            kind, val = await q.get()
            if kind == "delta":
                parts.append(val)
                yield _event(chunk(cid, model, created, {"content": val}))
                continue
            err = val.exception()
            if err is None:
                usage = val.result() or {}
                last = chunk(cid, model, created, {}, usage.get("finish_reason", "stop"))
                boxes = None
                if boxes_of is not None:
                    try:
                        boxes = await run_in_threadpool(boxes_of, "".join(parts))
                    except Exception as err:  # noqa: BLE001 - the text is already sent: end the stream normally
                        log.warning("stream: reading the answer's boxes failed: %s", err)
                yield _event(last | {"geovl": {"boxes": boxes}} if boxes is not None else last)
                if include_usage:
                    yield _event(
                        {
                            "id": cid,
                            "object": "chat.completion.chunk",
                            "created": created,
                            "model": model,
                            "choices": [],
                            "usage": usage_dict(usage),
                        }
                    )
            else:
                if isinstance(err, ShuttingDown):
                    e = APIError(503, f"{err}", "server_shutting_down")
                else:
                    log.warning("stream failed: %s", err)
                    bad = isinstance(err, GeoVLError)  # EngineError, ImageError, ...: the request's fault
                    e = APIError(400 if bad else 500, f"generation failed: {type(err).__name__}: {err}", "stream_error")
                yield _event(e.body())
            break
        yield "data: [DONE]\n\n"
    finally:
        cancel.set()  # the client went away (or the stream ended): stop generating at the next token
        fut.cancel()  # still queued: never started


def _event(obj: dict) -> str:
    return "data: " + json.dumps(obj, ensure_ascii=False) + "\n\n"


def serve(app, host: str, port: int, log_level: str = "info") -> None:
    """Run ``app`` with uvicorn and a graceful SIGTERM/SIGINT: the batcher drains at once (waiting
    requests get a JSON 503, running streams end with an error event and ``[DONE]``), a running batch
    has ``config.shutdown_grace`` seconds to finish before it is stopped and answered with a JSON 503;
    uvicorn waits for those answers to be sent before it exits."""
    import uvicorn

    batcher, grace = app.state.batcher, float(app.state.config.shutdown_grace)

    class _Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            if not batcher.draining:
                log.warning("geovl serve: signal %s: finishing in-flight requests (up to %g s) / 正在关闭", sig, grace)
                batcher.drain()
                timer = threading.Timer(grace, batcher.abort)
                timer.daemon = True
                timer.start()
            super().handle_exit(sig, frame)

    protocol = header_deadline_protocol(float(app.state.config.header_timeout))
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        http=protocol,
        timeout_graceful_shutdown=grace + 5,
        timeout_keep_alive=5,
    )
    _Server(config).run()


def header_deadline_protocol(seconds: float):
    """uvicorn's h11 protocol with a deadline for the request line and headers of a new connection.

    uvicorn times out idle keep-alive connections (``timeout_keep_alive``, armed after each response
    and disarmed when the next request's headers are complete) but arms nothing for the *first*
    request, so a client that trickles its headers holds a connection for ever. This subclass arms
    the same timer when the connection opens; a client that has not sent complete headers by then
    gets a JSON 408 and the connection is closed. (The body has its own deadline: ``body_timeout``.)"""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    body = json.dumps(
        APIError(
            408, f"request headers were not received within {seconds:g} s / 请求头发送超时", "request_timeout"
        ).body()
    ).encode()
    reply = (
        b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )

    class HeaderDeadlineProtocol(H11Protocol):
        _header_timer = None
        _got_bytes = False

        def _arm(self) -> None:
            self._disarm()
            self._got_bytes = False
            self._header_timer = self.loop.call_later(seconds, self._headers_too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            self._got_bytes = self._got_bytes or bool(data)
            super().data_received(data)

        def handle_events(self) -> None:
            super().handle_events()
            if self.conn.their_state is not h11.IDLE:  # the request line and headers are complete
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                self._arm()  # the next request on this keep-alive connection

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                if self._got_bytes:  # part of a request arrived: say why it is closed
                    self.transport.write(reply)
                self.transport.close()

    return HeaderDeadlineProtocol
