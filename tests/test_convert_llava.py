"""`geovl data convert --from llava`: LLaVA/ShareGPT (MMDU-45k style) JSON list and JSONL with
<image> tags anywhere, multi-image multi-turn dialogues, bad records of every reason, EXIF
orientation, and split-by-image (including multi-image conflicts)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from geovl.cli import main
from geovl.data.adapters.llava import iter_json_array, split_at_tags
from geovl.data.io import read_samples
from geovl.data.schema import SampleError
from geovl.data.split import ImageSplitter, image_key, parse_split_spec, split_path

MAXPX = 5000


def _png(path: Path, seed: int, size=(32, 32)):
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return arr


def _pixels(b: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(b)).convert("RGB"))


def H(v):
    return {"from": "human", "value": v}


def G(v):
    return {"from": "gpt", "value": v}


GOOD = [
    {
        "id": "mm1",
        "image": ["a.png", "b.jpg"],
        "conversations": [
            H("<image>\n<image>\nCompare the two scenes."),
            G("Scene A has water."),
            H("Which has more buildings?"),
            G("B"),
        ],
    },
    {
        "id": "mm2",
        "image": ["a.png", "c.png", "d.png"],
        "conversations": [H("First: <image>\nSecond:<image> and third <image>\nWhat changed?"), G("Nothing.")],
    },
    {
        "id": "mm3",
        "image": ["a.png", "b.jpg"],
        "conversations": [H("<image>\nDescribe."), G("A lake."), H("Now this one: <image>"), G("A field.")],
    },
    {
        "id": "s1",
        "image": "sub/e.png",
        "qtype": "yes_no",
        "conversations": [
            {"from": "system", "value": "You are an EO analyst."},
            {"from": "user", "value": "<image>\nIs there water?"},
            {"from": "assistant", "value": "yes"},
        ],
    },
    {"id": "t1", "conversations": [H("你好，介绍一下遥感。"), G("遥感是……")]},
    {
        "id": 64,
        "image": ["a.png", "c.png"],
        "conversations": [  # MMDU-45k layout, integer id
            H("Image1: <image>\nImage2: <image>\n### Questions:\nQ: Compare the two images."),
            G("They differ."),
            H("Q: Which is greener?"),
            G("Image2."),
        ],
    },
    {"id": "rot", "image": "rot.jpg", "conversations": [H("<image>\nWhat is shown?"), G("A gradient.")]},
]
BAD = [
    (
        {"id": "b1", "image": ["a.png", "b.jpg"], "conversations": [H("<image>\nOne tag only"), G("x")]},
        "tag_count_mismatch",
    ),
    ({"id": "b2", "image": "a.png", "conversations": [H("<image>\nQ"), G("A"), H("dangling")]}, "bad_roles"),
    ({"id": "b3", "image": "a.png", "conversations": [H("<image>\nQ"), H("again"), G("A")]}, "bad_roles"),
    ({"id": "b4", "image": "nope.png", "conversations": [H("<image>\nQ"), G("A")]}, "missing_image"),
    ({"id": "b5", "image": "../outside.png", "conversations": [H("<image>\nQ"), G("A")]}, "path_escape"),
    ({"id": "b6", "image": "broken.png", "conversations": [H("<image>\nQ"), G("A")]}, "undecodable_image"),
    ({"id": "s1", "conversations": [H("Q"), G("A")]}, "duplicate_id"),
    ({"id": "b8", "image": "a.png", "conversations": [H("<image>\nQ"), G("")]}, "empty_answer"),
    ({"id": "b9", "image": "a.png", "conversations": [H("Q"), G("<image> here")]}, "image_in_assistant_turn"),
    ({"id": "b10", "image": "big.png", "conversations": [H("<image>\nQ"), G("A")]}, "image_too_large"),
    ({"id": "b11", "conversations": [H("Q"), G("A")], "qtype": "weird"}, "bad_qtype"),
    (42, "bad_record"),
    ({"id": "b13", "image": "a.png", "conversations": [{"from": "robot", "value": "<image>"}, G("A")]}, "bad_roles"),
    ({"id": "b14", "image": "/etc/passwd", "conversations": [H("<image>\nQ"), G("A")]}, "path_escape"),
]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("llava")
    d = root / "data"
    (d / "sub").mkdir(parents=True)
    px = {
        "a.png": _png(d / "a.png", 1),
        "c.png": _png(d / "c.png", 3),
        "d.png": _png(d / "d.png", 4),
        "sub/e.png": _png(d / "sub" / "e.png", 5),
    }
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(
        d / "b.jpg", quality=90
    )
    _png(d / "big.png", 6, size=(100, 100))
    _png(root / "outside.png", 7)
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50)
    # EXIF orientation 6 (rotate 90° clockwise to display): stored 40 wide x 20 high
    grad = np.zeros((20, 40, 3), np.uint8)
    grad[..., 0] = np.arange(40, dtype=np.uint8)[None, :] * 6
    grad[..., 1] = np.arange(20, dtype=np.uint8)[:, None] * 12
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(grad).save(d / "rot.jpg", quality=95, exif=exif)
    records = GOOD + [r for r, _ in BAD]
    (d / "train.json").write_text(json.dumps(records, ensure_ascii=False, indent=1), encoding="utf-8")
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    lines.insert(3, '{"id": "broken json", "conversations": [')
    (d / "train.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"dir": d, "px": px}


def _convert(src: Path, out: Path, *extra) -> int:
    return main(
        [
            "data",
            "convert",
            "--from",
            "llava",
            "--input",
            str(src),
            "--output",
            str(out),
            "--max-pixels",
            str(MAXPX),
            "--no-progress",
            *extra,
        ]
    )


@pytest.fixture(scope="module")
def converted(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("o") / "mmdu.parquet"
    assert _convert(data["dir"] / "train.json", out) == 0
    return out


def _expected_reasons(extra=None):
    exp = {}
    for _, reason in BAD:
        exp[reason] = exp.get(reason, 0) + 1
    if extra:
        exp[extra] = exp.get(extra, 0) + 1
    return dict(sorted(exp.items()))


def test_counts_per_reason(converted):
    s = json.loads(converted.with_name("mmdu.summary.json").read_text())
    assert s["read"] == len(GOOD) + len(BAD)
    assert s["written"] == len(GOOD)
    assert s["rejected_by_reason"] == _expected_reasons()
    assert s["conserved"] is True
    rej = [json.loads(x) for x in converted.with_name("mmdu.rejects.jsonl").read_text().splitlines()]
    assert {r["source"] for r in rej if r["reason"] == "tag_count_mismatch"} == {"train.json#b1"}


def test_multi_image_multi_turn_placement(converted, data):
    got = {s["id"]: s for s in read_samples(converted)}
    img, txt = {"type": "image"}, lambda t: {"type": "text", "text": t}
    mm1 = got["mm1"]
    assert mm1["messages"] == [
        {"role": "user", "content": [img, img, txt("Compare the two scenes.")]},
        {"role": "assistant", "content": [txt("Scene A has water.")]},
        {"role": "user", "content": [txt("Which has more buildings?")]},
        {"role": "assistant", "content": [txt("B")]},
    ]
    assert mm1["answer"] == "B" and mm1["qtype"] == "open" and mm1["meta"]["n_turns"] == 2
    assert np.array_equal(_pixels(mm1["images"][0]), data["px"]["a.png"])
    assert np.array_equal(_pixels(mm1["images"][1]), np.asarray(Image.open(data["dir"] / "b.jpg").convert("RGB")))
    assert got["mm2"]["messages"][0]["content"] == [
        txt("First: "),
        img,
        txt("Second:"),
        img,
        txt(" and third "),
        img,
        txt("What changed?"),
    ]
    assert [_pixels(b).tobytes() for b in got["mm2"]["images"]] == [
        data["px"][k].tobytes() for k in ("a.png", "c.png", "d.png")
    ]
    assert got["64"]["messages"][0]["content"] == [
        txt("Image1: "),
        img,
        txt("Image2: "),
        img,
        txt("### Questions:\nQ: Compare the two images."),
    ]
    assert got["64"]["answer"] == "Image2." and got["64"]["meta"]["image_paths"] == ["a.png", "c.png"]
    mm3 = got["mm3"]["messages"]
    assert mm3[0]["content"] == [img, txt("Describe.")] and mm3[2]["content"] == [txt("Now this one: "), img]
    s1 = got["s1"]
    assert [m["role"] for m in s1["messages"]] == ["system", "user", "assistant"]
    assert s1["qtype"] == "yes_no" and s1["answer"] == "yes"
    assert np.array_equal(_pixels(s1["images"][0]), data["px"]["sub/e.png"])
    t1 = got["t1"]
    assert t1["images"] == [] and t1["answer"] == "遥感是……"


def test_exif_orientation_6_is_applied(converted, data):
    got = {s["id"]: s for s in read_samples(converted)}
    stored = Image.open(io.BytesIO(got["rot"]["images"][0]))
    assert stored.size == (20, 40)  # upright: was 40x20 with orientation 6
    expect = np.asarray(ImageOps.exif_transpose(Image.open(data["dir"] / "rot.jpg")).convert("RGB"))
    assert np.array_equal(np.asarray(stored.convert("RGB")), expect)
    assert stored.getexif().get(0x0112, 1) == 1


def test_jsonl_input_same_samples_plus_bad_json(converted, data, tmp_path):
    out = tmp_path / "from_jsonl.jsonl"
    assert _convert(data["dir"] / "train.jsonl", out) == 0
    s = json.loads((tmp_path / "from_jsonl.summary.json").read_text())
    assert s["rejected_by_reason"] == _expected_reasons("bad_json")
    assert s["read"] == len(GOOD) + len(BAD) + 1
    a = {x["id"]: x for x in read_samples(converted)}
    b = {x["id"]: x for x in read_samples(out)}  # JSONL output round-trips through read_samples
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k]["messages"] == b[k]["messages"] and a[k]["images"] == b[k]["images"]
    rej = [json.loads(x) for x in (tmp_path / "from_jsonl.rejects.jsonl").read_text().splitlines()]
    assert [r["source"] for r in rej if r["reason"] == "bad_json"] == ["train.jsonl#L4"]


def test_split_at_tags_unit():
    assert split_at_tags("<image>\nQ") == [{"type": "image"}, {"type": "text", "text": "Q"}]
    assert split_at_tags("a<image>b") == [
        {"type": "text", "text": "a"},
        {"type": "image"},
        {"type": "text", "text": "b"},
    ]
    assert split_at_tags("<image>\n<image>\n") == [{"type": "image"}, {"type": "image"}]


def test_json_array_streaming_reader(tmp_path, monkeypatch):
    import geovl.data.adapters.llava as lv

    monkeypatch.setattr(lv, "_CHUNK", 7)  # records straddle many refills
    recs = [{"id": i, "text": "x" * (i * 13), "nested": [1, {"a": "]"}]} for i in range(30)] + [5, "s", [1, 2]]
    p = tmp_path / "a.json"
    p.write_text(json.dumps(recs, indent=2))
    assert list(iter_json_array(p)) == recs
    p.write_text(json.dumps(recs)[:-20])
    from geovl.data.convert import ConvertError

    with pytest.raises(ConvertError, match="a.json"):
        list(iter_json_array(p))


def test_fatal_errors(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("this is not json\n{}", encoding="utf-8")
    rc = main(
        [
            "data",
            "convert",
            "--from",
            "llava",
            "--input",
            str(bad),
            "--output",
            str(tmp_path / "o.parquet"),
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    assert rc != 0 and "bad.json" in err
    rc = main(
        [
            "data",
            "convert",
            "--from",
            "llava",
            "--input",
            str(tmp_path / "nope.json"),
            "--output",
            str(tmp_path / "o.parquet"),
            "--no-progress",
        ]
    )
    assert rc != 0 and "nope.json" in capsys.readouterr().err
    rc = main(["data", "convert", "--from", "llava", "--input", str(bad), "--output", str(tmp_path / "o.csv")])
    assert rc != 0 and ".parquet" in capsys.readouterr().err
    assert not list(tmp_path.glob("o.*"))


# ---------------------------------------------------------------------------- splits


def test_split_spec_parsing():
    assert parse_split_spec("train=0.9,test=0.1") == [("train", 0.9), ("test", 0.1)]
    assert split_path("x/out.parquet", "train") == Path("x/out.train.parquet")
    for bad in ("train=0.9", "train=0.5,test=0.6", "train=0.5,train=0.5", "a=x,b=1", "tr ain=0.5,b=0.5", ""):
        with pytest.raises(ValueError):
            parse_split_spec(bad)


def test_image_splitter_multi_image_rules():
    sp = ImageSplitter([("train", 0.5), ("test", 0.5)], seed=1)
    imgs = [f"img{i}".encode() for i in range(40)]
    nat = {b: sp._fixed(image_key(b)) for b in imgs}
    a = imgs[0]
    b = next(x for x in imgs if nat[x] != nat[a])
    c = next(x for x in imgs[1:] if x != b and nat[x] != nat[a])
    s = lambda i, *ims: {"id": str(i), "images": list(ims)}  # noqa: E731
    first = sp.assign(s(1, a))
    second = sp.assign(s(2, b))
    assert first != second
    with pytest.raises(SampleError) as e:
        sp.assign(s(3, a, b))
    assert e.value.reason == "split_conflict"
    assert sp.assign(s(4, a, c)) == first  # c is new: it follows a
    assert sp.assign(s(5, c)) == first  # and stays there
    # same seed, same image -> same split regardless of order; text-only placed by id
    sp2 = ImageSplitter([("train", 0.5), ("test", 0.5)], seed=1)
    assert sp2.assign(s(9, b)) == second
    assert sp2.assign({"id": "t", "images": []}) == sp.assign({"id": "t", "images": []})


def test_split_by_image_end_to_end(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    for i in range(24):
        _png(d / f"p{i}.png", 100 + i, size=(8, 8))
    recs = []
    for i in range(60):  # 3 questions per image ...
        recs.append({"id": f"q{i}", "image": f"p{i % 20}.png", "conversations": [H(f"<image>\nQ{i}"), G("A")]})
    for i in range(8):  # ... plus pairs, some of which may straddle two splits
        recs.append(
            {
                "id": f"pair{i}",
                "image": [f"p{i}.png", f"p{20 + i % 4}.png"],
                "conversations": [H("<image><image>\nCompare"), G("same")],
            }
        )
    src = d / "x.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in recs) + "\n")

    def run(seed, name):
        out = tmp_path / name / "ds.parquet"
        assert (
            main(
                [
                    "data",
                    "convert",
                    "--from",
                    "llava",
                    "--input",
                    str(src),
                    "--output",
                    str(out),
                    "--split",
                    "train=0.7,test=0.3",
                    "--seed",
                    str(seed),
                    "--no-progress",
                ]
            )
            == 0
        )
        summ = json.loads((tmp_path / name / "ds.summary.json").read_text())
        parts = {
            sp: {s["id"]: s for s in read_samples(tmp_path / name / f"ds.{sp}.parquet")} for sp in ("train", "test")
        }
        return summ, parts

    summ, parts = run(7, "a")
    assert summ["read"] == 68 and summ["conserved"]
    assert set(summ["rejected_by_reason"]) <= {"split_conflict"}
    assert summ["written"] == len(parts["train"]) + len(parts["test"]) == 68 - summ["rejected"]
    assert summ["outputs"]["train"]["written"] == len(parts["train"])
    assert len(parts["train"]) > 0 and len(parts["test"]) > 0
    keys = {sp: {image_key(b) for s in parts[sp].values() for b in s["images"]} for sp in parts}
    assert not keys["train"] & keys["test"]  # no image in two splits
    assert (tmp_path / "a" / "ds.rejects.jsonl").exists()
    assert not list((tmp_path / "a").glob("ds.train.rejects*")) and not list((tmp_path / "a").glob("*.partial"))
    # deterministic for a seed; another seed gives another assignment
    _, again = run(7, "b")
    assert {sp: sorted(v) for sp, v in again.items()} == {sp: sorted(v) for sp, v in parts.items()}
    _, other = run(8, "c")
    assert sorted(other["train"]) != sorted(parts["train"])
