"""Answer normalisers and per-qtype scoring rules (geovl.evaluate.normalize / quantities / rules)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geovl.evaluate.normalize import (
    is_correct,
    normalize_choice,
    normalize_text,
    parse_number,
    parse_quantity,
    parse_yes_no,
    score_sample,
)
from geovl.evaluate.quantities import find_quantity
from geovl.evaluate.rules import SCORERS

JUNK = ["", "   ", "???", "<|im_end|>", "<|endoftext|><|im_end|>", "。。。", "\x00\x01", "<answer></answer>", None]
LONG = "lorem ipsum 图像 " * 20000  # ~300k characters

# ------------------------------------------------------------------------------- normalize_text

TEXT_CASES = [
    ("Yes", "yes"),
    ("  YES.  ", "yes"),
    ("Yes!", "yes"),
    ("“农村”", "农村"),
    ("是。", "是"),
    ("（是）", "是"),
    ("**Yes**", "yes"),
    ("Answer: The Water.", "the water"),
    ("answer: rural", "rural"),
    ("The answer is: urban.", "urban"),
    ("Final answer: 3", "3"),
    ("答案：是。", "是"),
    ("答案是 农村", "农村"),
    ("答：否", "否"),
    ("<answer> Yes. </answer>", "yes"),
    ("<think>hmm, maybe no</think><answer>是</answer>", "是"),
    ("<think>long reasoning</think>  Urban  ", "urban"),
    ("reasoning... <answer>农村", "农村"),
    ("Yes<|im_end|>", "yes"),
    ("a    big\n\triver", "a big river"),
    ("ＹＥＳ", "yes"),  # full-width, NFKC
    ("１２", "12"),
    ("-2.5", "-2.5"),
    ("12%", "12%"),
    ("3.2 km²", "3.2 km2"),
    ("不是，没有！", "不是,没有"),
    ("Answers vary", "answers vary"),
]


@pytest.mark.parametrize("raw,expected", TEXT_CASES)
def test_normalize_text(raw, expected):
    assert normalize_text(raw) == expected


@pytest.mark.parametrize(
    "raw,expected",
    [
        ("a<think>x</think>b", "a b"),
        ("<think>unfinished reasoning", ""),
        ("reasoning first</think>Yes", "yes"),  # Qwen3: <think> was in the prompt
        ("<think>a</think><think>b</think><answer>1</answer><answer>2</answer>", "2"),
        ("x <answer>1</answer> <answer>2", "1"),
        ("<ANSWER>Rural</Answer>", "rural"),
        ("```\nYes\n```", "yes"),
        ("<b>Yes</b>", "yes"),
        ("yes\u200b", "yes"),
    ],
)
def test_normalize_text_markup(raw, expected):
    assert normalize_text(raw) == expected


def test_many_unclosed_tags_stay_linear():
    """Lazy regexes over many open tags are quadratic; 20k of them must still be instant (no timing
    assertion: a quadratic version would take minutes and time the suite out)."""
    huge = "lorem 图像 3 km2 <answer> <think> " * 20000
    assert normalize_text(huge) == ""  # the first unclosed <think> runs to the end
    for q in ("yes_no", "count", "area", "open", "choice", "structured"):
        assert score_sample(q, huge, "1.5 km2")["correct"] is False


@pytest.mark.parametrize("junk", JUNK)
def test_normalize_text_junk_is_empty(junk):
    assert normalize_text(junk) == ""


def test_normalize_text_non_strings():
    assert normalize_text(3) == "3"
    assert normalize_text(b"Yes.") == "yes"


# ------------------------------------------------------------------------------- parse_yes_no

YES_NO_CASES = [
    ("yes", True), ("Yes.", True), ("YES", True), ("y", True), ("true", True), ("True", True),
    ("correct", True), ("Yeah", True), ("yep!", True), ("Yes, there is water.", True),
    ("Yes it is", True), ("There is water in the image.", True), ("There are some buildings", True),
    ("no", False), ("No.", False), ("n", False), ("false", False), ("incorrect", False), ("Nope", False),
    ("No, there is no water.", False), ("There are no buildings.", False), ("Water is not present.", False),
    ("It isn’t visible", False), ("It's not true", False), ("none", False),
    ("是", True), ("是的", True), ("对", True), ("有", True), ("存在", True), ("正确", True), ("没错", True),
    ("是的，有水体", True), ("有水体", True), ("图中有水体。", True), ("对，有的", True), ("不错", True),
    ("图中是否有水体：是", True), ("不少建筑", True),
    ("否", False), ("不是。", False), ("不对", False), ("错", False), ("没有", False), ("无", False),
    ("不存在", False), ("图中没有水体", False), ("这不是农田", False), ("水体不存在", False), ("并没有", False),
    ("答案：否", False), ("<answer>no</answer>", False), ("<think>yes?</think><answer>否</answer>", False),
    # verdict word first wins over the sentence that follows
    ("对，没有水体", True), ("Yes, there is no building.", True), ("No, there is water in the north.", False),
    # ambiguous / hedging / nothing → None
    ("yes no", None), ("yes, no", None), ("是，否", None), ("Yes or no?", None), ("图中有水体，没有建筑", None),
    ("There is water, but no buildings", None), ("I am not sure", None), ("不确定", None), ("无法判断", None),
    ("maybe", None), ("42", None), ("rural", None),
]  # fmt: skip


@pytest.mark.parametrize("text,expected", YES_NO_CASES)
def test_parse_yes_no(text, expected):
    assert parse_yes_no(text) is expected


@pytest.mark.parametrize("junk", JUNK + [LONG])
def test_parse_yes_no_junk(junk):
    assert parse_yes_no(junk) is None


# ------------------------------------------------------------------------------- parse_number

NUMBER_CASES = [
    ("3", 3), ("3.0", 3), ("03", 3), ("1,234", 1234), ("1 234", 1234), ("12 345 678", 12345678), ("-2.5", -2.5),
    ("+4", 4), (".5", 0.5), ("1,234.5", 1234.5), ("1.5e3", 1500), ("２５", 25), ("−3", -3),
    ("three", 3), ("Three.", 3), ("zero", 0), ("eleven", 11), ("twenty-one", 21), ("twenty one", 21),
    ("a hundred", 100), ("one hundred and five", 105), ("two thousand three hundred", 2300),
    ("nineteen hundred", 1900), ("a dozen", 12), ("two dozen", 24), ("a million", 1e6),
    ("三", 3), ("十", 10), ("十二", 12), ("二十", 20), ("两", 2), ("一百零五", 105), ("一百十", 110),
    ("两千", 2000), ("三万", 30000), ("一亿三千万", 1.3e8), ("二〇二〇", 2020), ("三点五", 3.5), ("叁拾", 30),
    ("3个", 3), ("三栋", 3), ("5栋建筑", 5), ("1.5万", 15000), ("3 万", 30000), ("2亿", 2e8),
    ("There are 5 buildings.", 5), ("I count three houses", 3), ("一共有五栋", 5), ("图中有一些建筑，共7栋", 7),
    ("答案：12", 12), ("<answer>7</answer>", 7), ("approximately 12.5 percent", 12.5),
    ("10632m2", 10632), ("3 to 5", 3), ("3-5", 3), ("三分之一", 1 / 3), ("百分之十二", 0.12),
    ("none", 0), ("None.", 0), ("no buildings", 0), ("没有", 0), ("图中没有建筑", 0),
    ("没有5栋以上", 5),  # a real number wins over the zero words
]  # fmt: skip


@pytest.mark.parametrize("text,expected", NUMBER_CASES)
def test_parse_number(text, expected):
    got = parse_number(text)
    assert got is not None and math.isclose(got, expected, rel_tol=1e-12, abs_tol=1e-12), got


@pytest.mark.parametrize(
    "text",
    JUNK
    + [
        LONG,
        "yes",
        "no",
        "abc",
        "一些",
        "十分",
        "km2",
        "somewhere",
        "1e999",
        "no idea",
        "I have no idea how many",
        "无法判断",
        "不知道有没有",
    ],
)
def test_parse_number_none(text):
    assert parse_number(text) is None


# ------------------------------------------------------------------------------- parse_quantity

QUANTITY_CASES = [
    ("约1.5平方公里", 1.5e6, "area"), ("1.5平方千米", 1.5e6, "area"), ("150 ha", 1.5e6, "area"),
    ("150 hectares", 1.5e6, "area"), ("150公顷", 1.5e6, "area"), ("10632m2", 10632, "area"),
    ("10632 m²", 10632, "area"), ("10632㎡", 10632, "area"), ("10632 sq m", 10632, "area"),
    ("10632 square meters", 10632, "area"), ("10632平方米", 10632, "area"), ("1.5万平方米", 15000, "area"),
    ("3.2 km²", 3.2e6, "area"), ("3.2 km2", 3.2e6, "area"), ("3.2 km^2", 3.2e6, "area"),
    ("3.2 square kilometres", 3.2e6, "area"), ("2250亩", 1.5e6, "area"), ("2250 mu", 1.5e6, "area"),
    ("两千二百五十亩", 1.5e6, "area"), ("一百五十公顷", 1.5e6, "area"), ("1 acre", 4046.8564224, "area"),
    ("The cropland covers about 12.34 ha.", 123400, "area"), ("In 2020 the area was 3 km2", 3e6, "area"),
    ("3 km", 3000, "length"), ("3公里", 3000, "length"), ("3千米", 3000, "length"), ("三千米", 3000, "length"),
    ("250 m", 250, "length"), ("250米", 250, "length"), ("25 cm", 0.25, "length"), ("25厘米", 0.25, "length"),
    ("5 meters", 5, "length"), ("12 mm", 0.012, "length"),
    ("12%", 0.12, "ratio"), ("12 %", 0.12, "ratio"), ("12 percent", 0.12, "ratio"), ("百分之十二", 0.12, "ratio"),
    ("百分之12.5", 0.125, "ratio"), ("三分之一", 1 / 3, "ratio"), ("１２％", 0.12, "ratio"),
    ("42", 42, None), ("five", 5, None), ("5 more", 5, None), ("5 mangoes", 5, None), ("5 hats", 5, None),
]  # fmt: skip


@pytest.mark.parametrize("text,value,kind", QUANTITY_CASES)
def test_parse_quantity(text, value, kind):
    got = parse_quantity(text)
    assert got is not None
    assert math.isclose(got[0], value, rel_tol=1e-9), got
    assert got[1] == kind


@pytest.mark.parametrize("text", JUNK + [LONG, "km2", "公顷", "yes", "abc"])
def test_parse_quantity_none(text):
    assert parse_quantity(text) is None


def test_find_quantity_keeps_the_written_value_and_unit():
    q = find_quantity("约12.34公顷")
    assert (q.value, q.unit, q.kind) == (12.34, "ha", "area") and math.isclose(q.si, 123400)
    assert find_quantity("7").unit is None


@settings(max_examples=150, deadline=None)
@given(st.floats(min_value=1e-3, max_value=1e6, allow_nan=False, allow_infinity=False))
def test_area_units_are_equivalent(x):
    """x km² == 100x 公顷 == 1500x 亩 == 1e6 x m² (written with repr, so no rounding in the text)."""
    expected = x * 1e6
    for text in (
        f"{x!r} km²",
        f"{x!r}平方公里",
        f"{100 * x!r}公顷",
        f"{100 * x!r} ha",
        f"{1500 * x!r}亩",
        f"{1e6 * x!r} m2",
    ):
        value, kind = parse_quantity(text)
        assert kind == "area"
        assert math.isclose(value, expected, rel_tol=1e-9), text
    assert is_correct("area", f"{100 * x!r} ha", f"{1500 * x!r}亩", tolerance=1e-9)


# ------------------------------------------------------------------------------- normalize_choice

CHOICE_CASES = [
    ("Rural", None, "rural"), ("农村", None, "rural"), ("乡村", None, "rural"), ("乡村地区", None, "rural"),
    ("rural area", None, "rural"), ("Urban.", None, "urban"), ("城镇", None, "urban"), ("城市", None, "urban"),
    ("This is a rural area.", None, "rural"), ("该区域属于农村", None, "rural"),
    ("轻微", None, "minor"), ("minor", None, "minor"), ("slight", None, "minor"), ("中等", None, "moderate"),
    ("Moderate", None, "moderate"), ("严重", None, "severe"), ("Severe.", None, "severe"), ("high", None, "severe"),
    ("The damage is severe", None, "severe"), ("风险等级为严重", None, "severe"),
    ("between 1 and 10", None, "between 1 and 10"), ("rural or urban", None, "rural or urban"),
    ("B", ["rural", "urban"], "urban"), ("(a)", ["rural", "urban"], "rural"), ("选项B", ["rural", "urban"], "urban"),
    ("b. urban", ["rural", "urban"], "urban"), ("农村", ["农村", "城镇"], "rural"),
    ("It is more than 1000", ["0", "1000", "more than 1000"], "more than 1000"),
    ("I think it is between 11 and 100", ["between 1 and 10", "between 11 and 100"], "between 11 and 100"),
    ("both rural and urban", ["rural", "urban"], "both rural and urban"),
]  # fmt: skip


@pytest.mark.parametrize("text,choices,expected", CHOICE_CASES)
def test_normalize_choice(text, choices, expected):
    assert normalize_choice(text, choices) == expected


@pytest.mark.parametrize("junk", JUNK)
def test_normalize_choice_junk(junk):
    assert normalize_choice(junk) is None
    assert normalize_choice(junk, ["rural", "urban"]) is None


# ------------------------------------------------------------------------------- scoring rules

CORRECT_CASES = [
    ("yes_no", "Yes, there is water.", "yes", True), ("yes_no", "是的", "yes", True), ("yes_no", "没有", "否", True),
    ("yes_no", "yes no", "yes", False), ("yes_no", "<|im_end|>", "no", False), ("yes_no", "no", "是", False),
    ("count", "三栋", "3", True), ("count", "3.0", "3", True), ("count", "There are 3 buildings", "3", True),
    ("count", "4", "3", False), ("count", "3.5", "3", False), ("count", "", "0", False), ("count", "none", "0", True),
    ("area", "1.5平方公里", "150 ha", True), ("area", "10632", "10632m2", True), ("area", "10632 m2", "10632m2", True),
    ("area", "1.02 km2", "1 km2", True), ("area", "0.98 km2", "1 km2", True), ("area", "1.021 km2", "1 km2", False),
    ("area", "12.34", "12.34 ha", True), ("area", "2250亩", "1.5 km²", True), ("area", "3 km", "3 km2", False),
    ("area", "0 ha", "0公顷", True), ("area", "1 ha", "0 ha", False), ("area", "???", "1 ha", False),
    ("number", "12%", "0.12", True), ("number", "12", "12%", True), ("number", "100", "101", True),
    ("number", "105", "100", False),
    ("choice", "农村", "rural", True), ("choice", "This is an urban area", "urban", True), ("choice", "urban", "rural", False),
    ("choice", "中等", "moderate", True),
    ("open", "A river.", "a river", True), ("open", "一条河流", "河流", False), ("open", "", "", False),
    ("structured", '{"a": 1, "b": [2]}', '{"b":[2],"a":1}', True), ("structured", '{"a": 1}', '{"a": 2}', False),
    ("structured", "```json\n{\"a\": 1}\n```", '{"a":1}', True), ("structured", "Crack, minor", "crack, minor", True),
    ("mystery", "abc", "ABC.", True), ("mystery", "abc", "abd", False),
]  # fmt: skip


@pytest.mark.parametrize("qtype,pred,ref,expected", CORRECT_CASES)
def test_is_correct(qtype, pred, ref, expected):
    assert is_correct(qtype, pred, ref) is expected


def test_score_sample_secondary_metrics():
    r = score_sample("area", "1.05 km2", "100 公顷")
    assert r["correct"] is False and r["kind"] == "area" and r["within_10pct"] is True
    assert math.isclose(r["rel_err"], 0.05) and math.isclose(r["pred"], 1.05e6) and r["ref"] == 1e6
    assert score_sample("area", "1.05 km2", "100 公顷", tolerance=0.06)["correct"] is True
    r = score_sample("count", "4", "3")
    assert (r["correct"], r["abs_err"], r["within_1"]) == (False, 1.0, True)
    assert score_sample("count", "5", "3")["within_1"] is False
    r = score_sample("open", "一条河流", "河流")
    assert r["char_sim"] == pytest.approx(2 * 2 / 6)  # difflib ratio 2M/T
    assert score_sample("area", "3 km", "3 km2")["note"] == "unit_mismatch"
    assert score_sample("area", "1 ha", "0 ha")["note"] == "zero_reference"
    assert score_sample("count", "3", "many")["note"] == "reference_unparseable"
    assert score_sample("mystery", "a", "b")["note"] == "unknown_qtype"
    r = score_sample("yes_no", "<|im_end|>", "yes")
    assert (r["parsed"], r["pred"], r["ref"]) == (False, None, True)
    r = score_sample("choice", "B", "urban", choices=["rural", "urban"])
    assert r["correct"] and r["pred"] == "urban"
    r = score_sample("structured", '{"a":1}', '{"a": 1}')
    assert r["json"] is True and r["char_sim"] == 1.0


def test_every_qtype_has_a_scorer():
    from geovl.data.schema import QTYPES

    assert set(QTYPES) <= set(SCORERS)


# ------------------------------------------------------------------------------- properties

ANY_TEXT = st.one_of(
    st.text(max_size=200),
    st.text(alphabet="0123456789.,- %km²亩公顷平方米十百千万亿一二两三点分之是否没有yesnot<>|/answer", max_size=60),
)
QTYPES_ANY = st.sampled_from(["yes_no", "count", "number", "area", "choice", "open", "structured", "other"])


@settings(max_examples=300, deadline=None)
@given(ANY_TEXT)
def test_parsers_never_raise(s):
    assert isinstance(normalize_text(s), str)
    assert parse_yes_no(s) in (True, False, None)
    n = parse_number(s)
    assert n is None or math.isfinite(n)
    q = parse_quantity(s)
    assert q is None or (math.isfinite(q[0]) and q[1] in (None, "area", "length", "ratio"))
    c = normalize_choice(s, ["rural", "urban"])
    assert c is None or isinstance(c, str)


@settings(max_examples=300, deadline=None)
@given(QTYPES_ANY, ANY_TEXT, ANY_TEXT)
def test_score_sample_never_raises_and_is_json(qtype, a, b):
    import json

    r = score_sample(qtype, a, b)
    assert isinstance(r["correct"], bool)
    json.dumps(r, allow_nan=False)


@settings(max_examples=300, deadline=None)
@given(QTYPES_ANY, ANY_TEXT)
def test_exact_match_is_correct(qtype, s):
    """An answer identical to the reference is correct whenever it has any content."""
    assert is_correct(qtype, s, s) is bool(normalize_text(s))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["yes_no", "count", "choice", "open", "structured"]), ANY_TEXT, ANY_TEXT)
def test_equality_based_rules_are_symmetric(qtype, a, b):
    assert is_correct(qtype, a, b) == is_correct(qtype, b, a)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=10**9))
def test_integers_roundtrip(n):
    assert parse_number(str(n)) == n
    assert parse_number(f"{n:,}") == n
    assert is_correct("count", f"There are {n} buildings.", str(n))
