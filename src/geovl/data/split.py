"""Split a conversion into train/test/... files BY IMAGE, streaming and deterministic.

``--split train=0.9,test=0.1 --seed N`` writes ``OUT.train.parquet`` and ``OUT.test.parquet``
(one rejects file ``OUT.rejects.jsonl`` for the whole conversion).

Rule: every distinct image (identified by a hash of its stored bytes, so the same picture
reached through two paths or two records counts as one) lives in exactly one split.

- An image seen for the first time gets its split from ``hash(seed, image)`` — a fixed
  point in [0, 1) compared with the cumulative fractions — so the assignment depends on the
  seed and the image, not on the record order.
- A sample goes to the split of its images. A multi-image sample whose images are all new
  goes to the split of its first image; its other images follow it. If its images were
  already placed in *different* splits, the sample cannot be placed without putting an image
  in two splits: it is rejected with reason ``split_conflict`` (counted, never silent).
- Text-only samples are placed by ``hash(seed, id)``.

Memory: one 8-byte key + split index per distinct image (not per sample, no pixels).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .io import DatasetWriter, rejects_line, rejects_path_for
from .schema import Counts, SampleError, validate_sample


def parse_split_spec(text: str) -> list[tuple[str, float]]:
    """``"train=0.9,test=0.1"`` -> ``[("train", 0.9), ("test", 0.1)]``; raises ``ValueError``."""
    out: list[tuple[str, float]] = []
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, frac = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ValueError(f"bad split item {item!r}: use NAME=FRACTION, e.g. train=0.9,test=0.1")
        if not all(c.isalnum() or c in "-_" for c in name):
            raise ValueError(f"bad split name {name!r}: letters, digits, '-' and '_' only")
        try:
            f = float(frac)
        except ValueError:
            raise ValueError(f"bad fraction {frac!r} for split {name!r}") from None
        if not 0.0 < f <= 1.0:
            raise ValueError(f"fraction for split {name!r} must be in (0, 1], got {f}")
        if any(n == name for n, _ in out):
            raise ValueError(f"split {name!r} given twice")
        out.append((name, f))
    if len(out) < 2:
        raise ValueError("a split needs at least two parts, e.g. train=0.9,test=0.1")
    total = sum(f for _, f in out)
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"split fractions must sum to 1, got {total:g}")
    return out


def split_path(out: str | os.PathLike, name: str) -> Path:
    """``OUT.parquet`` + ``train`` -> ``OUT.train.parquet``."""
    p = Path(out)
    stem, _, ext = p.name.rpartition(".")
    return p.with_name(f"{stem}.{name}.{ext}")


def image_key(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=8).digest()


class ImageSplitter:
    """Assigns samples to splits so that no image is in two splits (see module doc)."""

    def __init__(self, spec: list[tuple[str, float]], seed: int = 0):
        self.names = [n for n, _ in spec]
        self._cum = []
        acc = 0.0
        for _, f in spec:
            acc += f
            self._cum.append(acc)
        self._cum[-1] = 1.0 + 1e-12  # guard against rounding at the top end
        self._salt = f"geovl-split:{int(seed)}:".encode()
        self._placed: dict[bytes, int] = {}

    def _fixed(self, key: bytes) -> int:
        h = hashlib.blake2b(self._salt + key, digest_size=8).digest()
        u = int.from_bytes(h, "big") / 2**64
        for i, c in enumerate(self._cum):
            if u < c:
                return i
        return len(self._cum) - 1  # pragma: no cover

    def assign(self, sample: dict) -> str:
        """Split name for ``sample``; raises ``SampleError('split_conflict')`` if it cannot be placed."""
        images = (sample.get("images") or []) + (sample.get("videos") or [])  # a video is split like an image
        if not images:
            return self.names[self._fixed(b"id:" + sample["id"].encode())]
        keys = [image_key(bytes(b)) for b in images]
        placed = {self._placed[k] for k in keys if k in self._placed}
        if len(placed) > 1:
            names = sorted(self.names[i] for i in placed)
            raise SampleError("split_conflict", f"its images are already in different splits {names}")
        idx = placed.pop() if placed else self._fixed(keys[0])
        for k in keys:
            self._placed[k] = idx
        return self.names[idx]


class SplitWriter:
    """A :class:`DatasetWriter`-like sink that routes samples to one writer per split.

    Same interface as ``DatasetWriter`` (``read_one``, ``write``, ``reject``, ``counts``,
    context manager). Validation and the duplicate-id check are global (across splits);
    rejected records of every split go to one rejects file next to ``OUT``.
    """

    def __init__(self, out: str | os.PathLike, spec: list[tuple[str, float]], seed: int = 0):
        self.out = Path(out)
        self.splitter = ImageSplitter(spec, seed)
        self.paths = {name: split_path(self.out, name) for name, _ in spec}
        self.rejects_path = rejects_path_for(self.out)
        self.writers = {name: DatasetWriter(p) for name, p in self.paths.items()}
        self.counts = Counts()
        self.written_by_split = {name: 0 for name in self.paths}
        self._ids: set[str] = set()
        self._rej = None
        self._rej_tmp = self.rejects_path.with_name(self.rejects_path.name + ".partial")

    def __enter__(self) -> "SplitWriter":
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self._rej = open(self._rej_tmp, "w", encoding="utf-8")
            for w in self.writers.values():
                w.__enter__()
        except BaseException:
            self.close(ok=False)
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(ok=exc_type is None)

    def read_one(self) -> None:
        self.counts.read += 1

    def write(self, sample: dict) -> bool:
        try:
            validate_sample(sample)
            if sample["id"] in self._ids:
                raise SampleError("duplicate_id", sample["id"])
            name = self.splitter.assign(sample)
        except SampleError as e:
            self.reject(sample.get("source", "") if isinstance(sample, dict) else "", e.reason, e.detail)
            return False
        if not self.writers[name].write(sample):  # cannot happen: validated above
            raise RuntimeError(f"split writer {name} refused a validated sample {sample['id']!r}")
        self._ids.add(sample["id"])
        self.counts.written += 1
        self.written_by_split[name] += 1
        return True

    def reject(self, source: str, reason: str, detail: str = "") -> None:
        self.counts.reject(reason)
        self._rej.write(rejects_line(source, reason, detail))

    def close(self, ok: bool = True) -> None:
        """Publish every split and the rejects file (``ok``), else — or when that fails — remove the partial files."""
        try:
            for w in self.writers.values():
                w.close(ok=ok)
                # Each split writer has its own (empty: we validate first) rejects file; fold it into ours.
                if ok and w.rejects_path.exists():
                    extra = w.rejects_path.read_text(encoding="utf-8")
                    if extra and self._rej is not None:
                        self._rej.write(extra)
                    w.rejects_path.unlink()
            if self._rej is not None:
                rej, self._rej = self._rej, None
                rej.close()
                if ok:
                    os.replace(self._rej_tmp, self.rejects_path)
        except BaseException:
            ok = False
            raise
        finally:
            if not ok:
                for w in self.writers.values():
                    w.close(ok=False)
                if self._rej is not None:
                    try:
                        self._rej.close()
                    except OSError:
                        pass
                    self._rej = None
                self._rej_tmp.unlink(missing_ok=True)
