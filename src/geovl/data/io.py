"""Dataset files: streaming read/write of samples as Parquet or JSONL, plus the rejects file.

Parquet (one row per sample) is the canonical format; it is readable by ``pyarrow`` and by
``datasets.load_dataset("parquet", data_files=...)``. ``images`` is a plain ``list<binary>``
column (not the ``datasets`` Image feature, which is ~17x slower to read); ``videos`` (encoded
MP4/...) is a ``list<binary>`` column too — files written before videos existed have no such
column and still read. A sample dict carries ``"videos"`` only when it has videos (absent = none,
:func:`geovl.data.schema.sample_videos`), so image samples read back exactly as written; ``meta`` is a JSON string so that sources with different
metadata share one Arrow schema.

JSONL: one sample per line. On write, images go to files in ``<stem>_images/`` next to the
output, named by a hash of their bytes (``<sha256[:32]>.png``: two records never share a file name
unless they share the image, whatever their ids), and are referenced by relative path (or inlined
as ``data:`` URIs with ``images="base64"``); videos are stored the same way (``videos`` field, files
``<sha256[:32]>.mp4`` in the same folder, or ``data:video/...`` URIs). On read, an image or video entry may
be a path relative to the JSONL file, a ``data:...;base64,`` URI, or raw base64; a line without
``videos`` has none. :func:`iter_jsonl_lines` is the one
JSONL line reader (each line decoded on its own: a non-UTF-8 or non-JSON line is an error for that
line, with its number, not for the file).

Outputs are published only when complete: everything is written to ``*.partial`` names (the image
folder too) and moved into place at the end; after an error (full disk, read-only folder, a bad
file) the partial files are removed.

Writers and readers stream: memory does not grow with the number of records.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import GeoVLError
from ..fileio import UTF8_BOM, JsonlLineError  # noqa: F401  (UTF8_BOM re-exported for the adapters)
from .schema import Counts, SampleError, validate_sample

PART = pa.struct([("type", pa.string()), ("text", pa.string())])
MESSAGE = pa.struct([("role", pa.string()), ("content", pa.list_(PART))])
ARROW_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("messages", pa.list_(MESSAGE)),
        ("images", pa.list_(pa.binary())),
        ("videos", pa.list_(pa.binary())),
        ("qtype", pa.string()),
        ("answer", pa.string()),
        ("source", pa.string()),
        ("meta", pa.string()),
    ]
)
ROW_GROUP = 64  # rows per Parquet row group: bounded memory, fast sequential reads


class DatasetFileError(GeoVLError):
    """A fatal problem with a whole file (unreadable, wrong schema). Names the file."""


def _fmt(path: str | os.PathLike) -> str:
    p = str(path)
    if p.endswith(".parquet"):
        return "parquet"
    if p.endswith(".jsonl") or p.endswith(".json"):
        return "jsonl"
    raise DatasetFileError(f"{p}: unknown dataset extension (use .parquet or .jsonl)")


def _to_row(s: dict) -> dict:
    msgs = [
        {"role": m["role"], "content": [{"type": p["type"], "text": p.get("text")} for p in m["content"]]}
        for m in s["messages"]
    ]
    return {
        "id": s["id"],
        "messages": msgs,
        "images": [bytes(b) for b in s["images"]],
        "videos": [bytes(b) for b in s.get("videos") or []],
        "qtype": s["qtype"],
        "answer": s["answer"],
        "source": s["source"],
        "meta": json.dumps(s.get("meta") or {}, ensure_ascii=False, sort_keys=True),
    }


def _from_row(row: dict) -> dict:
    """Arrow row -> sample dict (works for a subset of columns too)."""
    out = dict(row)
    if "messages" in row:
        out["messages"] = [
            {
                "role": m["role"],
                "content": [
                    {"type": p["type"]} if p["type"] in ("image", "video") else {"type": "text", "text": p["text"]}
                    for p in m["content"]
                ],
            }
            for m in row["messages"]
        ]
    if "images" in row:
        out["images"] = list(row["images"] or [])
    if "videos" in row:  # a sample without videos has no "videos" key (absent = none), as it was written
        if row["videos"]:
            out["videos"] = list(row["videos"])
        else:
            del out["videos"]
    if "meta" in row:
        out["meta"] = json.loads(row["meta"]) if row["meta"] else {}
    return out


def _sniff_ext(b: bytes) -> str:
    if b[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if b[:3] == b"\xff\xd8\xff":
        return "jpg"
    if b[:4] in (b"II*\x00", b"MM\x00*"):
        return "tif"
    if b[:4] == b"RIFF" and b[8:12] == b"WEBP":
        return "webp"
    return "bin"


def _sniff_video_ext(b: bytes) -> str:
    if b[4:8] == b"ftyp":
        return "mov" if b[8:10] == b"qt" else "mp4"
    if b[:4] == b"\x1a\x45\xdf\xa3":
        return "webm" if b"webm" in b[:64] else "mkv"
    if b[:4] == b"RIFF" and b[8:12] == b"AVI ":
        return "avi"
    return "bin"


VIDEO_MIME = {"mp4": "video/mp4", "mov": "video/quicktime", "webm": "video/webm", "mkv": "video/x-matroska"}
VIDEO_MIME["avi"] = "video/x-msvideo"


class DatasetWriter:
    """Write samples to ``path`` (.parquet or .jsonl) and rejected records to ``<stem>.rejects.jsonl``.

    Use as a context manager. ``write`` validates each sample; an invalid one is rejected with
    the validation reason instead of being written. ``counts`` keeps the bookkeeping.
    """

    def __init__(self, path: str | os.PathLike, rejects: str | os.PathLike | None = None, images: str = "files"):
        self.path = Path(path)
        self.fmt = _fmt(self.path)
        self.rejects_path = Path(rejects) if rejects else rejects_path_for(self.path)
        if images not in ("files", "base64"):
            raise ValueError("images must be 'files' or 'base64'")
        self.images_mode = images
        self.counts = Counts()
        self._buf: list[dict] = []
        self._pq: pq.ParquetWriter | None = None
        self._jsonl = None
        self._rej = None
        self._ids: set[str] = set()
        self._tmp = self.path.with_name(self.path.name + ".partial")
        self._rej_tmp = self.rejects_path.with_name(self.rejects_path.name + ".partial")
        self._img_dir = self.path.with_name(self.path.stem + "_images")
        self._img_tmp = self._img_dir.with_name(self._img_dir.name + ".partial")
        self._img_names: set[str] = set()

    # -- context manager -------------------------------------------------
    def __enter__(self) -> "DatasetWriter":
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self._img_tmp.is_dir():  # left by a run that was killed
                shutil.rmtree(self._img_tmp)
            self._rej = open(self._rej_tmp, "w", encoding="utf-8")
            if self.fmt == "parquet":
                self._pq = pq.ParquetWriter(self._tmp, ARROW_SCHEMA, compression="zstd")
            else:
                self._jsonl = open(self._tmp, "w", encoding="utf-8")
        except BaseException:
            self.close(ok=False)
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(ok=exc_type is None)

    def close(self, ok: bool = True) -> None:
        """``ok``: publish the outputs (replace ``path``, the rejects file and the image folder). Otherwise,
        or when publishing fails (a full disk), remove every partial file: nothing half-written stays."""
        try:
            if self._pq is not None:
                pw, self._pq = self._pq, None
                try:
                    if ok:
                        self._flush(pw)
                finally:
                    pw.close()
            for attr in ("_jsonl", "_rej"):
                f = getattr(self, attr)
                if f is not None:
                    setattr(self, attr, None)
                    f.close()
            if ok:
                self._publish()
        except BaseException:
            self._discard()
            raise
        if not ok:
            self._discard()

    def _publish(self) -> None:
        if self.fmt == "jsonl" and self.images_mode == "files" and (self._img_tmp.is_dir() or self._img_dir.is_dir()):
            old = self._img_dir.with_name(self._img_dir.name + ".old.partial")
            shutil.rmtree(old, ignore_errors=True)
            if self._img_dir.is_dir():
                os.replace(self._img_dir, old)  # the images of an earlier conversion to the same name
            if self._img_tmp.is_dir():
                os.replace(self._img_tmp, self._img_dir)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(self._tmp, self.path)
        os.replace(self._rej_tmp, self.rejects_path)

    def _discard(self) -> None:
        for f in (self._pq, self._jsonl, self._rej):
            try:
                if f is not None:
                    f.close()
            except Exception:  # noqa: BLE001 - closing a file on a full disk may fail again
                pass
        self._pq = self._jsonl = self._rej = None
        for p in (self._tmp, self._rej_tmp):
            try:
                p.unlink(missing_ok=True)
            except OSError:
                pass
        shutil.rmtree(self._img_tmp, ignore_errors=True)

    # -- writing ---------------------------------------------------------
    def read_one(self) -> None:
        """Count one input record (call once per record of the source)."""
        self.counts.read += 1

    def write(self, sample: dict) -> bool:
        """Validate and write; on failure, reject with the reason. Returns True when written."""
        try:
            validate_sample(sample)
            if sample["id"] in self._ids:
                raise SampleError("duplicate_id", sample["id"])
        except SampleError as e:
            self.reject(sample.get("source", "") if isinstance(sample, dict) else "", e.reason, e.detail)
            return False
        self._ids.add(sample["id"])
        self.counts.written += 1
        if self.fmt == "parquet":
            self._buf.append(_to_row(sample))
            if len(self._buf) >= ROW_GROUP:
                self._flush()
        else:
            self._jsonl.write(json.dumps(self._jsonl_record(sample), ensure_ascii=False) + "\n")
        return True

    def reject(self, source: str, reason: str, detail: str = "") -> None:
        self.counts.reject(reason)
        self._rej.write(rejects_line(source, reason, detail))

    def _flush(self, writer=None) -> None:
        if self._buf:
            (writer or self._pq).write_table(pa.Table.from_pylist(self._buf, schema=ARROW_SCHEMA))
            self._buf = []

    def _jsonl_record(self, s: dict) -> dict:
        rec = {k: s[k] for k in ("id", "messages", "qtype", "answer", "source")}
        rec["meta"] = s.get("meta") or {}
        imgs = []
        for b in s["images"]:
            ext = _sniff_ext(b)
            if self.images_mode == "base64":
                mime = {"png": "image/png", "jpg": "image/jpeg", "tif": "image/tiff", "webp": "image/webp"}.get(
                    ext, "application/octet-stream"
                )
                imgs.append(f"data:{mime};base64," + base64.b64encode(b).decode())
            else:
                # the same bytes are one file (RSVQA: ~100 questions per image)
                imgs.append(self._media_file(b, ext))
        rec["images"] = imgs
        vids = []
        for b in s.get("videos") or []:
            ext = _sniff_video_ext(b)
            if self.images_mode == "base64":
                vids.append(
                    f"data:{VIDEO_MIME.get(ext, 'application/octet-stream')};base64," + base64.b64encode(b).decode()
                )
            else:
                vids.append(self._media_file(b, ext))
        if vids:
            rec["videos"] = vids
        return rec

    def _media_file(self, b: bytes, ext: str) -> str:
        """Store ``b`` once in the media folder (``<stem>_images/``) and return its relative path."""
        name = image_file_name(b, ext)
        if name not in self._img_names:
            self._img_tmp.mkdir(exist_ok=True)
            (self._img_tmp / name).write_bytes(b)
            self._img_names.add(name)
        return f"{self._img_dir.name}/{name}"


def rejects_line(source: str, reason: str, detail: str = "") -> str:
    """One line of a rejects file (readable UTF-8; \\u escapes only for text that UTF-8 cannot carry)."""
    rec = {"source": source, "reason": reason, "detail": detail}
    line = json.dumps(rec, ensure_ascii=False)
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        line = json.dumps(rec)
    return line + "\n"


def image_file_name(data: bytes, ext: str) -> str:
    """The file name of an image in a JSONL output's image folder: a hash of its bytes (collision-free in
    practice, independent of record ids, which may map to the same safe name or be too long for one)."""
    return f"{hashlib.sha256(data).hexdigest()[:32]}.{ext}"


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``path`` whole or not at all (a ``.partial`` sibling moved into place; removed on failure)."""
    from ..fileio import write_text

    write_text(path, text)


