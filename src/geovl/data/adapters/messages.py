"""JSONL already in the sample schema -> validated samples (Parquet or JSONL).

Each line: ``{"id", "messages", "images", "qtype", "answer", "source"?, "meta"?}`` where an
image entry is a path relative to the file (or to ``--images-root``), a ``data:image/...;
base64,`` URI, or raw base64. Every line is one input record: a line that is not JSON is
rejected (``bad_json``, with the line number), a line that is not UTF-8 too (``bad_encoding``;
the lines after it are still converted), a line that breaks the schema is rejected
with the validation reason, images go through the same safe loader as every adapter
(``path_escape``, ``missing_image``, ``undecodable_image``, ``image_too_large``; EXIF
orientation applied). A missing ``source`` becomes ``<file>#L<line>``; ``meta`` defaults
to ``{}``.

The common **chat form** is accepted too: records with only ``messages`` (and optionally ``id``,
``qtype``, ``meta``) whose content parts hold the image reference inline — ``{"type": "image",
"image": REF}``, ``{"type": "image", "url": REF}`` or OpenAI's ``{"type": "image_url", "image_url":
{"url": REF}}`` — and whose content may be a plain string. The images are taken in order, the answer
is the last assistant turn (which must end the conversation), a missing id becomes ``<file>-L<line>``,
and a missing qtype is inferred from the last question (``yes_no``, ``count``, ``area``, else
``open``; :mod:`geovl.data.qtype`) and marked ``meta.qtype_inferred``; the summary counts them.

Videos: a ``videos`` list (paths, ``data:video/...;base64,`` URIs or raw base64, as geovl's JSONL writer
stores them) for the ``{"type": "video"}`` parts; in the chat form ``{"type": "video", "video": REF}``
(or ``"url"``, or ``{"type": "video_url", "video_url": {"url": REF}}``). Each video is checked as
:func:`geovl.imagery.video.read_frames` reads it; a bad one rejects its record with the video's reason
(``missing_video``, ``corrupt``, ``not_a_video``, ``too_long``, …).
"""

from __future__ import annotations

import base64
import binascii
import re
from pathlib import Path
from typing import Iterator

from ...imagery.decode import ImageError, load_image_bytes, resolve_image_path
from ...imagery.video import VideoError
from ..convert import ConvertError, ConvertOptions, ImageCache, VideoCache, check_rendered
from ..io import iter_jsonl_lines
from ..schema import SampleError

_B64 = re.compile(r"^[A-Za-z0-9+/\s]+={0,2}\s*$")
_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*", b"RIFF", b"GIF8", b"BM")
REQUIRED = ("id", "messages", "images", "qtype", "answer")


def _b64(s: str, what: str) -> bytes:
    try:
        return base64.b64decode(s, validate=False)
    except (binascii.Error, ValueError) as e:
        raise ImageError("undecodable_image", f"{what}: bad base64 ({e})") from None


def load_ref(ref, root: Path, cache: ImageCache, max_pixels: int) -> tuple[bytes, dict]:
    """(encoded bytes, georef meta) for one image entry of a messages record."""
    if not isinstance(ref, str) or not ref.strip():
        raise ImageError("missing_image", f"image entry {ref!r} is not a path or base64 string")
    if ref.startswith("data:"):
        head, _, payload = ref.partition(",")
        if ";base64" not in head or not payload:
            raise ImageError("undecodable_image", f"data URI {head[:40]!r} is not base64")
        img = load_image_bytes(_b64(payload, "data URI"), max_pixels, name="data URI", render=cache.render)
        check_rendered(img, "data URI", cache.opts)
        return img.data, img.meta
    if len(ref) >= 64 and _B64.match(ref):  # raw base64 (JPEG base64 starts with "/9j/": not a path)
        data = _b64(ref, "base64 image")
        if data.startswith(_MAGIC):
            img = load_image_bytes(data, max_pixels, name="base64 image", render=cache.render)
            check_rendered(img, "base64 image", cache.opts)
            return img.data, img.meta
    img = cache.load(resolve_image_path(root, ref))
    return img.data, img.meta


def load_video_ref(ref, root: Path, videos: VideoCache) -> bytes:
    """The encoded bytes of one video entry of a messages record (checked as ``read_frames`` reads it)."""
    if not isinstance(ref, str) or not ref.strip():
        raise SampleError("missing_video", f"video entry {ref!r} is not a path or base64 string")
    data = None
    if ref.startswith("data:"):
        head, _, payload = ref.partition(",")
        if ";base64" not in head or not payload:
            raise VideoError("corrupt", f"data URI {head[:40]!r} is not base64")
        data = _b64(payload, "data URI")
    elif len(ref) >= 64 and _B64.match(ref):
        data = _b64(ref, "base64 video")
    if data is not None:
        return videos.check_bytes(data)
    try:
        path = resolve_image_path(root, ref)
    except ImageError as e:
        raise SampleError(e.reason if e.reason == "path_escape" else "missing_video", e.detail) from None
    return videos.load(path)


def iter_records(o: ConvertOptions) -> Iterator[tuple[str, object]]:
    path = o.input
    if not path.is_file():
        raise ConvertError(f"{path}: --from messages expects a .jsonl file")
    root = o.images_root or path.parent
    cache = ImageCache(o.pixel_limit, size=16, opts=o)
    videos = VideoCache()
    for n, obj in iter_jsonl_lines(path):
        source = f"{path.name}#L{n}"
        try:
            item = obj if isinstance(obj, SampleError) else _build(obj, n, source, root, cache, o.pixel_limit, videos)
        except (SampleError, ImageError, VideoError) as e:
            item = e
        yield source, item


