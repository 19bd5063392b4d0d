""":class:`RemoteEngine`: the engine interface over any OpenAI-compatible server (vLLM, SGLang, geovl).

geovl messages become OpenAI chat messages: user turns are lists of ``text`` and ``image_url``
parts (each image a ``data:`` URI of the stored PNG/JPEG/WebP bytes, base64; TIFFs are rendered to
PNG first, since servers do not take them) and ``video_url`` parts (each video a ``data:`` URI of its
MP4/WebM/AVI/MOV bytes, as vLLM accepts them; the server samples the frames); system and assistant turns are plain strings. Requests
of a ``generate`` call run concurrently (the server batches them); ``stream`` reads the SSE stream
(``stream: true``). Uses the ``openai`` client; connection problems name the URL.

Transient failures are retried by the client itself (``max_retries``, default 2): connection errors,
timeouts, HTTP 408/409/429 and 5xx — e.g. a vLLM server answering 429/503 while its queue is full — with
exponential backoff that honours the server's ``Retry-After``. Other statuses (400, 401, 404, …) fail at once.
"""

from __future__ import annotations

import base64
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

from .engine import ChatRequest, EngineError, EngineStats, GenerationParams

DEFAULT_RETRIES = 2  # the openai client's own retries of 408/409/429/5xx and connection errors

MIME = {b"\x89PNG": "image/png", b"\xff\xd8\xff": "image/jpeg", b"RIFF": "image/webp", b"GIF8": "image/gif"}


def image_data_uri(data: bytes) -> str:
    """``data:<mime>;base64,...`` of encoded image bytes (as stored; TIFF rendered to PNG)."""
    data = bytes(data)
    if not any(data.startswith(magic) for magic in MIME):  # rasters (TIFF, JPEG2000, …): the one render path
        from ..imagery.decode import ImageError, load_image_bytes

        try:
            data = load_image_bytes(data, name="<image>").data
        except ImageError as e:
            raise EngineError(f"image bytes are not PNG, JPEG, WebP, GIF or a readable raster ({e})") from None
    mime = next((m for magic, m in MIME.items() if data.startswith(magic)), None)
    if mime is None:
        raise EngineError("image bytes are not PNG, JPEG, WebP, GIF or TIFF")
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


VIDEO_MIME = {b"\x1aE\xdf\xa3": "video/webm", b"RIFF": "video/x-msvideo"}


def video_data_uri(item) -> str:
    """``data:<mime>;base64,...`` of a request's video (encoded bytes or a path): MP4/MOV (an ``ftyp`` box),
    WebM/Matroska or AVI; anything else is an :class:`EngineError` (no server would read it)."""
    from pathlib import Path

    data = bytes(item) if isinstance(item, (bytes, bytearray, memoryview)) else Path(item).read_bytes()
    if data[4:8] == b"ftyp":
        mime = "video/quicktime" if data[8:12] == b"qt  " else "video/mp4"
    else:
        mime = next((m for magic, m in VIDEO_MIME.items() if data.startswith(magic)), None)
    if mime is None or (mime == "video/x-msvideo" and data[8:12] != b"AVI "):
        raise EngineError("video bytes are not MP4, MOV, WebM/Matroska or AVI")
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def to_openai_messages(request: ChatRequest) -> list[dict]:
    """geovl schema → OpenAI chat messages (images and videos consumed in part order)."""
    images = iter(request.images)
    videos = iter(request.videos)
    out = []
    for m in request.messages:
        parts = m["content"]
        if m["role"] != "user":
            out.append(
                {"role": m["role"], "content": "".join(p.get("text") or "" for p in parts if p.get("type") == "text")}
            )
            continue
        content = []
        for p in parts:
            if p.get("type") == "image":
                content.append({"type": "image_url", "image_url": {"url": image_data_uri(next(images))}})
            elif p.get("type") == "video":
                content.append({"type": "video_url", "video_url": {"url": video_data_uri(next(videos))}})
            elif p.get("type") == "text":
                content.append({"type": "text", "text": p.get("text") or ""})
        out.append({"role": "user", "content": content})
    return out


