"""The LLaVA/MMDU adapter streams a big JSON list with ijson: the first record comes out before the rest of
the file exists, memory follows one record, and a bad record later in the file is reported with its index
after the good ones before it were yielded."""

from __future__ import annotations

import json
import os
import threading

import pytest

from geovl.data.adapters.llava import iter_json_array, iter_json_records
from geovl.data.convert import ConvertError


def rec(i: int) -> dict:
    return {
        "id": f"r{i}",
        "image": f"{i}.png",
        "score": i / 7,
        "conversations": [{"from": "human", "value": f"<image>\\n问题 {i} ]}}"}, {"from": "gpt", "value": "是"}],
    }


def test_first_record_before_the_rest_of_the_file_exists(tmp_path):
    """A FIFO: the writer sends the opening bracket and one record, then waits until the reader has that record
    — only then the rest follows. A reader that needed the whole document would block for ever (timeout)."""
    fifo = tmp_path / "big.json"
    os.mkfifo(fifo)
    got_first = threading.Event()
    waited = {}

    def writer():
        with open(fifo, "w", encoding="utf-8") as w:
            w.write("[" + json.dumps(rec(0)) + ",")
            w.flush()
            waited["ok"] = got_first.wait(timeout=60)
            w.write(",".join(json.dumps(rec(i)) for i in range(1, 200)) + "]")

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    it = iter_json_array(fifo)
    assert next(it) == rec(0)  # the rest is not written yet
    got_first.set()
    rest = list(it)
    t.join(timeout=60)
    assert waited["ok"] and rest == [rec(i) for i in range(1, 200)]


def test_a_bad_record_later_is_reported_with_its_index(tmp_path):
    good = [json.dumps(rec(i)) for i in range(5)]
    p = tmp_path / "mmdu.json"
    p.write_text(
        "[" + ",".join(good) + ', {"id": "r5", "conversations": [tru]}, ' + json.dumps(rec(6)) + "]", encoding="utf-8"
    )
    seen = []
    with pytest.raises(ConvertError, match=r"mmdu\.json: not valid JSON in record 6 \("):
        for r in iter_json_array(p):
            seen.append(r)
    assert seen == [rec(i) for i in range(5)]  # the records before the bad one came out


@pytest.mark.parametrize(
    "text, msg",
    [
        ('{"data": [1, 2]}', "not a JSON list"),
        ("", "not a JSON list"),
        ('[{"a": 1}, {"b": 2}', r"truncated JSON list \(no closing '\]'\) after 2 records"),
        ('[{"a": 1} {"b": 2}]', "expected ',' between records after record 1"),
        ('[{"a": 1}] [2]', r"unexpected data after the closing '\]'"),
    ],
)
def test_broken_lists(tmp_path, text, msg):
    p = tmp_path / "x.json"
    p.write_text(text, encoding="utf-8")
    with pytest.raises(ConvertError, match=msg):
        list(iter_json_array(p))


def test_bom_floats_and_unicode(tmp_path):
    recs = [rec(i) for i in range(3)] + [1.25, -3, "三", None, True, {"nested": [[], {}]}]
    p = tmp_path / "bom.json"
    p.write_bytes(b"\xef\xbb\xbf" + json.dumps(recs, ensure_ascii=False, indent=1).encode("utf-8"))
    assert list(iter_json_array(p)) == recs  # floats as float (not Decimal), exactly as json.loads reads them
    assert [s for s, _ in iter_json_records(p)] == [f"bom.json#{i}" for i in range(len(recs))]


def test_not_utf8_is_one_clear_error(tmp_path):
    p = tmp_path / "latin1.json"
    p.write_bytes(b'[{"id": "a", "value": "caf\xe9"}]')
    with pytest.raises(ConvertError, match=r"latin1\.json: not UTF-8 text .*record 1"):
        list(iter_json_records(p))
