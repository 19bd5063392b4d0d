"""Structured answers (geovl.evaluate.structured) on a building-defect table converted by the CSV preset:
the schema comes from the preset, training answers render with its template, predictions (valid,
partially valid, invalid level, synonym level, JSON, junk) are parsed back into fields and scored per
field (exact figures, confusion matrix) — directly, through `geovl score` and through
`geovl infer --data … --compare-gt` with a tiny model."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
import yaml
from PIL import Image

from geovl.cli import main
from geovl.data.adapters.csv_table import PRESET_DIR
from geovl.data.io import read_samples
from geovl.evaluate.structured import (
    level_of,
    load_schema,
    parse_report,
    render_answer,
    schema_for_record,
    structured_metrics,
)

COLS = ["image_id", "image_path", "data_风险", "data_纠正和预防建议", "data_风险等级", "data_缺陷描述"]
ROWS = [
    ["D001", "imgs/crack.png", "墙体开裂可能渗水", "环氧树脂灌缝修补", "中等", "外墙斜向裂缝约30厘米"],
    ["D002", "imgs/spall.png", "混凝土剥落伤人", "设置警戒区并凿除松动部分", "严重", "阳台底板混凝土剥落钢筋外露"],
    ["D003", "imgs/stain.png", "轻微渗水", "检查防水层", "轻微", "顶棚有水渍"],
    ["D004", "imgs/crack.png", "裂缝扩展", "持续监测裂缝宽度", "中等", "梁底出现细微裂缝"],
    ["D005", "imgs/stain.png", "外墙脱落", "拆除空鼓面砖", "严重", "外墙面砖空鼓"],
    ["D006", "imgs/spall.png", "钢筋锈蚀", "除锈后涂防锈漆", "轻微", "栏杆根部锈迹"],
    ["D007", "imgs/crack.png", "风险", "建议", "很高", "描述"],  # bad_field_value
    ["D008", "imgs/crack.png", "风险", "建议", "中等", ""],  # empty_field
    ["D009", "imgs/none.png", "风险", "建议", "轻微", "描述"],  # missing_image
    ["D010", "imgs/crack.png", "风险", "建议", "中等", "描述", "多余"],  # bad_row
]
FIELDS = ("风险", "风险等级", "纠正和预防建议", "缺陷描述")


@pytest.fixture(scope="module")
def defects(tmp_path_factory):
    root = tmp_path_factory.mktemp("defects")
    (root / "imgs").mkdir()
    for i, name in enumerate(("crack.png", "spall.png", "stain.png")):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(
            root / "imgs" / name
        )
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(COLS)
    w.writerows(ROWS)
    (root / "巡检.csv").write_bytes(buf.getvalue().encode("utf-8-sig"))
    out = root / "defects.parquet"
    rc = main(
        [
            "data",
            "convert",
            "--from",
            "csv",
            "--preset",
            "building-defect",
            "--input",
            str(root / "巡检.csv"),
            "--output",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0
    return out


def test_schema_is_read_from_the_preset():
    preset = yaml.safe_load((PRESET_DIR / "building-defect.yaml").read_text(encoding="utf-8"))
    s = load_schema("building-defect")
    assert s.fields == tuple(preset["fields"]) == FIELDS
    assert (
        s.allowed
        == {"风险等级": tuple(preset["fields"]["风险等级"]["allowed"])}
        == {"风险等级": ("轻微", "中等", "严重")}
    )
    assert s.template == preset["answer_template"]
    assert s.aliases["data_风险等级"] == "风险等级" and s.level_fields == ["风险等级"]


def test_converted_samples_render_with_the_same_template(defects):
    samples = list(read_samples(defects))
    assert [s["id"] for s in samples] == ["D001", "D002", "D003", "D004", "D005", "D006"]
    rejects = [
        json.loads(x) for x in defects.with_name("defects.rejects.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    assert sorted(r["reason"] for r in rejects) == ["bad_field_value", "bad_row", "empty_field", "missing_image"]
    schema = load_schema("building-defect")
    for s, row in zip(samples, ROWS):
        assert s["qtype"] == "structured" and s["meta"]["preset"] == "building-defect"
        assert s["meta"]["fields"] == dict(zip(FIELDS, (row[2], row[4], row[3], row[5])))
        assert render_answer(schema, s["meta"]["fields"]) == s["answer"]
        # and the rendered answer parses back into exactly those fields
        p = parse_report(s["answer"], schema)
        assert p["fields"] == s["meta"]["fields"] and p["valid"] and p["missing"] == [] and p["format"] == "labels"


def _predictions(samples) -> list[str]:
    return [
        samples[0]["answer"],  # D001 exact
        "- **风险等级**：严重（需立即处理）\n- **缺陷描述**：阳台底板混凝土剥落钢筋外露\n"  # D002 reordered markdown
        "- **风险**：混凝土剥落伤人；\n- **纠正和预防建议**：设置警戒区并凿除松动部分",
        "风险：轻微渗水\n风险等级：中等\n纠正和预防建议：检查防水",  # D003 no 缺陷描述, wrong level
        "风险：裂缝扩展\n风险等级：很高\n纠正和预防建议：持续监测裂缝宽度\n缺陷描述：梁底出现细微裂缝",  # D004 invalid level
        '```json\n{"风险": "外墙脱落", "风险等级": "高风险", "纠正和预防建议": "拆除空鼓面砖", "缺陷描述": "外墙面砖空鼓"}\n```',  # D005
        "yes yes 的的 water",  # D006 junk
    ]


@pytest.fixture(scope="module")
def preds_file(defects, tmp_path_factory):
    samples = list(read_samples(defects))
    out = tmp_path_factory.mktemp("preds") / "preds.jsonl"
    with open(out, "w", encoding="utf-8") as f:
        for s, p in zip(samples, _predictions(samples)):
            rec = {"id": s["id"], "qtype": s["qtype"], "question": "q", "reference": s["answer"], "prediction": p,
                   "source": s["source"], "lang": "zh", "meta": s["meta"]}  # fmt: skip
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return out


def _expected_metrics():
    return {
        "n": 6,
        "valid": 3,
        "valid_rate": 0.5,
        "missing": {"风险": 1, "风险等级": 1, "纠正和预防建议": 1, "缺陷描述": 2},
        "invalid": {"风险": 0, "风险等级": 1, "纠正和预防建议": 0, "缺陷描述": 0},
        "confusion": {
            "轻微": {"轻微": 0, "中等": 1, "严重": 0, "invalid": 1},
            "中等": {"轻微": 0, "中等": 1, "严重": 0, "invalid": 1},
            "严重": {"轻微": 0, "中等": 0, "严重": 2, "invalid": 0},
        },
        # per-field character similarity: exact 1.0, missing 0.0, 检查防水 vs 检查防水层 = 2*4/9
        "sim": {"风险": 5 / 6, "纠正和预防建议": (4 + 8 / 9) / 6, "缺陷描述": 4 / 6},
    }


def _check(m: dict) -> None:
    e = _expected_metrics()
    for k in ("n", "valid", "valid_rate", "missing", "invalid"):
        assert m[k] == e[k], k
    lv = m["fields"]["风险等级"]
    assert lv["kind"] == "level" and lv["labels"] == ["轻微", "中等", "严重"]
    assert lv["correct"] == 3 and lv["accuracy"] == 0.5
    assert lv["confusion"] == e["confusion"]
    for f, sim in e["sim"].items():
        assert m["fields"][f]["kind"] == "text" and m["fields"][f]["mean_char_sim"] == pytest.approx(sim, abs=1e-6), f
    assert m["fields"]["缺陷描述"]["present"] == 4
    assert m["mean_text_sim"] == pytest.approx(sum(e["sim"].values()) / 3, abs=1e-6)


def test_per_field_metrics_exact(preds_file):
    recs = [json.loads(x) for x in preds_file.read_text(encoding="utf-8").splitlines()]
    metrics = structured_metrics(recs)
    assert list(metrics) == ["building-defect"]
    _check(metrics["building-defect"])


def test_geovl_score_reports_structured(preds_file, tmp_path, capsys):
    out = tmp_path / "m.json"
    assert main(["score", str(preds_file), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "structured answers / 结构化答案 (building-defect): 6 predictions, valid 3 (50.0%)" in printed
    assert "confusion 风险等级" in printed and "accuracy 50.0%" in printed
    metrics = json.loads(out.read_text(encoding="utf-8"))
    _check(metrics["structured"]["building-defect"])


@pytest.mark.parametrize(
    "text,fields,missing,invalid",
    [
        ("风险：渗水；风险等级：轻微；纠正和预防建议：查防水；缺陷描述：水渍。", {"风险": "渗水", "风险等级": "轻微", "纠正和预防建议": "查防水", "缺陷描述": "水渍"}, [], {}),
        ("1. 【风险】渗水\n2. 【风险等级】中度\n3. 【缺陷描述】顶棚水渍\n   面积约半平方米", {"风险": "渗水", "风险等级": "中等", "缺陷描述": "顶棚水渍\n   面积约半平方米"}, ["纠正和预防建议"], {}),
        ("data_风险: 剥落\ndata_风险等级: moderate\n纠正和预防建议 : 修补\n缺陷描述:剥落", {"风险": "剥落", "风险等级": "中等", "纠正和预防建议": "修补", "缺陷描述": "剥落"}, [], {}),
        ("风险：甲\n风险：乙\n风险等级：不严重", {"风险": "甲"}, ["纠正和预防建议", "缺陷描述"], {"风险等级": "不严重"}),
        ("风险等级：轻微至中等", {}, ["风险", "纠正和预防建议", "缺陷描述"], {"风险等级": "轻微至中等"}),
        ("高风险：无\n等级：严重", {}, list(FIELDS), {}),
        ("", {}, list(FIELDS), {}),
    ],
)  # fmt: skip
def test_parse_report_variants(text, fields, missing, invalid):
    p = parse_report(text, load_schema("building-defect"))
    assert p["fields"] == fields and p["missing"] == missing and p["invalid"] == invalid
    assert p["valid"] == (not missing and not invalid)


def test_level_rules():
    allowed = ("轻微", "中等", "严重")
    assert [level_of(v, allowed) for v in ("中等", "**严重**", "中等风险", "严重（需立即处理）", "轻度", "severe", "高风险")] == [
        "中等", "严重", "中等", "严重", "轻微", "严重", "严重"]  # fmt: skip
    assert [level_of(v, allowed) for v in ("不严重", "轻微至中等", "很高", "", None, "中等偏严重")] == [None] * 6


def test_schema_fallbacks():
    assert schema_for_record({"meta": {"preset": "building-defect"}}).name == "building-defect"
    s = schema_for_record({"meta": {"preset": "my-own-table", "fields": {"部位": "墙", "原因": "沉降"}}})
    assert s.fields == ("部位", "原因") and s.allowed == {}
    assert schema_for_record({"meta": {}}) is None


def test_infer_compare_gt_writes_fields_per_image(defects, tiny_model_dir, tmp_path, capsys):
    tiny = tiny_model_dir("qwen2-vl")
    out = tmp_path / "infer.jsonl"
    rc = main(["infer", "--model", str(tiny), "--device", "cpu", "--data", str(defects), "--compare-gt", "--out", str(out),
               "--max-new-tokens", "8", "--no-progress"])  # fmt: skip
    assert rc == 0
    recs = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in recs] == ["D001", "D002", "D003", "D004", "D005", "D006"]
    for r, row in zip(recs, ROWS):
        st = r["structured"]
        assert r["meta"]["image_path"] == row[1]
        assert st["schema"] == "building-defect" and st["valid"] is False  # an untrained model writes junk
        assert list(st["fields"]) == list(FIELDS)
        assert st["fields"]["风险等级"] == {"pred": "invalid", "ref": row[4], "correct": False}
        assert st["fields"]["风险"]["ref"] == row[2] and st["fields"]["风险"]["char_sim"] == 0.0
        assert st["missing"] == list(FIELDS)
    printed = capsys.readouterr().out
    assert "structured answers / 结构化答案 (building-defect): 6 predictions, valid 0 (0.0%)" in printed
    # the same file scored again: every reference level lands in the invalid column
    assert main(["score", str(out), "--json"]) == 0
    m = json.loads(capsys.readouterr().out)["structured"]["building-defect"]
    assert m["fields"]["风险等级"]["confusion"] == {
        lv: {"轻微": 0, "中等": 0, "严重": 0, "invalid": 2} for lv in ("轻微", "中等", "严重")
    }