def normalize_base_url(url: str) -> str:
    url = url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise EngineError(f"--api {url!r}: give an http(s) URL such as http://localhost:8000/v1")
    for suffix in ("/chat/completions", "/completions"):
        if url.endswith(suffix):
            url = url[: -len(suffix)]
    return url if url.endswith("/v1") else url + "/v1"


class RemoteEngine:
    """An OpenAI-compatible ``/v1/chat/completions`` endpoint.

    ``model``: the served model name; when ``None`` the first entry of ``/v1/models`` is used.
    ``stats.forward_calls`` stays 0 (the server does not report them); ``generated_tokens`` comes
    from the server's ``usage`` when it sends one."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        model: str | None = None,
        timeout: float = 600.0,
        concurrency: int = 8,
        max_retries: int = DEFAULT_RETRIES,
    ):
        import openai

        self._openai = openai
        self.base_url = normalize_base_url(base_url)
        if int(max_retries) < 0:
            raise EngineError(f"max_retries must be >= 0, got {max_retries}")
        self.max_retries = int(max_retries)
        self.client = openai.OpenAI(
            base_url=self.base_url, api_key=api_key or "EMPTY", timeout=timeout, max_retries=self.max_retries
        )
        self.concurrency = max(1, int(concurrency))
        self.stats = EngineStats()
        self._stats_lock = threading.Lock()
        self.model = model or self._first_model()
        self.name = self.model

    def _error(self, e: Exception) -> EngineError:
        o = self._openai
        if isinstance(e, o.APITimeoutError):
            return EngineError(f"{self.base_url}: request timed out ({e}) / 请求超时")
        if isinstance(e, o.APIConnectionError):
            return EngineError(
                f"cannot connect to {self.base_url}: {e.__cause__ or e} — is the server running? / 无法连接服务器"
            )
        if isinstance(e, o.APIStatusError):
            return EngineError(f"{self.base_url} answered HTTP {e.status_code}: {str(e)[:300]}")
        return EngineError(f"{self.base_url}: {type(e).__name__}: {e}")

    def _first_model(self) -> str:
        try:
            models = list(self.client.models.list())
        except self._openai.OpenAIError as e:
            raise self._error(e) from e
        if not models:
            raise EngineError(f"{self.base_url}/models lists no model; pass --model NAME")
        return models[0].id

    def _payload(self, request: ChatRequest, params: GenerationParams) -> dict:
        kw = dict(
            model=self.model,
            messages=to_openai_messages(request),
            max_tokens=int(params.max_new_tokens),
            temperature=float(params.temperature),
            top_p=float(params.top_p),
        )
        if params.seed is not None:
            kw["seed"] = int(params.seed)
        return kw

    def _one(self, request: ChatRequest, params: GenerationParams) -> str:
        try:
            resp = self.client.chat.completions.create(**self._payload(request, params))
        except self._openai.OpenAIError as e:
            raise self._error(e) from e
        if not resp.choices:
            raise EngineError(f"{self.base_url}: response without choices")
        with self._stats_lock:
            if resp.usage is not None and resp.usage.completion_tokens:
                self.stats.generated_tokens += int(resp.usage.completion_tokens)
            self.stats.samples += 1
        return resp.choices[0].message.content or ""

    def generate(self, requests: list[ChatRequest], params: GenerationParams | None = None) -> list[str]:
        params = params or GenerationParams()
        requests = list(requests)
        if len(requests) <= 1 or self.concurrency == 1:
            return [self._one(r, params) for r in requests]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(requests))) as pool:
            return list(pool.map(lambda r: self._one(r, params), requests))

    def stream(self, request: ChatRequest, params: GenerationParams | None = None) -> Iterator[str]:
        params = params or GenerationParams()
        try:
            chunks = self.client.chat.completions.create(**self._payload(request, params), stream=True)
            for chunk in chunks:
                if getattr(chunk, "usage", None) is not None and chunk.usage.completion_tokens:
                    with self._stats_lock:
                        self.stats.generated_tokens += int(chunk.usage.completion_tokens)
                if not chunk.choices:
                    continue
                delta = chunk.choices[0].delta.content
                if delta:
                    yield delta
        except self._openai.OpenAIError as e:
            raise self._error(e) from e
        with self._stats_lock:
            self.stats.samples += 1

    def close(self) -> None:
        self.client.close()
