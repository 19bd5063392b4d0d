"""`geovl data convert --from rsvqa`: official RSVQA split files (exact published field names),
real TIFFs (8-bit georeferenced Sentinel-2-like, 16-bit, corrupt, oversized), bad records of
every reason, exact counts, decoded pixels, Parquet/JSONL outputs."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from geovl.cli import main
from geovl.data.adapters.rsvqa import BINS, bin_value
from geovl.data.io import read_samples
from geovl.imagery.geotiff import Raster, write_raster

pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")

PREFIX = "LR_split_test"
MAX_PIXELS = 4096  # our test images are 32x32 = 1024 px; the "too large" one is 80x80


def _img(i, questions_ids, active=True, sensor="S2", res="10m"):
    return {
        "id": i,
        "date_added": 1579864752.93 + i,
        "original_name": f"{1200 + i}.png",
        "sensor": sensor,
        "upperleft_map_x": 600000.0 + 2560 * i,
        "upperleft_map_y": 5800000.0,
        "res_x": res,
        "res_y": res,
        "people_id": 0,
        "type": "0",
        "questions_ids": questions_ids,
        "active": active,
    }


def _q(i, img_id, qtype, text, answers_ids=None, active=True):
    return {
        "id": i,
        "date_added": 1579864753.07 + i / 1e4,
        "img_id": img_id,
        "people_id": 0,
        "type": qtype,
        "question": text,
        "answers_ids": [i] if answers_ids is None else answers_ids,
        "active": active,
    }


def _a(i, answer, question_id=None, active=True):
    return {
        "id": i,
        "date_added": 1579864753.08 + i / 1e4,
        "question_id": i if question_id is None else question_id,
        "people_id": 0,
        "answer": answer,
        "active": active,
    }


def _write_split(folder: Path, prefix: str, images, questions, answers):
    for key, recs in (("images", images), ("questions", questions), ("answers", answers)):
        (folder / f"{prefix}_{key}.json").write_text(json.dumps({key: recs}), encoding="utf-8")


def _rgb8(seed):
    return np.random.default_rng(seed).integers(0, 256, (3, 32, 32), dtype=np.uint8)


# 17 questions: (type, text, answer) plus what must happen to each
QUESTIONS = [
    # image 0: 8-bit georeferenced RGB TIFF (like the Sentinel-2 RSVQA-LR patches)
    ("presence", "Is a road present?", "yes"),  # 0 written
    ("comp", "Are there more buildings than water areas?", "no"),  # 1 written
    ("rural_urban", "Is it a rural or an urban area", "rural"),  # 2 written
    ("count", "How many buildings are there?", "34"),  # 3 written
    ("count", "What is the number of roads?", "0"),  # 4 written
    # image 1: 16-bit TIFF
    ("presence", "Is a water area present?", "yes"),  # 5 written
    ("count", "How many grass areas are there?", "1162"),  # 6 written
    # image 2: inactive image (belongs to another split)
    ("presence", "Is there a farmland?", "no"),  # 7 inactive question
    ("presence", "Is there a forest?", "yes"),  # 8 active question, inactive image
    # image 3: tif file missing
    ("presence", "Is there a park?", "no"),  # 9 missing_image
    # image 4: corrupt tif
    ("presence", "Is there a lake?", "no"),  # 10 undecodable_image
    # image 5: 80x80 > --max-pixels
    ("presence", "Is there a river?", "yes"),  # 11 image_too_large
    # image 0 again, bad answers
    ("presence", "Is a small building present?", "yes"),  # 12 inactive answer
    ("presence", "Is a large building present?", ""),  # 13 empty_answer
    ("count", "How many parkings are there?", "many"),  # 14 bad_field_value
    ("presence", "Is a church present?", "no"),  # 15 answer_mismatch
    ("presence", "   ", "no"),  # 16 empty_question
    ("presence", "Is there a bridge?", "yes"),  # 17 missing_answer (answers_ids out of range)
]
EXPECTED_REJECTS = {
    "inactive": 3,
    "missing_image": 1,
    "undecodable_image": 1,
    "image_too_large": 1,
    "empty_answer": 1,
    "bad_field_value": 1,
    "answer_mismatch": 1,
    "empty_question": 1,
    "missing_answer": 1,
}
WRITTEN = [0, 1, 2, 3, 4, 5, 6]
IMG_OF_Q = {
    0: 0,
    1: 0,
    2: 0,
    3: 0,
    4: 0,
    5: 1,
    6: 1,
    7: 2,
    8: 2,
    9: 3,
    10: 4,
    11: 5,
    12: 0,
    13: 0,
    14: 0,
    15: 0,
    16: 0,
    17: 0,
}


@pytest.fixture(scope="module")
def lr(tmp_path_factory):
    root = tmp_path_factory.mktemp("rsvqa_lr")
    imgdir = root / "Images_LR"
    imgdir.mkdir()
    px0 = _rgb8(0)
    write_raster(imgdir / "0.tif", Raster(px0, "EPSG:32631", (10.0, 0.0, 600000.0, 0.0, -10.0, 5800000.0)))
    px1 = np.random.default_rng(1).integers(0, 12000, (3, 32, 32), dtype=np.uint16)
    write_raster(imgdir / "1.tif", Raster(px1), compress=None)
    write_raster(imgdir / "2.tif", Raster(_rgb8(2)))
    (imgdir / "4.tif").write_bytes(b"II*\x00" + b"\x07" * 300)
    write_raster(imgdir / "5.tif", Raster(np.zeros((3, 80, 80), np.uint8)))
    qs_of = {}
    for qi, im in IMG_OF_Q.items():
        qs_of.setdefault(im, []).append(qi)
    images = [_img(i, qs_of.get(i, []), active=(i != 2)) for i in range(6)]
    questions, answers = [], []
    for i, (t, text, ans) in enumerate(QUESTIONS):
        questions.append(_q(i, IMG_OF_Q[i], t, text, active=(i != 7), answers_ids=[999] if i == 17 else None))
        answers.append(_a(i, ans, active=(i != 12), question_id=(3 if i == 15 else None)))
    _write_split(root, PREFIX, images, questions, answers)
    return {"root": root, "px0": px0, "px1": px1}


@pytest.fixture(scope="module")
def lr_out(lr, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "lr.parquet"
    rc = main(
        [
            "data",
            "convert",
            "--from",
            "rsvqa",
            "--input",
            str(lr["root"]),
            "--split-prefix",
            PREFIX,
            "--output",
            str(out),
            "--max-pixels",
            str(MAX_PIXELS),
            "--no-progress",
        ]
    )
    assert rc == 0
    return out


def _png_pixels(b: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(b)).convert("RGB"))


def test_counts_conserve_and_every_reason_is_exact(lr_out):
    s = json.loads(lr_out.with_name("lr.summary.json").read_text())
    assert s["read"] == len(QUESTIONS) == 18
    assert s["written"] == len(WRITTEN)
    assert s["rejected_by_reason"] == EXPECTED_REJECTS
    assert s["conserved"] is True and s["written"] + s["rejected"] == s["read"]
    rejects = [json.loads(line) for line in lr_out.with_name("lr.rejects.jsonl").read_text().splitlines()]
    assert len(rejects) == sum(EXPECTED_REJECTS.values())
    by_source = {r["source"]: r["reason"] for r in rejects}
    assert by_source[f"{PREFIX}_questions.json#7"] == "inactive"
    assert by_source[f"{PREFIX}_questions.json#8"] == "inactive"
    assert by_source[f"{PREFIX}_questions.json#12"] == "inactive"
    assert by_source[f"{PREFIX}_questions.json#9"] == "missing_image"
    assert by_source[f"{PREFIX}_questions.json#11"] == "image_too_large"
    assert all(r["detail"] for r in rejects)


def test_samples_types_answers_and_meta(lr_out):
    samples = {s["meta"]["question_id"]: s for s in read_samples(lr_out)}
    assert sorted(samples) == WRITTEN
    expect_qtype = {0: "yes_no", 1: "yes_no", 2: "choice", 3: "count", 4: "count", 5: "yes_no", 6: "count"}
    for qid, s in samples.items():
        t, text, ans = QUESTIONS[qid]
        assert s["qtype"] == expect_qtype[qid]
        assert s["answer"] == ans
        assert s["id"] == f"{PREFIX}-q{qid}"
        assert s["messages"][0] == {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}
        assert s["messages"][1] == {"role": "assistant", "content": [{"type": "text", "text": ans}]}
        assert s["meta"]["rsvqa_type"] == t and s["meta"]["img_id"] == IMG_OF_Q[qid]
        assert s["meta"]["sensor"] == "S2" and s["meta"]["res_x"] == "10m"
        assert s["source"] == f"{PREFIX}_questions.json#{qid}"
    assert samples[3]["meta"]["value"] == 34
    # georeferenced patch: CRS + transform kept
    assert samples[0]["meta"]["crs"] == "EPSG:32631"
    assert samples[0]["meta"]["pixel_size"] == [10.0, 10.0]
    assert "crs" not in samples[5]["meta"]


def test_decoded_images_equal_source_pixels(lr, lr_out):
    samples = {s["meta"]["question_id"]: s for s in read_samples(lr_out)}
    got0 = _png_pixels(samples[0]["images"][0])
    assert np.array_equal(got0, lr["px0"].transpose(1, 2, 0))  # 8-bit: exact
    # all questions of image 0 carry the identical bytes
    assert len({samples[q]["images"][0] for q in (0, 1, 2, 3, 4)}) == 1
    # 16-bit: per-band 2-98 % percentile stretch to 8 bit
    px1 = lr["px1"].astype(np.float64)
    exp = []
    for b in px1:
        lo, hi = np.percentile(b, [2, 98])
        exp.append(np.round(np.clip((b - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8))
    got1 = _png_pixels(samples[5]["images"][0])
    assert np.array_equal(got1, np.stack(exp, -1))


def test_parquet_loads_with_pyarrow_and_datasets(lr_out):
    t = pq.read_table(lr_out)
    assert t.num_rows == len(WRITTEN)
    assert t.schema.field("images").type == pa.list_(pa.binary())
    import datasets

    ds = datasets.load_dataset("parquet", data_files=str(lr_out), split="train")
    assert len(ds) == len(WRITTEN)
    assert isinstance(ds[0]["images"][0], bytes)
    assert sorted(ds["qtype"]) == sorted(["yes_no", "yes_no", "choice", "count", "count", "yes_no", "count"])


def test_each_image_decoded_once(lr, tmp_path, monkeypatch):
    import geovl.imagery.decode as dec

    calls = []
    real = dec.load_image

    def counting(path, max_pixels=dec.DEFAULT_MAX_PIXELS, **kw):
        calls.append(Path(path).name)
        return real(path, max_pixels, **kw)

    monkeypatch.setattr(dec, "load_image", counting)
    out = tmp_path / "once.jsonl"
    rc = main(
        [
            "data",
            "convert",
            "--from",
            "rsvqa",
            "--input",
            str(lr["root"]),
            "--output",
            str(out),
            "--max-pixels",
            str(MAX_PIXELS),
            "--no-progress",
        ]
    )  # prefix auto-detected
    assert rc == 0
    assert calls.count("0.tif") == 1 and calls.count("1.tif") == 1
    # JSONL round trip gives the same samples as Parquet would
    samples = list(read_samples(out))
    assert len(samples) == len(WRITTEN)
    assert all(s["images"][0][:8] == b"\x89PNG\r\n\x1a\n" for s in samples)


def test_hr_area_bins_and_data_folder(tmp_path):
    """USGS (HR) test set 2 layout: areas like '10632m2', images under Data/ in another root."""
    folder, imgroot = tmp_path / "json", tmp_path / "imgs"
    folder.mkdir()
    (imgroot / "Data").mkdir(parents=True)
    write_raster(imgroot / "Data" / "0.tif", Raster(_rgb8(5)))
    answers_raw = ["10632m2", "0m2", "7m2", "1500m2", "yes", "12", "250"]
    types = ["area", "area", "area", "area", "presence", "count", "count"]
    images = [_img(0, list(range(7)), sensor="ULTRACAM_EAGLE_FALCON", res=".1524m")]
    questions = [_q(i, 0, t, f"question {i}?") for i, t in enumerate(types)]
    answers = [_a(i, a) for i, a in enumerate(answers_raw)]
    _write_split(folder, "USGS_split_test_phili", images, questions, answers)
    for binned in (False, True):
        out = tmp_path / f"hr{int(binned)}.parquet"
        argv = [
            "data",
            "convert",
            "--from",
            "rsvqa",
            "--input",
            str(folder),
            "--images-root",
            str(imgroot),
            "--split-prefix",
            "USGS_split_test_phili",
            "--output",
            str(out),
            "--no-progress",
        ]
        assert main(argv + (["--bin-counts"] if binned else [])) == 0
        got = {s["meta"]["question_id"]: s for s in read_samples(out)}
        assert len(got) == 7
        if not binned:
            assert [got[i]["qtype"] for i in range(4)] == ["area"] * 4
            assert got[0]["answer"] == "10632m2" and got[0]["meta"]["value"] == 10632 and got[0]["meta"]["unit"] == "m2"
        else:
            assert [got[i]["answer"] for i in range(7)] == [
                "more than 1000",
                "0",
                "between 1 and 10",
                "more than 1000",
                "yes",
                "between 11 and 100",
                "between 101 and 1000",
            ]
            assert got[0]["qtype"] == "choice" and got[0]["meta"]["raw_answer"] == "10632m2"
            assert got[4]["qtype"] == "yes_no" and "raw_answer" not in got[4]["meta"]
        assert got[0]["meta"]["sensor"] == "ULTRACAM_EAGLE_FALCON"
        assert got[0]["meta"]["image_file"] == "Data/0.tif"


def test_bins_edges():
    assert [bin_value(v) for v in (0, 1, 10, 11, 100, 101, 1000, 1001)] == [
        BINS[0],
        BINS[1],
        BINS[1],
        BINS[2],
        BINS[2],
        BINS[3],
        BINS[3],
        BINS[4],
    ]


def _run(argv, capsys):
    rc = main(argv + ["--no-progress"])
    return rc, capsys.readouterr().err


def test_fatal_errors_name_the_file(tmp_path, capsys, lr):
    out = str(tmp_path / "o.parquet")
    base = ["data", "convert", "--from", "rsvqa", "--output", out]
    # missing split file
    d = tmp_path / "missing"
    d.mkdir()
    _write_split(d, "LR_split_val", [_img(0, [0])], [_q(0, 0, "presence", "Is it?")], [_a(0, "yes")])
    (d / "LR_split_val_answers.json").unlink()
    rc, err = _run(base + ["--input", str(d), "--split-prefix", "LR_split_val"], capsys)
    assert rc != 0 and "LR_split_val_answers.json" in err and "missing" in err
    # unreadable JSON
    d2 = tmp_path / "badjson"
    d2.mkdir()
    _write_split(d2, "LR_split_val", [_img(0, [0])], [_q(0, 0, "presence", "Is it?")], [_a(0, "yes")])
    (d2 / "LR_split_val_questions.json").write_text('{"questions": [{"id": 0,', encoding="utf-8")
    rc, err = _run(base + ["--input", str(d2)], capsys)
    assert rc != 0 and "LR_split_val_questions.json" in err and "not valid JSON" in err
    # ids that are not list positions
    d3 = tmp_path / "ids"
    d3.mkdir()
    qs = [_q(0, 0, "presence", "a?"), _q(5, 0, "presence", "b?")]
    _write_split(d3, "LR_split_val", [_img(0, [0, 5])], qs, [_a(0, "yes"), _a(1, "no")])
    rc, err = _run(base + ["--input", str(d3)], capsys)
    assert rc != 0 and "LR_split_val_questions.json" in err and "position 1" in err and "id 5" in err
    # wrong top-level key
    d4 = tmp_path / "key"
    d4.mkdir()
    _write_split(d4, "LR_split_val", [_img(0, [0])], [_q(0, 0, "presence", "a?")], [_a(0, "yes")])
    (d4 / "LR_split_val_images.json").write_text(json.dumps({"imgs": []}))
    rc, err = _run(base + ["--input", str(d4)], capsys)
    assert rc != 0 and "LR_split_val_images.json" in err and "'images'" in err
    # two prefixes, none chosen
    d5 = tmp_path / "two"
    d5.mkdir()
    for p in ("LR_split_val", "LR_split_test"):
        _write_split(d5, p, [_img(0, [0])], [_q(0, 0, "presence", "a?")], [_a(0, "yes")])
    rc, err = _run(base + ["--input", str(d5)], capsys)
    assert rc != 0 and "--split-prefix" in err and "LR_split_test" in err
    assert not list(tmp_path.glob("o.*"))  # nothing half-written is left behind


def test_flag_only_split_files_use_all_questions(tmp_path):
    """Split files that carry only {id, active} take text from all_questions/all_answers.json."""
    d = tmp_path / "lr"
    (d / "Images_LR").mkdir(parents=True)
    write_raster(d / "Images_LR" / "0.tif", Raster(_rgb8(3)))
    full_q = [_q(0, 0, "presence", "Is a road present?"), _q(1, 0, "count", "How many roads?")]
    full_a = [_a(0, "yes"), _a(1, "3")]
    (d / "all_questions.json").write_text(json.dumps({"questions": full_q}))
    (d / "all_answers.json").write_text(json.dumps({"answers": full_a}))
    _write_split(
        d,
        "LR_split_test",
        [_img(0, [0, 1])],
        [{"id": 0, "active": False}, {"id": 1, "active": True}],
        [{"id": 0, "active": False}, {"id": 1, "active": True}],
    )
    out = tmp_path / "o.parquet"
    assert main(["data", "convert", "--from", "rsvqa", "--input", str(d), "--output", str(out), "--no-progress"]) == 0
    (s,) = list(read_samples(out))
    assert s["answer"] == "3" and s["qtype"] == "count" and s["messages"][0]["content"][1]["text"] == "How many roads?"
    summary = json.loads((tmp_path / "o.summary.json").read_text())
    assert summary["rejected_by_reason"] == {"inactive": 1}
