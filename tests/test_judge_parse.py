"""Judge-output parsing (geovl.evaluate.judge_parse) against a corpus of messy judge outputs.

Each ``tests/data/judge_outputs/*.txt`` is one judge reply (Chinese and English: MMDU-style
explanations + final dictionary, bare lines, markdown, tables, JSON, synonyms, Chinese numerals,
out-of-range / scaled / banded values, duplicates, junk, refusals); ``expected.json`` states for
each exactly which scores are read, which values are rejected and why, which duplicates conflict,
and whether a final dictionary was used."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geovl.evaluate.judge import load_template
from geovl.evaluate.judge_parse import DIMENSIONS, KEYS, OVERALL, dim_of, parse_judgment, read_value

CORPUS = Path(__file__).parent / "data" / "judge_outputs"
EXPECTED = json.loads((CORPUS / "expected.json").read_text(encoding="utf-8"))


def test_corpus_is_complete():
    files = sorted(p.name for p in CORPUS.glob("*.txt"))
    assert files == sorted(EXPECTED), "every corpus file has an expectation and vice versa"
    assert len(files) >= 25
    zh = [f for f in files if any("\u4e00" <= c <= "\u9fff" for c in (CORPUS / f).read_text(encoding="utf-8"))]
    assert len(zh) >= 10 and len(files) - len(zh) >= 10  # both languages are well represented
    statuses = {EXPECTED[f]["status"] for f in files}
    assert statuses == {"ok", "partial", "unparseable"}
    reasons = {r for f in files for _, r in EXPECTED[f]["rejected"]}
    assert reasons == {"out_of_range", "range", "bad_scale", "not_a_number"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_corpus_case(name):
    exp = EXPECTED[name]
    got = parse_judgment((CORPUS / name).read_text(encoding="utf-8"))
    assert got["scores"] == exp["scores"], exp["note"]
    assert list(got["scores"]) == [k for k in KEYS if k in exp["scores"]]  # canonical order
    assert got["status"] == exp["status"]
    assert got["missing"] == [k for k in KEYS if k not in exp["scores"]]
    assert [[r["dim"], r["reason"]] for r in got["rejected"]] == exp["rejected"]
    assert [[c["dim"], c["kept"], c["ignored"]] for c in got["conflicts"]] == exp["conflicts"]
    assert got["from_dict"] is exp["from_dict"]
    json.dumps(got)  # serialisable as stored in judgments.jsonl


def test_some_exact_values_spelled_out():
    """A few expectations restated by hand (independent of expected.json)."""
    g = parse_judgment((CORPUS / "16_chinese_numerals.txt").read_text(encoding="utf-8"))["scores"]
    assert g == {"creativity": 8, "richness": 7, "visual_perception": 9, "logical_coherence": 6, "answer_accuracy": 10,
                 "image_relationship": 5, "overall": 7}  # fmt: skip
    g = parse_judgment((CORPUS / "12_scaled_hundred.txt").read_text(encoding="utf-8"))["scores"]
    assert (g["creativity"], g["richness"], g["answer_accuracy"], g["overall"]) == (8.0, 7.0, 6.0, 7.5)
    g = parse_judgment((CORPUS / "14_dict_wins.txt").read_text(encoding="utf-8"))
    assert g["scores"]["richness"] == 6 and g["conflicts"] == [{"dim": "richness", "kept": 6.0, "ignored": [5.0]}]
    g = parse_judgment((CORPUS / "13_duplicates_first_wins.txt").read_text(encoding="utf-8"))
    assert g["scores"]["creativity"] == 6 and g["conflicts"] == [{"dim": "creativity", "kept": 6.0, "ignored": [8.0]}]


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_default_templates_parse_as_nothing(lang):
    """A judge that only echoes the prompt (rubric bands, the dictionary format) yields no score."""
    text, _ = load_template(None, lang)
    got = parse_judgment(text)
    assert got["scores"] == {} and got["status"] == "unparseable"
    assert {r["reason"] for r in got["rejected"]} == {"range"}


@pytest.mark.parametrize(
    "name,key",
    [("Creativity", "creativity"), ("创造力", "creativity"), ("visual_perception", "visual_perception"),
     ("Visual-Perception", "visual_perception"), ("逻辑一致性", "logical_coherence"), ("ACCURACY", "answer_accuracy"),
     ("image_relationship_understanding", "image_relationship"), ("图片关系理解", "image_relationship"),
     ("Overall Score", "overall"), ("overall_score", "overall"), ("总分", "overall"), ("Richness score", "richness"),
     ("创造性得分", "creativity"), ("helpfulness", None), ("score", None), ("", None)],
)  # fmt: skip
def test_dimension_names(name, key):
    assert dim_of(name) == key


@pytest.mark.parametrize(
    "num,tail,after,before,expected",
    [("8", "", "", "", (8.0, None)), ("7.5", "/10", "", "", (7.5, None)), ("80", "/100", "", "", (8.0, None)),
     ("65", "%", "", "", (6.5, None)), ("0", "", "", "", (None, "out_of_range")), ("11", "", "", "", (None, "out_of_range")),
     ("100", "", "", "", (None, "out_of_range")), ("4", "/5", "", "", (None, "bad_scale")), ("7", "", "-8分", "", (None, "range")),
     ("8", "分", "", "7到", (None, "range")), ("八", "分", "", "", (8.0, None)), ("十", "分", "。", "", (10.0, None)),
     ("十", "分", "出色", "", (None, None)), ("三", "", "张", "", (None, None)), ("10", "分", "", "满分", (None, None)),
     ("10", "", "", "out of ", (None, None))],
)  # fmt: skip
def test_read_value_rules(num, tail, after, before, expected):
    assert read_value(num, tail, after, before) == expected


def test_keys():
    assert len(DIMENSIONS) == 6 and OVERALL == "overall" and KEYS == DIMENSIONS + ("overall",)


@pytest.mark.parametrize(
    "raw",
    [None, "", "{", "}}}{{{", "{'Creativity': }", "{" * 5000 + "}" * 5000, "创造性：" * 3000, "Creativity: " + "9" * 400,
     "\x00\x01\x02", "{'a': {'b': {'c': {'d': {'e': {'creativity': 5}}}}}}", 12345, "Creativity" + "-" * 5000 + "x",
     "创造性\n" + "1-2分 " * 3000, "x creativity richness " * 2500, "{" * 20000],
)  # fmt: skip
def test_never_raises_on_junk(raw):
    got = parse_judgment(raw)
    assert got["status"] in ("ok", "partial", "unparseable")
    assert all(1 <= v <= 10 for v in got["scores"].values())


@settings(max_examples=150, deadline=None)
@given(
    st.text(
        alphabet=st.sampled_from(
            list("创造性丰富视觉感知总体评分：:/ 0123456789八十分{}'\",-|*\nCreativityOveralScore")
        ),
        max_size=200,
    )
)
def test_fuzz_scores_always_in_range(text):
    got = parse_judgment(text)
    assert set(got["scores"]) <= set(KEYS)
    assert all(1 <= v <= 10 for v in got["scores"].values())
    assert got["missing"] == [k for k in KEYS if k not in got["scores"]]