def rejects_path_for(path: str | os.PathLike) -> Path:
    p = Path(path)
    return p.with_name(p.name.rsplit(".", 1)[0] + ".rejects.jsonl")


def _decode_image_ref(ref: str, base: Path, path: Path, line: int, kind: str = "image") -> bytes:
    if not isinstance(ref, str):
        raise DatasetFileError(f"{path}:{line}: each {kind} must be a path or a data: URI string")
    if ref.startswith("data:"):
        try:
            return base64.b64decode(ref.split(",", 1)[1], validate=True)
        except Exception as e:  # noqa: BLE001
            raise DatasetFileError(f"{path}:{line}: malformed data: URI {kind} ({e})") from e
    p = (base / ref) if not os.path.isabs(ref) else Path(ref)
    if p.exists():
        return p.read_bytes()
    try:
        return base64.b64decode(ref, validate=True)
    except Exception:  # noqa: BLE001
        raise DatasetFileError(f"{path}:{line}: {kind} {ref!r} is neither a file nor base64") from None


def iter_jsonl_lines(path: str | os.PathLike) -> Iterator[tuple[int, object]]:
    """(line number, parsed JSON value — or a :class:`SampleError` for that line) for each non-blank line.

    The one JSONL line reader: each line is decoded on its own, so a line that is not UTF-8
    (``bad_encoding``) or not JSON (``bad_json``) is an error for that line only, with its number, and the
    lines after it are still read. A UTF-8 byte-order mark on the first line is skipped.
    (:func:`geovl.fileio.iter_jsonl`, with each bad line as a :class:`SampleError` for the rejects file.)"""
    from ..fileio import iter_jsonl

    for n, obj in iter_jsonl(path, errors="yield"):
        if isinstance(obj, JsonlLineError):
            detail = f"not UTF-8 ({obj.detail})" if obj.reason == "bad_encoding" else obj.detail
            obj = SampleError(obj.reason, f"line {n}: {detail}")
        yield n, obj


