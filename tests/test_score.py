"""``geovl score``: metrics of a hand-written predictions file, checked against hand-computed numbers."""

from __future__ import annotations

import json
import statistics

import pytest

from geovl.cli import main
from geovl.evaluate.score import PredictionsFileError, read_predictions, score_file
from geovl.evaluate.table import display_width, format_table


def rec(id, qtype, reference, prediction, lang=None, meta=None, question="q?"):
    r = {"id": id, "qtype": qtype, "question": question, "reference": reference, "prediction": prediction,
         "source": f"hand#{id}"}  # fmt: skip
    if lang:
        r["lang"] = lang
    if meta is not None:
        r["meta"] = meta
    return r


RECORDS = [
    rec("y1", "yes_no", "是", "是的，有水体", "zh"),  # right
    rec("y2", "yes_no", "no", "Yes", "en"),  # wrong
    rec("y3", "yes_no", "yes", "<|im_end|>", "en"),  # wrong, unparsed
    rec("c1", "count", "3", "three", "en"),  # right, |err| 0
    rec("c2", "count", "5", "4栋", "zh"),  # wrong, |err| 1 (within ±1)
    rec("c3", "count", "2", "七", meta={"lang": "zh"}),  # wrong, |err| 5
    rec("a1", "area", "50公顷", "0.5平方公里", "zh"),  # right, rel 0
    rec("a2", "area", "1 km2", "105 ha", "en"),  # wrong, rel 0.05 (within 10 %)
    rec("a3", "area", "10632m2", "no idea", "en"),  # wrong, unparsed
    rec("a4", "area", "1 km2", "120 ha", "en"),  # wrong, rel 0.2
    rec("n1", "number", "0.12", "12%", "en"),  # right, rel 0
    rec("h1", "choice", "rural", "农村", "en", meta={"choices": ["rural", "urban"]}),  # right
    rec("h2", "choice", "城镇", "乡村", "zh"),  # wrong
    rec("o1", "open", "a river", "A river.", "en"),  # right, sim 1
    rec("o2", "open", "河流", "一条河流", "zh"),  # wrong, sim 2*2/6
    rec("s1", "structured", '{"a": 1}', {"a": 1}),  # right (object prediction), sim 1; no language
]


def write_jsonl(path, records, extra_lines=()):
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
        for line in extra_lines:
            f.write(line + "\n")
    return path


@pytest.fixture(scope="module")
def preds(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("score") / "preds.jsonl", RECORDS)


@pytest.fixture(scope="module")
def scored(preds):
    return score_file(preds)


def test_per_qtype_metrics(scored):
    results, m = scored
    assert [r["id"] for r in results] == [r["id"] for r in RECORDS]
    q = m["by_qtype"]
    assert list(q) == ["yes_no", "count", "number", "area", "choice", "open", "structured"]
    assert q["yes_no"] == {"n": 3, "correct": 1, "accuracy": 1 / 3, "unparsed": 1}
    assert q["count"] == {
        "n": 3,
        "correct": 1,
        "accuracy": 1 / 3,
        "unparsed": 0,
        "within_1": 2 / 3,
        "mean_abs_err": 2.0,
    }
    assert q["area"] == {
        "n": 4, "correct": 1, "accuracy": 0.25, "unparsed": 1, "n_rel_err": 3,
        "mean_rel_err": (0 + 0.05 + 0.2) / 3, "median_rel_err": 0.05, "within_10pct": 0.5,
    }  # fmt: skip
    assert q["number"] == {"n": 1, "correct": 1, "accuracy": 1.0, "unparsed": 0, "n_rel_err": 1,
                           "mean_rel_err": 0.0, "median_rel_err": 0.0, "within_10pct": 1.0}  # fmt: skip
    assert q["choice"] == {"n": 2, "correct": 1, "accuracy": 0.5, "unparsed": 0}
    assert q["open"] == {"n": 2, "correct": 1, "accuracy": 0.5, "unparsed": 0, "mean_char_sim": (1 + 4 / 6) / 2}
    assert q["structured"] == {"n": 1, "correct": 1, "accuracy": 1.0, "unparsed": 0, "mean_char_sim": 1.0}


def test_overall_micro_and_macro(scored):
    _, m = scored
    assert m["n"] == 16
    o = m["overall"]
    assert (o["n"], o["correct"], o["unparsed"], o["n_qtypes"]) == (16, 7, 2, 7)
    assert o["accuracy"] == 7 / 16
    assert o["macro_accuracy"] == pytest.approx((1 / 3 + 1 / 3 + 1.0 + 0.25 + 0.5 + 0.5 + 1.0) / 7, abs=1e-15)


