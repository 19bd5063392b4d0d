"""OpenAI chat-completions format ↔ the engine's :class:`ChatRequest` / answers.

Requests: ``messages`` with roles ``system`` (or ``developer``), ``user`` and ``assistant``; content
is a string or a list of parts ``{"type": "text", "text"}`` / ``{"type": "image_url", "image_url":
{"url"}}`` / ``{"type": "video_url", "video_url": {"url"}}`` (as vLLM accepts video; images and videos
only in user turns, any turn of the history). The geovl messages keep every part
in place (an image part where the client put it), so the prompt is exactly what a local engine
would build from the same conversation — ``RemoteEngine`` sends plain strings for system/assistant
turns and parts for user turns, which map back one-to-one.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..inference.engine import SEED_RANGE, ChatRequest, GenerationParams

MAX_JSON_DEPTH = 64  # nesting of objects/arrays in a request body


class APIError(Exception):
    """An error answered in the OpenAI shape ``{"error": {"message", "type", "param", "code"}}``."""

    TYPES = {
        400: "invalid_request_error",
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        413: "invalid_request_error",
        422: "invalid_request_error",
        429: "rate_limit_error",
        503: "server_busy",
    }

    def __init__(self, status: int, message: str, code: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param

    def body(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": self.TYPES.get(self.status, "server_error"),
                "param": self.param,
                "code": self.code,
            }
        }


class StreamOptions(BaseModel):
    include_usage: bool = False


class CompletionBody(BaseModel):
    """The fields we read; unknown fields are ignored (clients send many)."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    messages: list[dict] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = Field(default=None, ge=SEED_RANGE[0], le=SEED_RANGE[1])
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None


def parse_json(raw: bytes):
    """A request body as JSON; every way it can be bad is a 400 ``invalid_json`` (bad UTF-8, syntax,
    integers over Python's 4,300-digit limit, nesting deep enough to exhaust the parser's stack)."""
    try:
        return json.loads(raw)
    except RecursionError:
        raise APIError(
            400, f"request body is nested too deeply (limit {MAX_JSON_DEPTH} levels) / JSON 嵌套过深", "invalid_json"
        ) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise APIError(400, f"request body is not valid JSON: {e} / 请求体不是合法 JSON", "invalid_json") from None
    except ValueError as e:  # "Exceeds the limit (4300 digits) for integer string conversion"
        raise APIError(
            400, f"request body is not usable JSON: {str(e)[:200]} / 请求体包含无法处理的数值", "invalid_json"
        ) from None