def _build(
    rec, n: int, source: str, root: Path, cache: ImageCache, max_pixels: int, videos: VideoCache | None = None
) -> dict:
    if not isinstance(rec, dict):
        raise SampleError("bad_schema", f"line {n}: a record must be a JSON object")
    if "images" not in rec and "answer" not in rec and isinstance(rec.get("messages"), list):
        rec = from_chat_form(rec, n, Path(source.split("#", 1)[0]).stem)
    missing = [k for k in REQUIRED if k not in rec]
    if missing:
        raise SampleError("bad_schema", f"line {n}: missing field(s) {missing}")
    if not isinstance(rec["images"], list):
        raise SampleError("bad_schema", f"line {n}: 'images' must be a list")
    images, img_meta = [], []
    for ref in rec["images"]:
        data, meta = load_ref(ref, root, cache, max_pixels)
        images.append(data)
        img_meta.append(meta)
    vrefs = rec.get("videos") if rec.get("videos") is not None else []
    if not isinstance(vrefs, list):
        raise SampleError("bad_schema", f"line {n}: 'videos' must be a list")
    vids = [load_video_ref(ref, root, videos or VideoCache()) for ref in vrefs]
    meta = rec.get("meta") if rec.get("meta") is not None else {}
    if isinstance(meta, dict) and any(img_meta) and "images_meta" not in meta:
        meta = {**meta, "images_meta": img_meta}
    sample = {
        "id": rec["id"] if not isinstance(rec["id"], int) else str(rec["id"]),
        "messages": rec["messages"],
        "images": images,
        "qtype": rec["qtype"],
        "answer": rec["answer"],
        "source": rec.get("source") or source,
        "meta": meta,
    }
    if vids:
        sample["videos"] = vids
    return sample  # validated (and duplicate-checked) by the writer


def _image_ref(part: dict):
    """The inline image reference of a chat-form content part, or None for a bare ``{"type": "image"}``."""
    if part.get("type") == "image_url":
        ref = part.get("image_url")
        return ref.get("url") if isinstance(ref, dict) else ref
    return part.get("image") if part.get("image") is not None else part.get("url")


def _video_ref(part: dict):
    if part.get("type") == "video_url":
        ref = part.get("video_url")
        return ref.get("url") if isinstance(ref, dict) else ref
    return part.get("video") if part.get("video") is not None else part.get("url")


def from_chat_form(rec: dict, n: int, stem: str) -> dict:
    """A chat-form record (inline image references, no ``images`` / ``answer``) → a record of the
    sample schema: images in order, bare image parts, the answer from the last assistant turn, the
    qtype given or inferred from the last question (``meta.qtype_inferred``)."""
    from ..qtype import detect_qtype, is_area_question

    msgs, images, videos = [], [], []
    for i, m in enumerate(rec["messages"]):
        if not isinstance(m, dict) or "content" not in m:
            raise SampleError("bad_schema", f"line {n}: message {i + 1} is not an object with a content")
        content = m["content"]
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        if not isinstance(content, list):
            raise SampleError("bad_schema", f"line {n}: message {i + 1}: content must be a string or a list of parts")
        parts = []
        for part in content:
            if not isinstance(part, dict):
                raise SampleError("bad_schema", f"line {n}: message {i + 1}: a content part must be an object")
            if part.get("type") in ("image", "image_url"):
                ref = _image_ref(part)
                if ref is None:
                    raise SampleError(
                        "bad_schema",
                        f"line {n}: message {i + 1}: an image part without its reference "
                        '(chat form: {"type": "image", "image": PATH})',
                    )
                images.append(ref)
                parts.append({"type": "image"})
            elif part.get("type") in ("video", "video_url"):
                ref = _video_ref(part)
                if ref is None:
                    raise SampleError(
                        "bad_schema",
                        f"line {n}: message {i + 1}: a video part without its reference "
                        '(chat form: {"type": "video", "video": PATH})',
                    )
                videos.append(ref)
                parts.append({"type": "video"})
            else:
                parts.append(part)
        msgs.append({**m, "content": parts})
    if not msgs or msgs[-1].get("role") != "assistant":
        raise SampleError("bad_schema", f"line {n}: the last turn must be the assistant's answer (chat form)")
    answer = "".join(p.get("text", "") for p in msgs[-1]["content"] if p.get("type") == "text").strip()
    question = next(
        (
            "".join(p.get("text", "") for p in m["content"] if p.get("type") == "text")
            for m in reversed(msgs[:-1])
            if m.get("role") == "user"
        ),
        "",
    )
    meta = rec.get("meta") if isinstance(rec.get("meta"), dict) else {}
    qtype = rec.get("qtype")
    if qtype is None:
        kind = detect_qtype(question)
        qtype = (
            kind
            if kind in ("yes_no", "count")
            else "area"
            if kind == "number" and is_area_question(question)
            else "open"
        )
        meta = {**meta, "qtype_inferred": True}
    return {
        **rec,
        "id": rec.get("id", f"{stem}-L{n}"),
        "messages": msgs,
        "images": images,
        "qtype": qtype,
        "answer": answer,
        "meta": meta,
    } | ({"videos": videos} if videos else {})
