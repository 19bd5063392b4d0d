"""The one sample schema used from the first adapter to the last report.

A sample is a plain ``dict``:

``id``        string, unique within a dataset file; 1–:data:`MAX_ID_CHARS` characters, no control
              characters (an unusable id rejects its record as ``bad_id``)
``messages``  list of ``{"role": "system"|"user"|"assistant", "content": [part, ...]}``;
              a part is ``{"type": "image"}``, ``{"type": "video"}`` or ``{"type": "text", "text": str}``
``images``    list of encoded image bytes (PNG/JPEG), in the order of the image parts
``videos``    list of encoded video bytes (MP4, ...; :mod:`geovl.imagery.video`), in the order of the video
              parts; optional in a sample dict (absent = no videos), always present when read from a file
``qtype``     one of :data:`QTYPES`
``answer``    reference answer of the last assistant turn (string)
``source``    where the record came from: ``"<file>#<record id>"``
``meta``      dict of extra metadata (JSON-serialisable): language, scene id, CRS, pixel size, ...;
              boxes in ``meta["boxes"]`` (stored-image pixels, see :mod:`geovl.data.boxes`);
              ``meta["dates"]``: an image time series — ISO ``YYYY-MM-DD`` strings, one per image, in image
              order (validated when present)

:func:`validate_sample` is the single gate every writer goes through; it raises
:class:`SampleError` with a short machine-readable ``reason``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from ..errors import GeoVLError

QTYPES = ("yes_no", "count", "number", "area", "choice", "open", "structured", "grounding", "date")
ROLES = ("system", "user", "assistant")
COLUMNS = ("id", "messages", "images", "qtype", "answer", "source", "meta")
OPTIONAL_COLUMNS = ("videos",)  # absent in a sample dict or an older dataset file = empty
PART_TYPES = ("image", "video", "text")
MEDIA_PARTS = ("image", "video")
LEGACY_DATE_LABELS = ("before", "after")  # meta["dates"] of geovl data synth's two-date samples
MAX_ID_CHARS = 256  # an id is a key in rejects, predictions and reports; a longer one is a broken record


class SampleError(GeoVLError, ValueError):
    """A record that cannot become a valid sample; ``reason`` is a short slug for rejects files."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def text_part(text: str) -> dict:
    return {"type": "text", "text": text}


def image_part() -> dict:
    return {"type": "image"}


def video_part() -> dict:
    return {"type": "video"}


def user_turn(text: str, n_images: int = 0, images_first: bool = True, n_videos: int = 0) -> dict:
    """A user message with ``n_images`` image parts and then ``n_videos`` video parts before (default) or
    after the text."""
    imgs = [image_part() for _ in range(n_images)] + [video_part() for _ in range(n_videos)]
    parts = imgs + [text_part(text)] if images_first else [text_part(text)] + imgs
    return {"role": "user", "content": parts}


def assistant_turn(text: str) -> dict:
    return {"role": "assistant", "content": [text_part(text)]}


def make_sample(
    id: str,
    question: str,
    answer: str,
    images: Sequence[bytes] = (),
    qtype: str = "open",
    source: str = "",
    meta: dict | None = None,
    system: str | None = None,
    videos: Sequence[bytes] = (),
) -> dict:
    """Build and validate a single-turn sample (images, then videos, before the question, as Qwen does).
    ``videos`` is stored only when given (an image sample stays as before)."""
    messages = []
    if system:
        messages.append({"role": "system", "content": [text_part(system)]})
    messages += [user_turn(question, len(images), n_videos=len(videos)), assistant_turn(answer)]
    sample = {
        "id": str(id),
        "messages": messages,
        "images": list(images),
        "qtype": qtype,
        "answer": answer,
        "source": source,
        "meta": dict(meta or {}),
    }
    if videos:
        sample["videos"] = list(videos)
    validate_sample(sample)
    return sample


def message_text(message: dict) -> str:
    """Concatenated text parts of one message."""
    return "".join(p.get("text") or "" for p in message["content"] if p.get("type") == "text")


def count_image_parts(messages: Iterable[dict]) -> int:
    return sum(1 for m in messages for p in m["content"] if p.get("type") == "image")


def count_video_parts(messages: Iterable[dict]) -> int:
    return sum(1 for m in messages for p in m["content"] if p.get("type") == "video")


def sample_videos(s: dict) -> list:
    """The sample's videos (``[]`` when it has none or was built before videos existed)."""
    return list(s.get("videos") or [])


def last_assistant_text(messages: Sequence[dict]) -> str | None:
    for m in reversed(messages):
        if m["role"] == "assistant":
            return message_text(m)
    return None


