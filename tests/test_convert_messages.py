"""`geovl data convert --from messages`: JSONL already in the schema, images as relative
paths, data URIs or raw base64; every broken line rejected with its reason; geovl's own JSONL
output converts back to identical samples."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from geovl.cli import main
from geovl.data.io import DatasetWriter, read_samples
from geovl.data.schema import make_sample

MAXPX = 5000


def _encoded(seed, fmt="PNG", size=(16, 12)):
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def _rec(id, images, question="What is this?", answer="water", qtype="open", **kw):
    n = len(images)
    rec = {
        "id": id,
        "messages": [
            {"role": "user", "content": [{"type": "image"}] * n + [{"type": "text", "text": question}]},
            {"role": "assistant", "content": [{"type": "text", "text": answer}]},
        ],
        "images": images,
        "qtype": qtype,
        "answer": answer,
    }
    rec.update(kw)
    return rec


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    d = tmp_path_factory.mktemp("msgs")
    (d / "imgs").mkdir()
    png = _encoded(1)
    (d / "imgs" / "a.png").write_bytes(png)
    jpg = _encoded(2, "JPEG")
    (d / "big.png").write_bytes(_encoded(3, size=(100, 100)))
    (d.parent / "outside.png").write_bytes(png)
    uri = "data:image/png;base64," + base64.b64encode(_encoded(4)).decode()
    raw = base64.b64encode(jpg).decode()
    assert raw.startswith("/9j/")  # looks like an absolute path: must still be read as base64
    good = [
        _rec("p1", ["imgs/a.png"], meta={"scene": "s1"}, source="orig#1"),
        _rec("u1", [uri]),
        _rec("r1", [raw], qtype="yes_no", answer="yes"),
        _rec("t1", [], question="你好", answer="您好"),
        _rec("m2", ["imgs/a.png", uri], question="Compare."),
    ]
    bad = [
        ('{"id": "x", "messages": [', "bad_json"),
        ({k: v for k, v in _rec("b1", []).items() if k != "qtype"}, "bad_schema"),
        (
            {**_rec("b2", []), "messages": [{"role": "robot", "content": [{"type": "text", "text": "hi"}]}]},
            "bad_schema",
        ),
        ({**_rec("b3", ["imgs/a.png"]), "images": ["imgs/a.png", "imgs/a.png"]}, "image_count_mismatch"),
        (_rec("b4", ["../outside.png"]), "path_escape"),
        (_rec("b5", ["imgs/none.png"]), "missing_image"),
        (_rec("b6", ["data:image/png;base64,!!!notbase64"]), "undecodable_image"),
        (_rec("p1", ["imgs/a.png"]), "duplicate_id"),
        (_rec("b8", ["imgs/a.png"], answer=""), "empty_answer"),
        (_rec("b9", [], qtype="essay"), "bad_qtype"),
        ([1, 2, 3], "bad_schema"),
        (_rec("b11", ["big.png"]), "image_too_large"),
        ({**_rec("b12", []), "images": "imgs/a.png"}, "bad_schema"),
    ]
    lines = [json.dumps(r, ensure_ascii=False) for r in good]
    for rec, _ in bad:
        lines.append(rec if isinstance(rec, str) else json.dumps(rec, ensure_ascii=False))
    lines.insert(2, "")  # blank lines are not records
    (d / "in.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"dir": d, "good": good, "bad": bad, "png": png, "jpg": jpg}


def test_counts_and_reasons(src, tmp_path):
    out = tmp_path / "o.parquet"
    assert (
        main(
            [
                "data",
                "convert",
                "--from",
                "messages",
                "--input",
                str(src["dir"] / "in.jsonl"),
                "--output",
                str(out),
                "--max-pixels",
                str(MAXPX),
                "--no-progress",
            ]
        )
        == 0
    )
    s = json.loads((tmp_path / "o.summary.json").read_text())
    exp = {}
    for _, r in src["bad"]:
        exp[r] = exp.get(r, 0) + 1
    assert s["read"] == len(src["good"]) + len(src["bad"])
    assert s["written"] == len(src["good"])
    assert s["rejected_by_reason"] == dict(sorted(exp.items()))
    rej = [json.loads(x) for x in (tmp_path / "o.rejects.jsonl").read_text().splitlines()]
    assert rej[0]["source"] == "in.jsonl#L7" and rej[0]["reason"] == "bad_json" and "line 7" in rej[0]["detail"]
    got = {g["id"]: g for g in read_samples(out)}
    assert got["p1"]["images"] == [src["png"]] and got["p1"]["meta"] == {"scene": "s1"}
    assert got["p1"]["source"] == "orig#1" and got["u1"]["source"] == "in.jsonl#L2"
    assert got["r1"]["images"] == [src["jpg"]] and got["r1"]["qtype"] == "yes_no"
    assert got["t1"]["images"] == [] and got["t1"]["answer"] == "您好"
    assert len(got["m2"]["images"]) == 2


def test_own_jsonl_output_converts_back_identically(tmp_path):
    samples = [
        make_sample(
            f"s{i}",
            f"Q{i}?",
            f"A{i}",
            images=[_encoded(10 + i)],
            qtype="open",
            source=f"x#{i}",
            meta={"i": i, "lang": "en"},
        )
        for i in range(5)
    ]
    first = tmp_path / "first.jsonl"
    with DatasetWriter(first) as w:
        for s in samples:
            w.read_one()
            w.write(s)
    assert (tmp_path / "first_images").is_dir()
    out = tmp_path / "second.parquet"
    assert (
        main(["data", "convert", "--from", "messages", "--input", str(first), "--output", str(out), "--no-progress"])
        == 0
    )
    back = list(read_samples(out))
    assert back == samples


def test_not_a_file_is_fatal(tmp_path, capsys):
    rc = main(
        [
            "data",
            "convert",
            "--from",
            "messages",
            "--input",
            str(tmp_path),
            "--output",
            str(tmp_path / "o.parquet"),
            "--no-progress",
        ]
    )
    assert rc != 0 and str(tmp_path) in capsys.readouterr().err


# ------------------------------------------------------------------------------ driver options


def _ok_file(tmp_path: Path, n: int) -> Path:
    (tmp_path / "img").mkdir(exist_ok=True)
    lines = []
    for i in range(n):
        (tmp_path / "img" / f"{i}.png").write_bytes(_encoded(100 + i))
        lines.append(json.dumps(_rec(f"s{i}", [f"img/{i}.png"])))
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(lines) + "\n")
    return src


def test_limit_and_progress_bar(tmp_path, capsys):
    src = _ok_file(tmp_path, 6)
    out = tmp_path / "o.parquet"
    assert (
        main(["data", "convert", "--from", "messages", "--input", str(src), "--output", str(out), "--limit", "4"]) == 0
    )
    cap = capsys.readouterr()
    assert "convert messages" in cap.err and "4/4" in cap.err  # tqdm on stderr
    assert "conserved: yes" in cap.out and "读取" in cap.out
    assert [s["id"] for s in read_samples(out)] == ["s0", "s1", "s2", "s3"]
    assert json.loads((tmp_path / "o.summary.json").read_text())["read"] == 4


def test_split_with_jsonl_outputs(tmp_path):
    src = _ok_file(tmp_path, 12)
    out = tmp_path / "o.jsonl"
    assert (
        main(
            [
                "data",
                "convert",
                "--from",
                "messages",
                "--input",
                str(src),
                "--output",
                str(out),
                "--split",
                "train=0.5,test=0.5",
                "--seed",
                "3",
                "--no-progress",
            ]
        )
        == 0
    )
    train = list(read_samples(tmp_path / "o.train.jsonl"))
    test = list(read_samples(tmp_path / "o.test.jsonl"))
    assert len(train) + len(test) == 12 and train and test
    assert (tmp_path / "o.train_images").is_dir() and (tmp_path / "o.test_images").is_dir()
    assert not {s["images"][0] for s in train} & {s["images"][0] for s in test}
    assert (tmp_path / "o.rejects.jsonl").read_text() == ""


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--preset", "building-defect"], "--preset"),
        (["--bin-counts"], "--bin-counts"),
        (["--question", "q"], "--question"),
        (["--split", "train=0.8,test=0.1"], "sum to 1"),
        (["--max-pixels", "0"], "--max-pixels"),
    ],
)
def test_option_errors(tmp_path, capsys, extra, needle):
    src = _ok_file(tmp_path, 1)
    rc = main(
        [
            "data",
            "convert",
            "--from",
            "messages",
            "--input",
            str(src),
            "--output",
            str(tmp_path / "o.parquet"),
            "--no-progress",
            *extra,
        ]
    )
    assert rc != 0 and needle in capsys.readouterr().err
    assert not list(tmp_path.glob("o.*"))


def test_chat_form_with_inline_images_and_inferred_qtypes(tmp_path):
    """The common chat form: image references inline in the content parts (``image``, ``url`` or
    OpenAI's ``image_url``), string contents, no ``images`` / ``qtype`` / ``answer``: images are taken
    in order, the answer from the last assistant turn, the qtype inferred from the question (and
    counted in the summary) unless given; broken chat records are rejected with their reason."""
    (tmp_path / "imgs").mkdir()
    a, b = _encoded(11), _encoded(12)
    (tmp_path / "imgs" / "a.png").write_bytes(a)
    (tmp_path / "imgs" / "b.png").write_bytes(b)
    uri = "data:image/png;base64," + base64.b64encode(b).decode()

    def chat(question, answer, *parts, **kw):
        return {
            "messages": [
                {"role": "user", "content": [*parts, {"type": "text", "text": question}]},
                {"role": "assistant", "content": answer},
            ],
            **kw,
        }

    recs = [
        chat("图中是否有水体？", "是", {"type": "image", "image": "imgs/a.png"}),
        chat("How many buildings are there?", "3", {"type": "image_url", "image_url": {"url": uri}}, id="c2"),
        chat("耕地面积约为多少公顷？", "约12公顷", {"type": "image", "url": "imgs/b.png"}),
        chat(
            "Describe the scene.",
            "Fields and a river.",
            {"type": "image", "image": "imgs/a.png"},
            {"type": "image", "image": "imgs/b.png"},
        ),
        chat("Report the defects.", '{"risk": "low"}', {"type": "image", "image": "imgs/a.png"}, qtype="structured"),
        chat("Is there water?", "yes", {"type": "image"}),  # no reference: nothing to load
        {"messages": [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "Is there water?"}]},
    ]
    src = tmp_path / "chat.jsonl"
    src.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in recs) + "\n", encoding="utf-8")
    out = tmp_path / "chat.parquet"
    assert (
        main(["data", "convert", "--from", "messages", "--input", str(src), "--output", str(out), "--no-progress"]) == 0
    )
    summary = json.loads((tmp_path / "chat.summary.json").read_text())
    assert summary["read"] == 7 and summary["written"] == 5 and summary["rejected"] == 2 and summary["conserved"]
    assert summary["rejected_by_reason"] == {"bad_schema": 2}
    assert summary["qtype_inferred"] == 4
    got = {s["id"]: s for s in read_samples(out)}
    assert set(got) == {"chat-L1", "c2", "chat-L3", "chat-L4", "chat-L5"}
    assert [got[i]["qtype"] for i in ("chat-L1", "c2", "chat-L3", "chat-L4", "chat-L5")] == [
        "yes_no",
        "count",
        "area",
        "open",
        "structured",
    ]
    assert got["chat-L3"]["answer"] == "约12公顷" and got["c2"]["answer"] == "3"
    assert got["chat-L4"]["messages"][0]["content"][:2] == [{"type": "image"}, {"type": "image"}]
    assert got["chat-L1"]["meta"]["qtype_inferred"] is True and "qtype_inferred" not in got["chat-L5"]["meta"]

    def pixels(data):
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))

    assert [pixels(x).tolist() for x in got["chat-L4"]["images"]] == [pixels(a).tolist(), pixels(b).tolist()]
    assert pixels(got["c2"]["images"][0]).tolist() == pixels(b).tolist()
    rejects = [json.loads(line) for line in (tmp_path / "chat.rejects.jsonl").read_text().splitlines()]
    assert any("without its reference" in r["detail"] for r in rejects)
    assert any("last turn must be the assistant" in r["detail"] for r in rejects)
