"""LLaVA / ShareGPT conversations (e.g. MMDU-45k) -> samples.

Input: a JSON list (streamed element by element with ijson, never loaded whole) or JSONL. Each record::

    {"id": "...", "image": "a.jpg" | ["a.jpg", "b.jpg"],
     "conversations": [{"from": "human", "value": "<image>\\n<image>\\nCompare ..."},
                       {"from": "gpt", "value": "..."}, ...]}

- roles ``human``/``user`` -> user, ``gpt``/``assistant`` -> assistant, ``system`` (first
  only); turns must alternate user/assistant and end with assistant (else ``bad_roles``);
- ``<image>`` tags may stand anywhere in user turns: the text is split at the tags and the
  image parts are placed exactly there (the newline right after a tag is dropped); the number
  of tags must equal the number of images (else ``tag_count_mismatch``); a tag in an
  assistant/system turn is rejected (``image_in_assistant_turn``);
- records without images are valid text-only samples;
- videos: a ``"video"`` (or ``"videos"``) field, a path or a list of paths, with ``<video>`` tags in user
  turns placed like ``<image>`` tags (``{"type": "video"}`` parts, bytes in the sample's ``videos``). A
  record with videos, no images and ``<image>`` tags instead (the LLaVA-Video convention) has its tags read
  as video tags. Each video is checked as :func:`geovl.imagery.video.read_frames` reads it (headers, limits,
  the sampled frames decode); a bad one rejects its record with the video's reason (``corrupt``,
  ``not_a_video``, ``no_video_stream``, ``zero_frames``, ``too_long``, ``too_large``, ``too_many_bytes``,
  ``unsupported_codec``) or ``missing_video``; a tag count that differs is ``tag_count_mismatch``;
- image paths are relative to ``--images-root`` (default: the input file's folder);
- qtype ``open`` unless the record has a valid ``qtype``; answer = last assistant turn;
- ``--boxes 0-1|0-100|0-1000`` (the scale the record's box numbers are on; never guessed): a record
  whose last answer holds boxes (:mod:`.norm_boxes`) becomes a ``grounding`` sample — boxes in
  stored-image pixels in ``meta["boxes"]``, the answer :func:`geovl.data.boxes.answer_text`,
  ``meta["grounding"]`` from the record's ``grounding`` field (default ``all``). Rejected:
  ``rotated_box``, ``box_outside_image`` (a number outside the scale), ``box_missing_label``,
  ``boxes_not_in_last_answer`` (boxes in a question or an earlier answer are not converted),
  ``boxes_multi_image`` (these text forms cannot say which image a box is on).
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Iterator

import ijson

from ...imagery.decode import ImageError, resolve_image_path
from ...imagery.video import VideoError
from ..convert import ConvertError, ConvertOptions, ImageCache, VideoCache
from ..io import UTF8_BOM, iter_jsonl_lines
from ..schema import SampleError, image_part, text_part, video_part

TAG = "<image>"
VIDEO_TAG = "<video>"
_TAGS = re.compile(r"(<image>|<video>)")
ROLE_MAP = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
_CHUNK = 1 << 20


class _Prefixed:
    """A binary reader that first returns ``head`` (bytes already read to look for a BOM), then the file."""

    def __init__(self, head: bytes, f):
        self.head, self.f = head, f

    def read(self, n: int = -1) -> bytes:
        if n == 0:  # ijson probes the type with read(0)
            return b""
        if self.head:
            out, self.head = self.head, b""
            return out
        return self.f.read(n)


def _first_line(e: Exception) -> str:
    msg = e.args[0] if e.args else str(e)
    if isinstance(msg, bytes):
        msg = msg.decode("utf-8", "replace")
    return str(msg).strip().splitlines()[0] if str(msg).strip() else type(e).__name__


def iter_json_array(path: Path) -> Iterator[object]:
    """Stream the elements of a top-level JSON array with bounded memory: ijson parses the file in
    ``_CHUNK``-byte reads and builds one element at a time, so the first record is available before the rest
    of the file is read, and memory follows the largest record, not the file. A broken file is reported with
    the index of the record where parsing stopped (records before it have been yielded)."""
    n = 0
    with open(path, "rb", buffering=0) as f:  # unbuffered: a read returns what is there (pipes too)
        head = b""
        while len(head) < len(UTF8_BOM):
            more = f.read(len(UTF8_BOM) - len(head))
            if not more:
                break
            head += more
        reader = _Prefixed(head.removeprefix(UTF8_BOM), f)
        events = ijson.parse(reader, buf_size=_CHUNK, use_float=True)
        try:
            first = next(events, None)
        except ijson.JSONError as e:  # empty, or not JSON at all
            raise ConvertError(f"{path}: not a JSON list ({_first_line(e)})") from None
        if first is None or first[1] != "start_array":
            raise ConvertError(f"{path}: not a JSON list")
        try:
            for obj in ijson.items(itertools.chain([first], events), "item"):
                yield obj
                n += 1
        except ijson.JSONError as e:
            why = _first_line(e)
            if "premature EOF" in why:
                raise ConvertError(f"{path}: truncated JSON list (no closing ']') after {n} records") from None
            if "trailing garbage" in why:
                raise ConvertError(f"{path}: unexpected data after the closing ']' of the JSON list") from None
            if "after array element" in why:
                raise ConvertError(f"{path}: expected ',' between records after record {n}") from None
            if "invalid bytes in UTF8" in why:
                raise UnicodeDecodeError("utf-8", b"", 0, 1, f"invalid UTF-8 in record {n + 1}") from None
            raise ConvertError(f"{path}: not valid JSON in record {n + 1} ({why})") from None


def iter_json_records(path: Path) -> Iterator[tuple[str, object]]:
    """(position label, parsed record or SampleError) for a JSON list or a JSONL file."""
    with open(path, "rb") as f:
        head = f.read(4096).removeprefix(UTF8_BOM).lstrip()
    if head.startswith(b"["):
        try:
            for i, obj in enumerate(iter_json_array(path)):
                yield f"{path.name}#{i}", obj
        except UnicodeDecodeError as e:
            raise ConvertError(
                f"{path}: not UTF-8 text ({e.reason}); a JSON list is one document, so nothing of it is "
                "converted: re-save it as UTF-8 (or as JSONL, where only the bad lines are rejected)"
            ) from None
        return
    first = True
    for n, obj in iter_jsonl_lines(path):
        if first and n == 1 and isinstance(obj, SampleError) and obj.reason == "bad_json":
            raise ConvertError(f"{path}: neither a JSON list nor JSONL (line 1: {obj.detail.split(': ', 1)[-1]})")
        first = False
        yield f"{path.name}#L{n}", obj


def split_at_tags(text: str, image_tags_are_videos: bool = False) -> list[dict]:
    """Text with ``<image>`` / ``<video>`` tags -> content parts, images and videos exactly where the tags were
    (``image_tags_are_videos``: ``<image>`` stands for a video, as in LLaVA-Video records)."""
    parts: list[dict] = []
    pieces = _TAGS.split(text)
    for i, piece in enumerate(pieces[::2]):
        if i > 0:
            tag = pieces[2 * i - 1]
            parts.append(video_part() if tag == VIDEO_TAG or image_tags_are_videos else image_part())
            if piece.startswith("\r\n"):
                piece = piece[2:]
            elif piece.startswith("\n"):
                piece = piece[1:]
        if piece.strip():
            parts.append(text_part(piece))
    return parts


def build_messages(conv, image_tags_are_videos: bool = False) -> list[dict]:
    if not isinstance(conv, list) or not conv:
        raise SampleError("bad_roles", "no conversation turns")
    msgs = []
    for i, turn in enumerate(conv):
        if not isinstance(turn, dict):
            raise SampleError("bad_record", f"turn {i} is not an object")
        raw_role = turn.get("from", turn.get("role"))
        role = ROLE_MAP.get(str(raw_role).lower())
        if role is None:
            raise SampleError("bad_roles", f"turn {i}: unknown role {raw_role!r}")
        text = turn.get("value", turn.get("content"))
        if not isinstance(text, str):
            raise SampleError("bad_record", f"turn {i}: text must be a string")
        if role == "user":
            content = split_at_tags(text, image_tags_are_videos)
        else:
            if TAG in text or VIDEO_TAG in text:
                tag = TAG if TAG in text else VIDEO_TAG
                raise SampleError("image_in_assistant_turn", f"turn {i} ({role}) contains {tag}")
            content = [text_part(text)]
        msgs.append({"role": role, "content": content or [text_part("")]})
    roles = [m["role"] for m in msgs]
    body = roles[1:] if roles[0] == "system" else roles
    expect = ["user", "assistant"] * (len(body) // 2 + 1)
    if not body or body != expect[: len(body)] or body[-1] != "assistant" or "system" in body:
        raise SampleError("bad_roles", f"roles {roles} must alternate user/assistant and end with assistant")
    return msgs


def iter_records(o: ConvertOptions) -> Iterator[tuple[str, object]]:
    path = o.input
    if not path.is_file():
        raise ConvertError(f"{path}: --from llava expects a .json (list) or .jsonl file")
    root = o.images_root or path.parent
    cache = ImageCache(o.pixel_limit, size=16, opts=o)
    videos = VideoCache()
    for source, rec in iter_json_records(path):
        if isinstance(rec, dict) and rec.get("id") is not None:
            source = f"{path.name}#{rec['id']}"
        if isinstance(rec, SampleError):
            yield source, rec
            continue
        try:
            item = _build(rec, source, root, cache, path, videos)
            if getattr(o, "boxes", None):
                item = _with_boxes(item, rec, o.boxes)
        except (SampleError, ImageError, VideoError) as e:
            item = e
        yield source, item


def _paths(rec: dict, *keys: str) -> list[str]:
    refs = next((rec[k] for k in keys if k in rec), None)
    if refs is None:
        return []
    if isinstance(refs, str):
        refs = [refs]
    if not isinstance(refs, list) or not all(isinstance(r, str) for r in refs):
        raise SampleError("bad_record", f"'{keys[0]}' must be a path or a list of paths")
    return refs


def _build(rec, source: str, root: Path, cache: ImageCache, path: Path, videos: VideoCache | None = None) -> dict:
    if not isinstance(rec, dict):
        raise SampleError("bad_record", f"record is a {type(rec).__name__}, not an object")
    rid = rec.get("id")
    sid = str(rid) if rid is not None and str(rid).strip() else source.replace("#", "-")
    refs = _paths(rec, "image", "images")
    vrefs = _paths(rec, "video", "videos")
    conv = rec.get("conversations", rec.get("messages"))
    # LLaVA-Video writes <image> for its video: read those tags as video tags when nothing else fits
    as_videos = (
        bool(vrefs)
        and not refs
        and isinstance(conv, list)
        and not any(isinstance(t, dict) and VIDEO_TAG in str(t.get("value", t.get("content")) or "") for t in conv)
    )
    msgs = build_messages(conv, as_videos)
    n_tags = sum(1 for m in msgs for p in m["content"] if p["type"] == "image")
    if n_tags != len(refs):
        raise SampleError("tag_count_mismatch", f"{n_tags} {TAG} tags but {len(refs)} images")
    n_vtags = sum(1 for m in msgs for p in m["content"] if p["type"] == "video")
    if n_vtags != len(vrefs):
        raise SampleError("tag_count_mismatch", f"{n_vtags} {VIDEO_TAG} tags but {len(vrefs)} videos")
    vdatas = []
    for ref in vrefs:
        try:
            vpath = resolve_image_path(root, ref)
        except ImageError as e:
            raise SampleError(e.reason if e.reason == "path_escape" else "missing_video", e.detail) from None
        vdatas.append((videos or VideoCache()).load(vpath))
    datas, img_meta = [], []
    for ref in refs:
        loaded = cache.load(resolve_image_path(root, ref))
        datas.append(loaded.data)
        img_meta.append(loaded.meta)
    answer = "".join(p.get("text", "") for p in msgs[-1]["content"])
    qtype = rec.get("qtype", "open")
    meta = {
        "dataset": "llava",
        "n_turns": sum(1 for m in msgs if m["role"] == "assistant"),
        "image_paths": refs,
    }
    if any(img_meta):
        meta["images_meta"] = img_meta
    if vrefs:
        meta["video_paths"] = vrefs
    for k in ("source", "meta"):
        if k in rec and isinstance(rec[k], (str, dict)):
            meta[f"orig_{k}"] = rec[k]
    return {
        "id": sid,
        "messages": msgs,
        "images": datas,
        "qtype": qtype,
        "answer": answer,
        "source": source,
        "meta": meta,
    } | ({"videos": vdatas} if vdatas else {})


def _with_boxes(sample: dict, rec: dict, scale_name: str) -> dict:
    """``sample`` as a grounding sample when its last answer holds boxes on the ``scale_name`` scale."""
    from ..boxes import answer_text
    from ..inspect import image_size
    from ..schema import message_text, validate_sample
    from .norm_boxes import SCALES, find_boxes, to_pixels

    msgs = sample["messages"]
    last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
    for i, m in enumerate(msgs):
        if i != last and m["role"] != "system" and find_boxes(message_text(m)):
            raise SampleError(
                "boxes_not_in_last_answer",
                f"turn {i} ({m['role']}) has boxes; only the last answer's boxes are converted",
            )
    found = find_boxes(message_text(msgs[last]))
    if not found:
        return sample
    if len(sample["images"]) != 1:
        raise SampleError(
            "boxes_multi_image",
            f"boxes with {len(sample['images'])} images: the text cannot say which image a box is on",
        )
    w, h = image_size(sample["images"][0])
    boxes = to_pixels(found, SCALES[scale_name], w, h)
    mode = rec.get("grounding", "all")
    text = answer_text(boxes)
    msgs = msgs[:last] + [{"role": "assistant", "content": [text_part(text)]}] + msgs[last + 1 :]
    meta = dict(
        sample["meta"],
        boxes=boxes,
        grounding=mode,
        box_scale=scale_name,
        original_answer=message_text(sample["messages"][last]),
    )
    out = dict(sample, messages=msgs, answer=text, qtype="grounding", meta=meta)
    validate_sample(out)
    return out