def validate_sample(s: Any) -> None:
    """Raise :class:`SampleError` if ``s`` is not a valid sample. Returns ``None`` when valid."""
    if not isinstance(s, dict):
        raise SampleError("bad_schema", f"sample must be a dict, got {type(s).__name__}")
    missing = [c for c in COLUMNS if c not in s and c != "meta"]
    if missing:
        raise SampleError("bad_schema", f"missing fields {missing}")
    if not isinstance(s["id"], str) or not s["id"]:
        raise SampleError("bad_schema", "id must be a non-empty string")
    check_id(s["id"])
    msgs = s["messages"]
    if not isinstance(msgs, list) or not msgs:
        raise SampleError("bad_schema", "messages must be a non-empty list")
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise SampleError("bad_schema", f"message {i}: role must be one of {ROLES}")
        content = m.get("content")
        if not isinstance(content, list) or not content:
            raise SampleError("bad_schema", f"message {i}: content must be a non-empty list of parts")
        for p in content:
            if not isinstance(p, dict) or p.get("type") not in PART_TYPES:
                raise SampleError("bad_schema", f"message {i}: part type must be 'image', 'video' or 'text'")
            if p["type"] == "text" and not isinstance(p.get("text"), str):
                raise SampleError("bad_schema", f"message {i}: text part without a string 'text'")
            if p["type"] in MEDIA_PARTS and m["role"] != "user":
                raise SampleError("bad_schema", f"message {i}: {p['type']}s are only allowed in user turns")
    roles = [m["role"] for m in msgs]
    if "user" not in roles:
        raise SampleError("empty_question", "no user turn")
    for m in msgs:
        if m["role"] == "user" and not message_text(m).strip() and not count_image_parts([m]) + count_video_parts([m]):
            raise SampleError("empty_question", "a user turn has neither text nor image nor video")
        if m["role"] == "assistant" and not message_text(m).strip():
            raise SampleError("empty_answer", "an assistant turn is empty")
    images = s["images"]
    if not isinstance(images, list) or any(not isinstance(b, (bytes, bytearray)) or not b for b in images):
        raise SampleError("bad_schema", "images must be a list of non-empty encoded image bytes")
    n_parts = count_image_parts(msgs)
    if n_parts != len(images):
        raise SampleError("image_count_mismatch", f"{n_parts} image parts but {len(images)} images")
    videos = s.get("videos", [])
    if videos is None:
        videos = []
    if not isinstance(videos, list) or any(not isinstance(b, (bytes, bytearray)) or not b for b in videos):
        raise SampleError("bad_schema", "videos must be a list of non-empty encoded video bytes")
    n_vparts = count_video_parts(msgs)
    if n_vparts != len(videos):
        raise SampleError("video_count_mismatch", f"{n_vparts} video parts but {len(videos)} videos")
    if s["qtype"] not in QTYPES:
        raise SampleError("bad_qtype", f"qtype {s['qtype']!r} not in {QTYPES}")
    if not isinstance(s["answer"], str):
        raise SampleError("bad_schema", "answer must be a string")
    if not isinstance(s["source"], str):
        raise SampleError("bad_schema", "source must be a string")
    if "meta" in s and not isinstance(s["meta"], dict):
        raise SampleError("bad_schema", "meta must be a dict")
    texts = [p["text"] for m in msgs for p in m["content"] if p["type"] == "text"] + [s["answer"], s["source"]]
    if not all(_utf8(t) for t in texts):
        raise SampleError("bad_text", "text with a lone surrogate (e.g. a \\ud800 escape): not encodable as UTF-8")
    if s.get("meta"):
        import json

        try:
            json.dumps(s["meta"], ensure_ascii=False).encode("utf-8")
        except (TypeError, ValueError, UnicodeEncodeError, RecursionError) as e:
            raise SampleError("bad_schema", f"meta is not JSON-serialisable UTF-8 ({type(e).__name__})") from None
    if "dates" in (s.get("meta") or {}):
        check_dates(s["meta"]["dates"], len(images))
    if s["qtype"] == "grounding" or "boxes" in (s.get("meta") or {}):
        from .boxes import validate_sample_boxes

        validate_sample_boxes(s)


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def check_dates(dates: Any, n_images: int) -> None:
    """:class:`SampleError` ``bad_dates`` unless ``dates`` is a list of ISO ``YYYY-MM-DD`` calendar dates,
    one per image (an image time series: ``meta["dates"]``). The phase labels of the two-date change
    samples written before time series existed (:data:`LEGACY_DATE_LABELS`) still pass, so those
    datasets keep reading."""
    import datetime
    import re

    if not isinstance(dates, list) or not all(isinstance(d, str) for d in dates):
        raise SampleError("bad_dates", "meta.dates must be a list of 'YYYY-MM-DD' strings")
    if len(dates) != n_images:
        raise SampleError("bad_dates", f"{len(dates)} dates for {n_images} images (one date per image)")
    for d in dates:
        try:
            if d in LEGACY_DATE_LABELS:
                continue
            if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", d):
                raise ValueError
            datetime.date.fromisoformat(d)
        except ValueError:
            raise SampleError("bad_dates", f"meta.dates: {d[:40]!r} is not an ISO date (YYYY-MM-DD)") from None


def check_id(rid: str) -> None:
    """:class:`SampleError` ``bad_id`` for an id no output can carry: too long, control characters, not UTF-8."""
    if len(rid) > MAX_ID_CHARS:
        raise SampleError("bad_id", f"id of {len(rid)} characters (at most {MAX_ID_CHARS}): {rid[:40]!r}…")
    if not rid.strip():
        raise SampleError("bad_id", "id is only white space")
    if any(ord(c) < 32 or ord(c) == 127 for c in rid):
        raise SampleError("bad_id", f"id with a control character: {rid[:60]!r}")
    if not _utf8(rid):
        raise SampleError("bad_id", f"id with a lone surrogate (not encodable as UTF-8): {rid[:60]!r}")


@dataclass
class Counts:
    """Conversion bookkeeping: every input record is written or rejected, nothing else."""

    read: int = 0
    written: int = 0

    def __post_init__(self):
        self.rejected: dict[str, int] = {}

    def reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    @property
    def n_rejected(self) -> int:
        return sum(self.rejected.values())

    @property
    def conserved(self) -> bool:
        return self.read == self.written + self.n_rejected

    def as_dict(self) -> dict:
        return {
            "read": self.read,
            "written": self.written,
            "rejected": self.n_rejected,
            "rejected_by_reason": dict(sorted(self.rejected.items())),
            "conserved": self.conserved,
        }
