"""Conversion keeps every record's own image and never half-writes (issue 21, faults 7, 11, 12):

- JSONL output image files are named by their bytes: ids ``a/b``, ``a_b``, ``a?b`` keep their own images;
- a record with an unusable id (300 characters, a control character, a lone surrogate) is rejected, the rest
  converted; a non-UTF-8 line is rejected with its line number; a CSV with an unclosed quote fails naming the
  line instead of swallowing the rows after it;
- a full disk (simulated ENOSPC, and a real small tmpfs where mounting is allowed) or a read-only folder is a
  one-line error naming the file, and no ``.partial`` file or image folder is left behind."""

from __future__ import annotations

import errno
import io
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from geovl.data.io import read_samples
from sft_util import run_cli


def _png(seed: int, size=(24, 16)) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _rec(id, image: str | None, answer="water") -> dict:
    content = ([{"type": "image"}] if image else []) + [{"type": "text", "text": "What is this?"}]
    return {
        "id": id,
        "messages": [
            {"role": "user", "content": content},
            {"role": "assistant", "content": [{"type": "text", "text": answer}]},
        ],
        "images": [image] if image else [],
        "qtype": "open",
        "answer": answer,
    }


def _write_jsonl(path: Path, recs) -> Path:
    with open(path, "wb") as f:
        for r in recs:
            f.write(r if isinstance(r, bytes) else (json.dumps(r) + "\n").encode())
    return path


def _convert(capsys, src: Path, out: Path, *extra) -> tuple[int, str]:
    return run_cli(
        capsys, "data", "convert", "--from", "messages", "--input", src, "--output", out, "--no-progress", *extra
    )


