"""Dataset files: streaming read/write of samples as Parquet or JSONL, plus the rejects file.

Parquet (one row per sample) is the canonical format; it is readable by ``pyarrow`` and by
``datasets.load_dataset("parquet", data_files=...)``. ``images`` is a plain ``list<binary>``
column (not the ``datasets`` Image feature, which is ~17x slower to read); ``meta`` is a JSON
string so that sources with different metadata share one Arrow schema.

JSONL: one sample per line. On write, images go to files in ``<stem>_images/`` next to the
output and are referenced by relative path (or inlined as ``data:`` URIs with
``images="base64"``). On read, an image entry may be a path relative to the JSONL file, a
``data:image/...;base64,`` URI, or raw base64.

Writers and readers stream: memory does not grow with the number of records.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from .schema import Counts, SampleError, validate_sample

PART = pa.struct([("type", pa.string()), ("text", pa.string())])
MESSAGE = pa.struct([("role", pa.string()), ("content", pa.list_(PART))])
ARROW_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("messages", pa.list_(MESSAGE)),
        ("images", pa.list_(pa.binary())),
        ("qtype", pa.string()),
        ("answer", pa.string()),
        ("source", pa.string()),
        ("meta", pa.string()),
    ]
)
ROW_GROUP = 64  # rows per Parquet row group: bounded memory, fast sequential reads


class DatasetFileError(Exception):
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
                    {"type": "image"} if p["type"] == "image" else {"type": "text", "text": p["text"]}
                    for p in m["content"]
                ],
            }
            for m in row["messages"]
        ]
    if "images" in row:
        out["images"] = list(row["images"] or [])
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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(self.path.name + ".partial")
        self._img_dir = self.path.with_name(self.path.stem + "_images")

    # -- context manager -------------------------------------------------
    def __enter__(self) -> "DatasetWriter":
        self._rej = open(self.rejects_path.with_name(self.rejects_path.name + ".partial"), "w", encoding="utf-8")
        if self.fmt == "parquet":
            self._pq = pq.ParquetWriter(self._tmp, ARROW_SCHEMA, compression="zstd")
        else:
            self._jsonl = open(self._tmp, "w", encoding="utf-8")
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(ok=exc_type is None)

    def close(self, ok: bool = True) -> None:
        if self._pq is not None:
            if ok:
                self._flush()
            self._pq.close()
            self._pq = None
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._rej is not None:
            self._rej.close()
            self._rej = None
        rej_tmp = self.rejects_path.with_name(self.rejects_path.name + ".partial")
        if ok:
            # Only a complete conversion replaces the outputs; a crash leaves *.partial behind.
            os.replace(self._tmp, self.path)
            os.replace(rej_tmp, self.rejects_path)

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
        rec = {"source": source, "reason": reason, "detail": detail}
        self._rej.write(json.dumps(rec, ensure_ascii=False) + "\n")

    def _flush(self) -> None:
        if self._buf:
            self._pq.write_table(pa.Table.from_pylist(self._buf, schema=ARROW_SCHEMA))
            self._buf = []

    def _jsonl_record(self, s: dict) -> dict:
        rec = {k: s[k] for k in ("id", "messages", "qtype", "answer", "source")}
        rec["meta"] = s.get("meta") or {}
        imgs = []
        for i, b in enumerate(s["images"]):
            ext = _sniff_ext(b)
            if self.images_mode == "base64":
                mime = {"png": "image/png", "jpg": "image/jpeg", "tif": "image/tiff", "webp": "image/webp"}.get(
                    ext, "application/octet-stream"
                )
                imgs.append(f"data:{mime};base64," + base64.b64encode(b).decode())
            else:
                self._img_dir.mkdir(parents=True, exist_ok=True)
                safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in s["id"])
                name = f"{safe}_{i}.{ext}"
                (self._img_dir / name).write_bytes(b)
                imgs.append(f"{self._img_dir.name}/{name}")
        rec["images"] = imgs
        return rec


def rejects_path_for(path: str | os.PathLike) -> Path:
    p = Path(path)
    return p.with_name(p.name.rsplit(".", 1)[0] + ".rejects.jsonl")


def _decode_image_ref(ref: str, base: Path, path: Path, line: int) -> bytes:
    if ref.startswith("data:"):
        try:
            return base64.b64decode(ref.split(",", 1)[1], validate=True)
        except Exception as e:  # noqa: BLE001
            raise DatasetFileError(f"{path}:{line}: malformed data: URI image ({e})") from e
    p = (base / ref) if not os.path.isabs(ref) else Path(ref)
    if p.exists():
        return p.read_bytes()
    try:
        return base64.b64decode(ref, validate=True)
    except Exception:  # noqa: BLE001
        raise DatasetFileError(f"{path}:{line}: image {ref!r} is neither a file nor base64") from None


def iter_jsonl_records(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """(line number, parsed object) for each non-blank line; a bad line is a fatal error."""
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield n, json.loads(line)
            except json.JSONDecodeError as e:
                raise DatasetFileError(f"{path}:{n}: not valid JSON ({e.msg})") from e


def read_samples(path: str | os.PathLike, columns: list[str] | None = None, batch_size: int = ROW_GROUP) -> Iterator[dict]:
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
        need = set(columns or ARROW_SCHEMA.names) - {"meta"}
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
            yield rec


def count_samples(path: str | os.PathLike) -> int:
    path = Path(path)
    if not path.exists():
        raise DatasetFileError(f"{path}: no such dataset file")
    if _fmt(path) == "parquet":
        return pq.ParquetFile(path).metadata.num_rows
    return sum(1 for _ in iter_jsonl_records(path))
