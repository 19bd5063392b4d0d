"""Reading JSONL and writing files whole: the one way geovl does both (bottom layer, no geovl imports but errors).

**JSONL** (:func:`iter_jsonl`): ``(line number, value)`` for each non-blank line of a file. Each line
is decoded on its own, so a line that is not UTF-8 or not JSON is an error *for that line*, with its
number: by default a :class:`JsonlLineError` (``path:line: not valid JSON (…)``), or, with
``errors="yield"``, the error is yielded in place of the value and the lines after it are still read
(readers that put bad lines in a rejects file). A UTF-8 byte-order mark on the first line is
skipped. ``objects=True`` also requires each value to be a JSON object.

**Writing whole** (:func:`atomic_path`, :func:`atomic_write`, :func:`write_text`, :func:`write_json`):
the content goes to a temporary file in the target's folder (``<name>.<random>.partial``), is flushed
and ``fsync``-ed, then moved over the target with :func:`os.replace` (atomic on POSIX: a reader or a
crash sees the old file or the new one, never half of one). On any error — a full disk (ENOSPC)
included — the temporary file is removed and the target is left as it was. A process killed with
SIGKILL cannot clean up: it may leave a ``*.partial`` file, but never a torn target.
"""

from __future__ import annotations

import json
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import GeoVLError

UTF8_BOM = b"\xef\xbb\xbf"


class JsonlLineError(GeoVLError, ValueError):
    """A JSONL line that cannot be read: ``reason`` is ``bad_encoding``, ``bad_json`` or ``not_object``;
    ``line`` its 1-based number; ``detail`` what is wrong; the message names the file and line."""

    def __init__(self, path, line: int, reason: str, detail: str):
        self.path, self.line, self.reason, self.detail = str(path), line, reason, detail
        what = {"bad_encoding": "not UTF-8 text", "bad_json": "not valid JSON", "not_object": "not a JSON object"}[
            reason
        ]
        super().__init__(f"{self.path}:{line}: {what} ({detail})")


def iter_jsonl(path, errors: str = "raise", objects: bool = False, error_class=None) -> Iterator[tuple[int, object]]:
    """``(line number, parsed value)`` for each non-blank line of ``path`` (see the module docstring).
    ``errors="raise"`` (default) raises :class:`JsonlLineError` at the first bad line — or
    ``error_class(message)`` when given, for readers with their own error family; ``errors="yield"``
    yields ``(line number, JsonlLineError)`` for it and reads on."""
    if errors not in ("raise", "yield"):
        raise ValueError(f"errors must be 'raise' or 'yield', got {errors!r}")
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            if n == 1 and raw.startswith(UTF8_BOM):
                raw = raw[len(UTF8_BOM) :]
            err = None
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                err = JsonlLineError(path, n, "bad_encoding", f"byte {e.start + 1}: {e.reason}")
            else:
                if not line.strip():
                    continue
                try:
                    value = json.loads(line)
                except json.JSONDecodeError as e:
                    err = JsonlLineError(path, n, "bad_json", f"{e.msg} (column {e.colno})")
                except RecursionError:
                    err = JsonlLineError(path, n, "bad_json", "nested too deeply")
                else:
                    if objects and not isinstance(value, dict):
                        err = JsonlLineError(path, n, "not_object", f"got {type(value).__name__}")
            if err is None:
                yield n, value
            elif errors == "raise":
                if error_class is not None:
                    raise error_class(str(err)) from None
                raise err
            else:
                yield n, err


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path, mkdir: bool = True) -> Iterator[Path]:
    """A temporary path beside ``path`` to write by name (rasterio, PIL, safetensors …); on a clean
    exit it is fsync-ed and moved over ``path``, on an error removed. Yields the temporary path."""
    path = Path(path)
    if mkdir:
        path.parent.mkdir(parents=True, exist_ok=True)
    while True:  # like mkstemp, but with the usual permissions (0666 less the umask), not 0600
        tmp = path.with_name(f"{path.name}.{secrets.token_hex(4)}.partial")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            break
        except FileExistsError:
            continue
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


@contextmanager
def atomic_write(path, mode: str = "w", encoding: str | None = "utf-8", mkdir: bool = True):
    """An open file (``mode`` ``"w"`` text, ``"wb"`` bytes) whose content replaces ``path`` whole on a
    clean exit (see the module docstring)."""
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    with atomic_path(path, mkdir) as tmp:
        with open(tmp, mode, encoding=None if "b" in mode else encoding) as f:
            yield f


def write_text(path, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` whole or not at all."""
    with atomic_write(path, "w", encoding) as f:
        f.write(text)


def write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` whole or not at all."""
    with atomic_write(path, "wb") as f:
        f.write(data)


def write_json(path, obj, indent: int | None = 2) -> None:
    """``obj`` as UTF-8 JSON (non-ASCII kept, ``indent``, a final newline) to ``path``, whole or not at all."""
    write_text(path, json.dumps(obj, ensure_ascii=False, indent=indent) + "\n")


def write_jsonl(path, records) -> int:
    """One JSON object per line (non-ASCII kept) to ``path``, whole or not at all; returns the count."""
    n = 0
    with atomic_write(path, "w") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            n += 1
    return n