def _error_line(rc: int, err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and "Traceback" not in err and len(lines) == 1 and lines[0].startswith("geovl: error: "), err[-3000:]
    return lines[0]


@pytest.fixture()
def src(tmp_path):
    d = tmp_path / "src"
    d.mkdir()
    for i in range(3):
        (d / f"{i}.png").write_bytes(_png(i))
    return d


# ------------------------------------------------------------------------------ fault 7


def test_jsonl_output_keeps_each_records_own_image_whatever_the_ids(src, tmp_path, capsys):
    ids = ["a/b", "a_b", "a?b"]
    inp = _write_jsonl(
        src / "in.jsonl", [_rec(i, f"{n}.png") for n, i in enumerate(ids)] + [_rec("same-as-0", "0.png")]
    )
    out = tmp_path / "out" / "o.jsonl"
    rc, err = _convert(capsys, inp, out)
    assert rc == 0, err
    got = {s["id"]: s["images"][0] for s in read_samples(out)}
    for n, i in enumerate(ids):
        assert np.array_equal(_pixels(got[i]), _pixels((src / f"{n}.png").read_bytes())), i
    assert got["same-as-0"] == got["a/b"]
    files = sorted(p.name for p in (out.parent / "o_images").iterdir())
    assert len(files) == 3 and all(len(f) == 32 + 4 for f in files)  # one file per distinct image, named by its hash
    summary = json.loads((out.parent / "o.summary.json").read_text())
    assert summary["written"] == 4 and summary["conserved"]


# ------------------------------------------------------------------------------ fault 12


@pytest.mark.parametrize("ext", ["jsonl", "parquet"])
def test_unusable_ids_reject_their_record_and_the_rest_converts(src, tmp_path, capsys, ext):
    recs = [
        _rec("ok1", "0.png"),
        _rec("x" * 300, "1.png"),
        _rec("line\nbreak", "2.png"),
        _rec("\ud800", "2.png"),
        _rec("ok2", "1.png"),
    ]
    inp = _write_jsonl(src / "in.jsonl", recs)
    out = tmp_path / f"o.{ext}"
    rc, err = _convert(capsys, inp, out)
    assert rc == 0, err
    assert [s["id"] for s in read_samples(out)] == ["ok1", "ok2"]
    rejects = [json.loads(ln) for ln in (tmp_path / "o.rejects.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [(r["source"], r["reason"]) for r in rejects] == [
        ("in.jsonl#L2", "bad_id"),
        ("in.jsonl#L3", "bad_id"),
        ("in.jsonl#L4", "bad_id"),
    ]
    assert "300 characters" in rejects[0]["detail"]
    s = json.loads((tmp_path / "o.summary.json").read_text())
    assert (s["read"], s["written"], s["rejected"], s["conserved"]) == (5, 2, 3, True)


def test_a_non_utf8_line_is_rejected_with_its_number_and_the_rest_converts(src, tmp_path, capsys):
    bad = (
        json.dumps(_rec("bad", "0.png"), ensure_ascii=False)
        .replace("water", "wat\u00e9r")
        .encode("utf-8")
        .replace("wat\u00e9r".encode(), b"wat\xe9r")
        + b"\n"
    )  # Latin-1 byte in a UTF-8 file
    inp = _write_jsonl(src / "in.jsonl", [_rec("ok1", "0.png"), bad, _rec("ok2", "1.png")])
    rc, err = _convert(capsys, inp, tmp_path / "o.parquet")
    assert rc == 0, err
    assert [s["id"] for s in read_samples(tmp_path / "o.parquet")] == ["ok1", "ok2"]
    (rej,) = [json.loads(ln) for ln in (tmp_path / "o.rejects.jsonl").read_text().splitlines()]
    assert (
        rej["reason"] == "bad_encoding"
        and rej["source"] == "in.jsonl#L2"
        and rej["detail"].startswith("line 2: not UTF-8")
    )
    s = json.loads((tmp_path / "o.summary.json").read_text())
    assert (s["read"], s["written"], s["rejected"], s["conserved"]) == (3, 2, 1, True)

    # the same for LLaVA JSONL (the one line reader)
    llava = [{"id": "l1", "conversations": [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Hello."}]}]
    lines = (
        json.dumps(llava[0]).encode()
        + b"\n"
        + b'{"id": "l2", "conversations": "\xff"}\n'
        + json.dumps({**llava[0], "id": "l3"}).encode()
        + b"\n"
    )
    (src / "l.jsonl").write_bytes(lines)
    rc, err = run_cli(
        capsys,
        "data",
        "convert",
        "--from",
        "llava",
        "--input",
        src / "l.jsonl",
        "--output",
        tmp_path / "l.parquet",
        "--no-progress",
    )
    assert rc == 0, err
    assert [s["id"] for s in read_samples(tmp_path / "l.parquet")] == ["l1", "l3"]
    (rej,) = [json.loads(ln) for ln in (tmp_path / "l.rejects.jsonl").read_text().splitlines()]
    assert rej["reason"] == "bad_encoding" and rej["source"] == "l.jsonl#L2"


def test_csv_unclosed_quote_fails_naming_the_line_instead_of_swallowing_rows(tmp_path, capsys):
    table = tmp_path / "t.csv"
    table.write_text(
        'question,answer\nIs it water?,yes\n"Is it a field?,no\nIs it a road?,no\nIs it "dry",no\n', encoding="utf-8"
    )
    mapping = tmp_path / "m.yaml"
    mapping.write_text("question_column: question\nanswer_column: answer\n")
    rc, err = run_cli(
        capsys,
        "data",
        "convert",
        "--from",
        "csv",
        "--mapping",
        mapping,
        "--input",
        table,
        "--output",
        tmp_path / "o.parquet",
        "--no-progress",
    )
    line = _error_line(rc, err)
    assert str(table) in line and "starts on line 3" in line and "quote" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.yaml", "t.csv"]
    # a quoted cell over several lines is still one valid cell
    table.write_text('question,answer\n"Is it\nwater?",yes\nIs it a road?,no\n', encoding="utf-8")
    rc, err = run_cli(
        capsys,
        "data",
        "convert",
        "--from",
        "csv",
        "--mapping",
        mapping,
        "--input",
        table,
        "--output",
        tmp_path / "o.parquet",
        "--no-progress",
    )
    assert rc == 0, err
    assert [s["answer"] for s in read_samples(tmp_path / "o.parquet")] == ["yes", "no"]


# ------------------------------------------------------------------------------ fault 11


def _leftovers(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize("ext", ["jsonl", "parquet"])
def test_full_disk_is_one_line_naming_the_file_and_leaves_nothing(src, tmp_path, capsys, monkeypatch, ext):
    import pyarrow.parquet as pq

    inp = _write_jsonl(src / "in.jsonl", [_rec(f"r{i}", f"{i % 3}.png") for i in range(6)])
    out_dir = tmp_path / "out"
    out_dir.mkdir()

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(getattr(self, "where", self)))

    if ext == "jsonl":
        monkeypatch.setattr(Path, "write_bytes", full)  # the image files
    else:
        pq.ParquetWriter.where = str(out_dir / "o.parquet.partial")
        monkeypatch.setattr(pq.ParquetWriter, "write_table", full)
    rc, err = _convert(capsys, inp, out_dir / f"o.{ext}")
    line = _error_line(rc, err)
    assert "No space left on device" in line and "disk is full" in line and str(out_dir) in line
    assert _leftovers(out_dir) == []


def _mount_tmpfs(path: Path, opts: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


def _umount(d: Path) -> None:
    if subprocess.run(["umount", str(d)], capture_output=True, timeout=20).returncode:
        subprocess.run(["umount", "-l", str(d)], capture_output=True, timeout=20)  # busy (a file left open): detach


@pytest.fixture()
def small_disk(tmp_path):
    """A real 128 KiB file system (tmpfs), where this process may mount one (root); skipped elsewhere."""
    d = tmp_path / "small"
    if not _mount_tmpfs(d, "size=128k"):
        pytest.skip("cannot mount a tmpfs here (needs root); the simulated ENOSPC test covers the same path")
    yield d
    _umount(d)


@pytest.fixture()
def read_only_dir(tmp_path):
    d = tmp_path / "ro"
    if os.geteuid() != 0:
        d.mkdir()
        d.chmod(0o555)
        yield d
        d.chmod(0o755)
        return
    if not _mount_tmpfs(d, "ro,size=64k"):
        pytest.skip("root cannot make a read-only folder here without mounting one")
    yield d
    _umount(d)


@pytest.mark.parametrize("ext", ["jsonl", "parquet"])
def test_real_full_disk(src, tmp_path, capsys, small_disk, ext):
    for i in range(40):  # ~40 × 7 KB of incompressible images: more than the 128 KiB disk holds
        (src / f"big{i}.png").write_bytes(_png(100 + i, size=(48, 48)))
    inp = _write_jsonl(src / "in.jsonl", [_rec(f"r{i}", f"big{i}.png") for i in range(40)])
    rc, err = _convert(capsys, inp, small_disk / f"o.{ext}")
    line = _error_line(rc, err)
    assert str(small_disk) in line and "disk is full" in line
    assert _leftovers(small_disk) == []


def test_read_only_folder(src, capsys, read_only_dir):
    inp = _write_jsonl(src / "in.jsonl", [_rec("r0", "0.png")])
    rc, err = _convert(capsys, inp, read_only_dir / "o.parquet")
    line = _error_line(rc, err)
    assert str(read_only_dir / "o.rejects.jsonl.partial") in line or str(read_only_dir) in line
    assert "read-only" in line or "permission" in line.lower()
    assert _leftovers(read_only_dir) == []