def check_json(obj, max_depth: int = MAX_JSON_DEPTH):
    """``obj`` if no container is nested deeper than ``max_depth`` and every string is valid Unicode
    (a lone surrogate such as ``"\\ud800"`` cannot be encoded or tokenized); 400 otherwise."""
    stack = [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if isinstance(o, str):
            try:
                o.encode("utf-8")
            except UnicodeEncodeError:
                raise APIError(
                    400,
                    "request text contains a lone surrogate (\\ud800-\\udfff), which is not a character / 文本包含无效的 Unicode 代理字符",
                    "invalid_text",
                ) from None
            continue
        if isinstance(o, dict):
            items = list(o.keys()) + list(o.values())
        elif isinstance(o, list):
            items = o
        else:
            continue
        if d > max_depth:
            raise APIError(
                400, f"request body is nested more than {max_depth} levels deep / JSON 嵌套过深", "invalid_json"
            )
        stack.extend((v, d + 1) for v in items)
    return obj


def validation_message(e: ValidationError) -> str:
    parts = []
    for err in e.errors()[:5]:
        loc = ".".join(str(x) for x in err.get("loc", ())) or "body"
        parts.append(f"{loc}: {err.get('msg')}")
    return "invalid request: " + "; ".join(parts) + " / 请求格式错误"


def parse_body(obj) -> CompletionBody:
    if not isinstance(obj, dict):
        raise APIError(422, "the request body must be a JSON object / 请求体须为 JSON 对象", "invalid_schema")
    try:
        body = CompletionBody.model_validate(obj)
    except ValidationError as e:
        raise APIError(422, validation_message(e), "invalid_schema") from None
    if (body.n or 1) != 1:
        raise APIError(
            400, "n > 1 is not supported; send separate requests / 不支持 n > 1", "unsupported_parameter", "n"
        )
    if body.stop:
        raise APIError(
            400, "stop sequences are not supported by this server / 不支持 stop 参数", "unsupported_parameter", "stop"
        )
    return body


@dataclass
class ParsedMessages:
    messages: list[dict]  # geovl schema, image and video parts in place
    image_refs: list[str]  # image_url.url of each image part, in order
    video_refs: list[str] = field(default_factory=list)  # video_url.url of each video part, in order


ROLE_MAP = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def _text_of(content, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise APIError(
            422, f"{where}: content must be a string or a list of parts / content 格式错误", "invalid_schema", where
        )
    out = []
    for j, p in enumerate(content):
        if not isinstance(p, dict) or p.get("type") != "text" or not isinstance(p.get("text"), str):
            raise APIError(
                400,
                f"{where}.content[{j}]: only text parts are allowed in system and assistant messages / 系统与助手消息只能包含文本",
                "invalid_content",
                where,
            )
        out.append(p["text"])
    return "".join(out)


def convert_messages(raw: list[dict]) -> ParsedMessages:
    msgs, refs, video_refs = [], [], []
    for i, m in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise APIError(
                422, f"{where} must be an object with role and content / 消息格式错误", "invalid_schema", where
            )
        role = ROLE_MAP.get(m.get("role"))
        if role is None:
            raise APIError(
                400,
                f"{where}: role {m.get('role')!r} is not supported (system, user, assistant) / 不支持的角色",
                "invalid_role",
                where,
            )
        content = m.get("content")
        if role != "user":
            msgs.append({"role": role, "content": [{"type": "text", "text": _text_of(content, where)}]})
            continue
        if isinstance(content, str):
            msgs.append({"role": "user", "content": [{"type": "text", "text": content}]})
            continue
        if not isinstance(content, list) or not content:
            raise APIError(
                422,
                f"{where}: user content must be a string or a non-empty list of parts / 用户消息内容为空或格式错误",
                "invalid_schema",
                where,
            )
        parts = []
        for j, p in enumerate(content):
            kind = p.get("type") if isinstance(p, dict) else None
            if kind == "text" and isinstance(p.get("text"), str):
                parts.append({"type": "text", "text": p["text"]})
            elif kind == "image_url":
                iu = p.get("image_url")
                url = iu.get("url") if isinstance(iu, dict) else iu
                if not isinstance(url, str) or not url.strip():
                    raise APIError(
                        422,
                        f"{where}.content[{j}]: image_url.url must be a non-empty string / 图像地址为空",
                        "invalid_schema",
                        where,
                    )
                parts.append({"type": "image"})
                refs.append(url)
            elif kind == "video_url":
                vu = p.get("video_url")
                url = vu.get("url") if isinstance(vu, dict) else vu
                if not isinstance(url, str) or not url.strip():
                    raise APIError(
                        422,
                        f"{where}.content[{j}]: video_url.url must be a non-empty string / 视频地址为空",
                        "invalid_schema",
                        where,
                    )
                parts.append({"type": "video"})
                video_refs.append(url)
            else:
                raise APIError(
                    400,
                    f"{where}.content[{j}]: part type {kind!r} is not supported (text, image_url, video_url) / 不支持的内容类型",
                    "invalid_content",
                    where,
                )
        msgs.append({"role": "user", "content": parts})
    if not any(m["role"] == "user" for m in msgs):
        raise APIError(
            400, "messages need at least one user message / 至少需要一条用户消息", "invalid_messages", "messages"
        )
    return ParsedMessages(msgs, refs, video_refs)


def generation_params(body: CompletionBody, max_tokens_limit: int, default_max_tokens: int) -> GenerationParams:
    asked = body.max_completion_tokens or body.max_tokens
    if asked is not None and asked > max_tokens_limit:
        raise APIError(
            400,
            f"max_tokens={asked} is over this server's limit of {max_tokens_limit} (--max-tokens-limit) / max_tokens 超过上限",
            "max_tokens_too_large",
            "max_tokens",
        )
    return GenerationParams(
        max_new_tokens=asked or min(default_max_tokens, max_tokens_limit),
        temperature=0.0 if body.temperature is None else float(body.temperature),
        top_p=1.0 if body.top_p is None else float(body.top_p),
        seed=body.seed,
    )


# -- responses --------------------------------------------------------------------------------------
def new_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex[:24]


def usage_dict(u: dict | None) -> dict:
    p = int((u or {}).get("prompt_tokens") or 0)
    c = int((u or {}).get("completion_tokens") or 0)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def completion(cid: str, model: str, text: str, usage: dict | None) -> dict:
    return {
        "id": cid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": (usage or {}).get("finish_reason", "stop"),
                "logprobs": None,
            }
        ],
        "usage": usage_dict(usage),
    }


def chunk(cid: str, model: str, created: int, delta: dict, finish_reason: str | None = None) -> dict:
    return {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
    }


def build_request(parsed: ParsedMessages, images: list[bytes], videos: list | None = None) -> ChatRequest:
    """The engine request; ``videos``: one per video part (sampled clips, :mod:`geovl.serve.videos`)."""
    if videos:
        return ChatRequest(parsed.messages, images, list(videos))
    return ChatRequest(parsed.messages, images)
