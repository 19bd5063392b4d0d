"""geovl.fileio: the one JSONL reader (line-numbered errors) and the one whole-file writer (kill-safe)."""

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from geovl import fileio
from geovl.errors import GeoVLError
from geovl.fileio import JsonlLineError, atomic_path, atomic_write, iter_jsonl, write_json, write_jsonl, write_text


def test_jsonl_values_with_line_numbers(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_bytes(b'\xef\xbb\xbf{"a": 1}\n\n  \n[2]\n{"z": "\xe4\xb8\xad"}\n')
    assert list(iter_jsonl(p)) == [(1, {"a": 1}), (4, [2]), (5, {"z": "中"})]


def test_jsonl_errors_name_file_and_line(tmp_path):
    p = tmp_path / "b.jsonl"
    p.write_bytes(b'{"a": 1}\n{"a": }\n{"ok": 2}\n\xff\xfe\n[3]\n')
    with pytest.raises(JsonlLineError, match=r"b.jsonl:2: not valid JSON \(Expecting value \(column 7\)\)") as e:
        list(iter_jsonl(p))
    assert isinstance(e.value, GeoVLError) and e.value.line == 2 and e.value.reason == "bad_json"
    got = list(iter_jsonl(p, errors="yield", objects=True))
    assert [n for n, _ in got] == [1, 2, 3, 4, 5]
    assert got[0][1] == {"a": 1} and got[2][1] == {"ok": 2}
    enc, arr = got[3][1], got[4][1]
    assert enc.reason == "bad_encoding" and str(enc).endswith("b.jsonl:4: not UTF-8 text (byte 1: invalid start byte)")
    assert arr.reason == "not_object" and "b.jsonl:5: not a JSON object (got list)" in str(arr)

    class MyError(Exception):
        pass

    with pytest.raises(MyError, match="b.jsonl:2: not valid JSON"):
        list(iter_jsonl(p, error_class=MyError))
    deep = tmp_path / "deep.jsonl"
    deep.write_text("[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(JsonlLineError, match="deep.jsonl:1: not valid JSON \\(nested too deeply\\)"):
        list(iter_jsonl(deep))


def test_write_helpers_replace_whole_files(tmp_path):
    write_json(tmp_path / "sub" / "x.json", {"名": 1})
    assert (tmp_path / "sub" / "x.json").read_text(encoding="utf-8") == '{\n  "名": 1\n}\n'
    assert write_jsonl(tmp_path / "y.jsonl", [{"a": 1}, {"b": "中"}]) == 2
    assert [r for _, r in iter_jsonl(tmp_path / "y.jsonl")] == [{"a": 1}, {"b": "中"}]
    with atomic_path(tmp_path / "z.bin") as tmp:
        assert tmp.parent == tmp_path and tmp.name.endswith(".partial")
        tmp.write_bytes(b"abc")
    assert (tmp_path / "z.bin").read_bytes() == b"abc"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub", "y.jsonl", "z.bin"]  # no temporary left
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "y.jsonl").stat().st_mode & 0o777 == 0o666 & ~umask  # usual permissions, not mkstemp's 0600


def test_an_error_keeps_the_old_file_and_removes_the_temporary(tmp_path, monkeypatch):
    target = tmp_path / "t.json"
    write_text(target, "old\n")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as f:
            f.write("half of the new")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old\n" and sorted(os.listdir(tmp_path)) == ["t.json"]

    def full_disk(fd):  # the disk fills up when the data is flushed to it
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(fileio.os, "fsync", full_disk)
    with pytest.raises(OSError) as e:
        write_json(target, {"new": True})
    assert e.value.errno == errno.ENOSPC
    assert target.read_text() == "old\n" and sorted(os.listdir(tmp_path)) == ["t.json"]


def test_a_killed_writer_never_leaves_a_torn_file(tmp_path):
    """SIGKILL in the middle of a write: the target is still the old file, whole."""
    target = tmp_path / "big.jsonl"
    old = [{"i": i, "old": True} for i in range(1000)]
    write_jsonl(target, old)
    code = textwrap.dedent(f"""
        import sys, time
        from geovl.fileio import atomic_write
        with atomic_write({str(target)!r}) as f:
            for i in range(100000):
                f.write('{{"i": %d, "new": true}}\\n' % i)
                if i == 50000:
                    f.flush()
                    print("half", flush=True)
                    time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "half"
        partial = [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]
        assert len(partial) == 1 and partial[0].stat().st_size > 0  # the new content is on its way
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert [r for _, r in iter_jsonl(target)] == old  # the old file, whole
    assert json.loads(target.read_text().splitlines()[-1]) == {"i": 999, "old": True}
