"""`geovl data convert --from csv`: the building-defect table (Chinese column names, BOM,
quoted multi-line cells) and the image-question-answer preset, custom mappings, bad rows of
every reason, fatal errors naming the file and column."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from geovl.cli import main
from geovl.data.adapters.csv_table import list_presets, load_mapping
from geovl.data.convert import ConvertError
from geovl.data.io import read_samples

DEFECT_COLS = ["image_id", "image_path", "data_风险", "data_纠正和预防建议", "data_风险等级", "data_缺陷描述"]
QUESTION = "请根据图片分析建筑缺陷，给出风险、风险等级、纠正和预防建议以及缺陷描述。"


def _img(path: Path, seed: int, fmt=None):
    arr = np.random.default_rng(seed).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt)
    return arr


def _write_csv(path: Path, header, rows, encoding="utf-8-sig", extra_lines=()):
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    for r in rows:
        w.writerow(r)
    text = buf.getvalue() + "".join(extra_lines)
    path.write_bytes(text.encode(encoding))


DEFECT_ROWS = [
    (
        [
            "D001",
            "imgs/crack1.png",
            "墙体结构开裂，可能导致渗水",
            "尽快用环氧树脂灌缝修补；定期巡检",
            "中等",
            "外墙出现约30厘米的斜向裂缝",
        ],
        None,
    ),
    (
        [
            "D002",
            "imgs/spall.jpg",
            "混凝土剥落伤人",
            "设置警戒区，凿除松动部分并重新抹灰",
            "严重",
            "阳台底板混凝土剥落，钢筋外露",
        ],
        None,
    ),
    (["D003", "imgs/stain.png", "轻微渗水", "检查防水层", "轻微", "顶棚有水渍\n面积约0.5平方米"], None),
    (["D004", "imgs/crack1.png", "风险", "建议", "很高", "描述"], "bad_field_value"),
    (["D005", "imgs/crack1.png", "风险", "建议", "", "描述"], "empty_field"),
    (["D006", "imgs/none.png", "风险", "建议", "轻微", "描述"], "missing_image"),
    (["D007", "../secret.png", "风险", "建议", "轻微", "描述"], "path_escape"),
    (["D001", "imgs/stain.png", "重复", "建议", "轻微", "描述"], "duplicate_id"),
    (["D009", "imgs/crack1.png", "风险", "建议", "中等", ""], "empty_field"),
    (["D010", "imgs/crack1.png", "风险", "建议", "中等", "描述", "多出来的一列"], "bad_row"),
    (["D011", "imgs/broken.jpg", "风险", "建议", "中等", "描述"], "undecodable_image"),
]


@pytest.fixture(scope="module")
def defect(tmp_path_factory):
    root = tmp_path_factory.mktemp("defect")
    d = root / "table"
    px = {"imgs/crack1.png": _img(d / "imgs/crack1.png", 1), "imgs/stain.png": _img(d / "imgs/stain.png", 3)}
    _img(d / "imgs/spall.jpg", 2)
    px["imgs/spall.jpg"] = np.asarray(Image.open(d / "imgs/spall.jpg").convert("RGB"))
    (d / "imgs/broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 10)
    _img(root / "secret.png", 9)
    _write_csv(d / "缺陷.csv", DEFECT_COLS, [r for r, _ in DEFECT_ROWS], extra_lines=["\n"])
    out = root / "out" / "defect.parquet"
    rc = main(
        [
            "data",
            "convert",
            "--from",
            "csv",
            "--preset",
            "building-defect",
            "--input",
            str(d / "缺陷.csv"),
            "--output",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0
    return {"dir": d, "out": out, "px": px}


def test_defect_counts(defect):
    s = json.loads(defect["out"].with_name("defect.summary.json").read_text())
    exp = {}
    for _, reason in DEFECT_ROWS:
        if reason:
            exp[reason] = exp.get(reason, 0) + 1
    assert s["read"] == len(DEFECT_ROWS)  # the trailing blank line is not a record
    assert s["written"] == 3
    assert s["rejected_by_reason"] == dict(sorted(exp.items()))
    assert s["conserved"]
    rej = [
        json.loads(x) for x in defect["out"].with_name("defect.rejects.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    assert rej[0] == {
        "source": "缺陷.csv#row4",
        "reason": "bad_field_value",
        "detail": "风险等级 = '很高' not in ['轻微', '中等', '严重']",
    }


def test_defect_structured_samples(defect):
    got = {s["id"]: s for s in read_samples(defect["out"])}
    assert sorted(got) == ["D001", "D002", "D003"]
    s = got["D001"]
    assert s["qtype"] == "structured"
    assert s["messages"][0]["content"] == [{"type": "image"}, {"type": "text", "text": QUESTION}]
    assert s["answer"] == (
        "风险：墙体结构开裂，可能导致渗水\n风险等级：中等\n纠正和预防建议：尽快用环氧树脂灌缝修补；定期巡检\n"
        "缺陷描述：外墙出现约30厘米的斜向裂缝"
    )
    assert s["meta"]["fields"] == {
        "风险": "墙体结构开裂，可能导致渗水",
        "风险等级": "中等",
        "纠正和预防建议": "尽快用环氧树脂灌缝修补；定期巡检",
        "缺陷描述": "外墙出现约30厘米的斜向裂缝",
    }
    assert s["meta"]["lang"] == "zh" and s["meta"]["preset"] == "building-defect" and s["meta"]["image_id"] == "D001"
    assert got["D003"]["meta"]["fields"]["缺陷描述"] == "顶棚有水渍\n面积约0.5平方米"
    for k, path in (("D001", "imgs/crack1.png"), ("D002", "imgs/spall.jpg"), ("D003", "imgs/stain.png")):
        arr = np.asarray(Image.open(io.BytesIO(got[k]["images"][0])).convert("RGB"))
        assert np.array_equal(arr, defect["px"][path])
        assert got[k]["source"].startswith("缺陷.csv#row")


def test_preset_declares_schema():
    assert {"building-defect", "image-question-answer"} <= set(list_presets())
    m = load_mapping("building-defect")
    assert m["qtype"] == "structured"
    assert m["fields"]["风险等级"]["allowed"] == ["轻微", "中等", "严重"]
    assert list(m["fields"]) == ["风险", "风险等级", "纠正和预防建议", "缺陷描述"]


IQA_ROWS = [
    (["a.png", "Is there water?", "yes", "yes_no"], None),
    (["sub/b.png", "这张图里有几栋房子？", "3", "count"], None),
    (["a.png", "Describe the scene.", "A lake with trees.", ""], None),
    (["a.png", "", "yes", ""], "empty_question"),
    (["a.png", "Anything?", "  ", ""], "empty_answer"),
    (["a.png", "Q?", "A", "bogus"], "bad_qtype"),
    (["/abs/a.png", "Q?", "A", ""], "path_escape"),
    (["", "Q?", "A", ""], "missing_image"),
]


def test_image_question_answer_preset(tmp_path):
    _img(tmp_path / "imgs" / "a.png", 1)
    _img(tmp_path / "imgs" / "sub" / "b.png", 2)
    tbl = tmp_path / "tables" / "iqa.csv"
    tbl.parent.mkdir()
    _write_csv(tbl, ["image_path", "question", "answer", "qtype"], [r for r, _ in IQA_ROWS])
    out = tmp_path / "iqa.jsonl"
    rc = main(
        [
            "data",
            "convert",
            "--from",
            "csv",
            "--preset",
            "image-question-answer",
            "--input",
            str(tbl),
            "--images-root",
            str(tmp_path / "imgs"),
            "--output",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0
    s = json.loads((tmp_path / "iqa.summary.json").read_text())
    assert s["written"] == 3
    assert s["rejected_by_reason"] == {
        "bad_qtype": 1,
        "empty_answer": 1,
        "empty_question": 1,
        "missing_image": 1,
        "path_escape": 1,
    }
    got = list(read_samples(out))
    assert [g["qtype"] for g in got] == ["yes_no", "count", "open"]
    assert [g["meta"]["lang"] for g in got] == ["en", "zh", "en"]
    assert got[1]["answer"] == "3" and got[1]["id"] == "iqa-2"


def test_question_override_and_optional_qtype_column(tmp_path):
    _img(tmp_path / "a.png", 1)
    tbl = tmp_path / "t.csv"
    _write_csv(tbl, ["image_path", "answer"], [["a.png", "farmland"]])
    out = tmp_path / "t.parquet"
    rc = main(
        [
            "data",
            "convert",
            "--from",
            "csv",
            "--preset",
            "image-question-answer",
            "--input",
            str(tbl),
            "--question",
            "这是什么地类？",
            "--output",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0
    (s,) = list(read_samples(out))
    assert s["messages"][0]["content"][1]["text"] == "这是什么地类？" and s["qtype"] == "open"


def test_custom_mapping_gb18030_and_meta_columns(tmp_path):
    _img(tmp_path / "p.png", 4)
    (tmp_path / "m.yaml").write_text(
        "name: landuse\nencoding: gb18030\nimage_column: 图片\nquestion: 该地块的土地利用类型是什么？\n"
        "answer_column: 地类\nqtype: choice\nmeta_columns: [县]\nlang: zh\n",
        encoding="utf-8",
    )
    tbl = tmp_path / "t.csv"
    _write_csv(tbl, ["图片", "地类", "县"], [["p.png", "耕地", "海淀"]], encoding="gb18030")
    out = tmp_path / "o.parquet"
    assert (
        main(
            [
                "data",
                "convert",
                "--from",
                "csv",
                "--mapping",
                str(tmp_path / "m.yaml"),
                "--input",
                str(tbl),
                "--output",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    (s,) = list(read_samples(out))
    assert s["answer"] == "耕地" and s["qtype"] == "choice" and s["meta"]["县"] == "海淀"


def _fatal(argv, capsys):
    rc = main(argv + ["--no-progress"])
    return rc, capsys.readouterr().err


def test_fatal_errors_name_file_and_column(tmp_path, capsys):
    tbl = tmp_path / "defects.csv"
    _write_csv(tbl, [c for c in DEFECT_COLS if c != "data_风险等级"], [["D1", "a.png", "r", "s", "d"]])
    out = tmp_path / "o.parquet"
    rc, err = _fatal(
        ["data", "convert", "--from", "csv", "--preset", "building-defect", "--input", str(tbl), "--output", str(out)],
        capsys,
    )
    assert rc != 0 and "defects.csv" in err and "data_风险等级" in err
    rc, err = _fatal(
        ["data", "convert", "--from", "csv", "--preset", "no-such", "--input", str(tbl), "--output", str(out)], capsys
    )
    assert rc != 0 and "no-such" in err and "building-defect" in err
    rc, err = _fatal(["data", "convert", "--from", "csv", "--input", str(tbl), "--output", str(out)], capsys)
    assert rc != 0 and "--preset" in err
    bad_map = tmp_path / "bad.yaml"
    bad_map.write_text("image_column: x\nquestion: q\nanswer_template: '{missing}'\n", encoding="utf-8")
    rc, err = _fatal(
        ["data", "convert", "--from", "csv", "--mapping", str(bad_map), "--input", str(tbl), "--output", str(out)],
        capsys,
    )
    assert rc != 0 and "bad.yaml" in err and "missing" in err
    gbk = tmp_path / "gbk.csv"
    _write_csv(gbk, ["image_path", "question", "answer"], [["a.png", "问题", "答案"]], encoding="gb18030")
    rc, err = _fatal(
        [
            "data",
            "convert",
            "--from",
            "csv",
            "--preset",
            "image-question-answer",
            "--input",
            str(gbk),
            "--output",
            str(out),
        ],
        capsys,
    )
    assert rc != 0 and "gbk.csv" in err and "encoding" in err
    assert not list(tmp_path.glob("o.*"))
    with pytest.raises(ConvertError, match="unknown key"):
        from geovl.data.adapters.csv_table import validate_mapping

        validate_mapping({"question": "q", "answer_column": "a", "colour": 1}, "x.yaml")


def test_all_rows_rejected_exits_nonzero(tmp_path, capsys):
    tbl = tmp_path / "t.csv"
    _write_csv(tbl, ["image_path", "question", "answer"], [["missing.png", "q", "a"]])
    rc, err = _fatal(
        [
            "data",
            "convert",
            "--from",
            "csv",
            "--preset",
            "image-question-answer",
            "--input",
            str(tbl),
            "--output",
            str(tmp_path / "o.parquet"),
        ],
        capsys,
    )
    assert rc == 1 and "missing_image" in err and "o.rejects.jsonl" in err
    assert json.loads((tmp_path / "o.rejects.jsonl").read_text())["reason"] == "missing_image"