def iter_jsonl_records(path: str | os.PathLike) -> Iterator[tuple[int, object]]:
    """(line number, parsed object) for each non-blank line; a bad line is a fatal error naming it."""
    from ..fileio import iter_jsonl

    yield from iter_jsonl(path, error_class=DatasetFileError)


def read_samples(
    path: str | os.PathLike, columns: list[str] | None = None, batch_size: int = ROW_GROUP
) -> Iterator[dict]:
    """Stream samples from a .parquet or .jsonl dataset file.

    ``columns`` (Parquet only) reads a subset, e.g. without ``images`` for fast statistics.
    """
    path = Path(path)
    if not path.exists():
        raise DatasetFileError(f"{path}: no such dataset file")
    if _fmt(path) == "parquet":
        try:
            pf = pq.ParquetFile(path)
        except Exception as e:  # noqa: BLE001
            raise DatasetFileError(f"{path}: not a readable Parquet file ({e})") from e
        names = set(pf.schema_arrow.names)
        need = set(columns or ARROW_SCHEMA.names) - {"meta", "videos"}  # both may be absent in older files
        missing = sorted(need - names)
        if missing:
            raise DatasetFileError(
                f"{path}: missing column(s) {missing}; a geovl dataset has {list(ARROW_SCHEMA.names)} "
                "(convert it with `geovl data convert`)"
            )
        cols = [c for c in (columns or ARROW_SCHEMA.names) if c in names]
        for batch in pf.iter_batches(batch_size=batch_size, columns=cols):
            for row in batch.to_pylist():
                yield _from_row(row)
    else:
        base = path.parent
        for n, rec in iter_jsonl_records(path):
            if not isinstance(rec, dict):
                raise DatasetFileError(f"{path}:{n}: each line must be a JSON object")
            missing = [c for c in ("id", "messages", "images", "qtype", "answer", "source") if c not in rec]
            if missing:
                raise DatasetFileError(f"{path}:{n}: missing field(s) {missing}")
            rec = dict(rec)
            rec.setdefault("meta", {})
            if columns is None or "images" in columns:
                rec["images"] = [_decode_image_ref(r, base, path, n) for r in rec["images"]]
            vids = rec.get("videos") or []
            if not isinstance(vids, list):
                raise DatasetFileError(f"{path}:{n}: videos must be a list")
            if vids and (columns is None or "videos" in columns):
                rec["videos"] = [_decode_image_ref(r, base, path, n, "video") for r in vids]
            yield rec


def count_samples(path: str | os.PathLike) -> int:
    path = Path(path)
    if not path.exists():
        raise DatasetFileError(f"{path}: no such dataset file")
    if _fmt(path) == "parquet":
        return pq.ParquetFile(path).metadata.num_rows
    return sum(1 for _ in iter_jsonl_records(path))