def test_per_language(scored):
    _, m = scored
    assert list(m["by_lang"]) == ["en", "zh", "unknown"]
    en, zh, unk = (m["by_lang"][k]["overall"] for k in ("en", "zh", "unknown"))
    # en: y2 y3 c1 a2 a3 a4 n1 h1 o1 → right: c1 n1 h1 o1
    assert (en["n"], en["correct"]) == (9, 4)
    # zh: y1 c2 c3(meta.lang) a1 h2 o2 → right: y1 a1
    assert (zh["n"], zh["correct"]) == (6, 2)
    assert (unk["n"], unk["correct"]) == (1, 1)
    assert m["by_lang"]["zh"]["by_qtype"]["count"]["n"] == 2
    assert m["by_lang"]["en"]["by_qtype"]["area"]["mean_rel_err"] == pytest.approx(0.125)
    assert statistics.median([0.05, 0.2]) == m["by_lang"]["en"]["by_qtype"]["area"]["median_rel_err"]


def test_cli_table_and_default_json(preds, capsys):
    assert main(["score", str(preds)]) == 0
    out = capsys.readouterr().out
    assert "type/类型" in out and "overall/总体 (micro)" in out and "macro/宏平均" in out and "lang/语言" in out
    lines = out.splitlines()
    area = next(line for line in lines if line.startswith("area "))
    assert "25.0%" in area and "rel.err mean 0.083 median 0.050" in area and "≤10%: 50.0%" in area
    written = json.loads((preds.parent / "preds.metrics.json").read_text(encoding="utf-8"))
    assert written["overall"]["correct"] == 7 and written["tolerance"] == 0.02
    assert written["file"] == str(preds)


def test_cli_json_out_and_tolerance(preds, tmp_path, capsys):
    out = tmp_path / "sub" / "m.json"
    assert main(["score", str(preds), "--json", "--out", str(out), "--tolerance", "0.06"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text(encoding="utf-8"))
    assert printed["by_qtype"]["area"]["correct"] == 2  # 105 ha vs 1 km² is now within tolerance
    assert printed["tolerance"] == 0.06


@pytest.mark.parametrize(
    "lines,message",
    [
        (['{"id": "1", "qtype": "yes_no", "question": "q", "reference": "yes"}'], "bad.jsonl:1: missing required field(s) prediction"),
        (["", '{"id": "1", "qtype": "yes_no"'], "bad.jsonl:2: not valid JSON"),
        (["[1, 2]"], "bad.jsonl:1: expected a JSON object"),
        ([json.dumps(rec("1", "count", "1", "1")), json.dumps(rec("1", "count", "2", "2"))], "bad.jsonl:2: duplicate id '1' (first at line 1)"),
        ([json.dumps(rec("1", None, "1", "1"))], "bad.jsonl:1: 'qtype' must be a non-empty string"),
        ([json.dumps(rec("1", "count", "1", "1", meta=[1]))], "bad.jsonl:1: 'meta' must be an object"),
        (["", "   "], "bad.jsonl: no predictions in the file"),
    ],
)  # fmt: skip
def test_bad_files_name_file_and_line(tmp_path, capsys, lines, message):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(PredictionsFileError) as e:
        read_predictions(bad)
    assert message in str(e.value)
    assert main(["score", str(bad)]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "bad.metrics.json").exists()


def test_missing_file_and_bad_tolerance(tmp_path, preds, capsys):
    assert main(["score", str(tmp_path / "nope.jsonl")]) == 2
    assert "nope.jsonl: no such predictions file" in capsys.readouterr().err
    assert main(["score", str(preds), "--tolerance", "-1"]) == 2
    assert "--tolerance" in capsys.readouterr().err


def test_null_prediction_and_numeric_reference(tmp_path):
    p = write_jsonl(tmp_path / "p.jsonl", [rec("1", "count", 3, None), rec("2", "count", 3, 3)])
    results, m = score_file(p)
    assert [r["correct"] for r in results] == [False, True]
    assert m["by_qtype"]["count"]["unparsed"] == 1 and m["by_lang"] == {}


def test_table_alignment_with_cjk():
    text = format_table(["type/类型", "n"], [["农村", 1], ["rural", 22]])
    widths = {display_width(line) for line in text.splitlines()}
    assert len(widths) == 1  # every line ends in the same terminal column
    assert display_width("类型") == 4 and display_width("ab") == 2
