"""qtype ``date``: reading years, dates and intervals (zh + en), scoring them, the reward rule and routing."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geovl.data.qtype import detect_qtype
from geovl.data.schema import QTYPES, make_sample
from geovl.evaluate.normalize import is_correct, parse_date, score_sample
from geovl.evaluate.score import compute_metrics, format_metrics, score_record
from geovl.rewards import DEFAULT_REWARDS, date_reward, route, rs_reward

READ = [
    # years
    ("2019", "2019"),
    ("2019年", "2019"),
    ("二〇一九年", "2019"),
    ("２０１９年", "2019"),  # full-width digits (NFKC)
    ("Answer: 2020.", "2020"),
    ("<think>the third image</think><answer>2020年</answer>", "2020"),
    ("The buildings first appear in 2020.", "2020"),
    ("建筑最早出现在2020年的影像中。", "2020"),
    ("答案：2021年", "2021"),
    # days and months
    ("2019-06-01", "2019-06-01"),
    ("2019/6/1", "2019-06-01"),
    ("2019.06.01", "2019-06-01"),
    ("2019年6月1日", "2019-06-01"),
    ("June 1, 2019", "2019-06-01"),
    ("1 June 2019", "2019-06-01"),
    ("the 1st of June 2019", "2019-06-01"),
    ("Sept 3, 2020", "2020-09-03"),
    ("June 2019", "2019-06"),
    ("2019-06", "2019-06"),
    ("2019年6月", "2019-06"),
    ("影像3（2021-06-01）", "2021-06-01"),
    # intervals
    ("2019-2021", "2019/2021"),
    ("2019–2021", "2019/2021"),
    ("2019—2021", "2019/2021"),
    ("2019 - 2021", "2019/2021"),
    ("2019~2021", "2019/2021"),
    ("2019/2021", "2019/2021"),
    ("2019 到 2021", "2019/2021"),
    ("2019年至2021年", "2019/2021"),
    ("2019年到2021年之间", "2019/2021"),
    ("2019年和2021年之间", "2019/2021"),
    ("森林在2019年至2021年之间减少。", "2019/2021"),
    ("between 2019 and 2021", "2019/2021"),
    ("From 2019 to 2021.", "2019/2021"),
    ("The forest was cleared between 2019 and 2021.", "2019/2021"),
    ("2019-06-01 to 2021-06-01", "2019-06-01/2021-06-01"),
    ("2019年6月1日至2021年6月1日", "2019-06-01/2021-06-01"),
    ("lorem ipsum " * 5000 + "so the answer is 2020", "2020"),  # a long reply
]

UNREADABLE = [
    "",
    None,
    "???",
    "<|im_end|>",
    "yes",
    "第2期到第3期",  # no year
    "2019 or 2021",  # two candidates, not an interval
    "2019年还是2021年",
    "2019, 2020, 2021",  # three dates
    "in 2019 and also 2021",
    "2021-2019",  # end before start
    "2019-21",  # a month 21 / a shortened year: unreadable, not guessed
    "2019-02-30",  # no such day
    "2019-13",
    "not 2019",  # negated
    "It was not in 2019.",
    "不是2019年",
    "1500亩",  # quantities, not years
    "2000 ha",
    "2019.5 ha",
    "2020 buildings",
    "12.5 公顷",
    "x" * 5000,
    "2019 " * 100_000,  # many dates: unreadable, without reading them all
]


@pytest.mark.parametrize("text,canonical", READ)
def test_parse_date_reads_zh_and_en_forms(text, canonical):
    assert parse_date(text) == canonical


@pytest.mark.parametrize("text", UNREADABLE)
def test_parse_date_refuses_what_is_not_one_date_or_interval(text):
    assert parse_date(text) is None


SAME = [
    ("2020年", "2020"),
    ("In 2020.", "2020年"),
    ("2020-06-01", "2020"),  # a day of the asked year answers "which year"
    ("2020年6月1日", "2020年"),
    ("between 2019 and 2021", "2019–2021"),
    ("2019年至2021年", "2019–2021"),
    ("2019 到 2021", "2019-2021"),
    ("2019-06-01 to 2021-06-01", "2019年至2021年"),  # both ends cut to the reference's precision
    ("2019-06-01", "2019-06-01"),
    ("June 1, 2019", "2019-06-01"),
]
DIFFERENT = [
    ("2021", "2020"),  # another year
    ("2019年", "2020年"),
    ("2021-06-01", "2020"),
    ("2020", "2020-06-01"),  # less precise than asked: wrong
    ("2020-07-01", "2020-06-01"),
    ("2020", "2019–2021"),  # a year for an interval
    ("2019–2021", "2020"),  # an interval for a year
    ("2019–2020", "2019–2021"),  # one end wrong
    ("2020–2021", "2019–2021"),
    ("2021–2019", "2019–2021"),  # reversed: unreadable
    ("2019 or 2021", "2019–2021"),
    ("2019年还是2021年", "2019年至2021年"),
    ("不是2020年", "2020年"),
    ("not 2020", "2020"),
    ("2020 hectares", "2020"),
    ("", "2020"),
    ("I cannot tell.", "2020"),
]


@pytest.mark.parametrize("pred,ref", SAME)
def test_date_scoring_matches_equal_dates(pred, ref):
    r = score_sample("date", pred, ref)
    assert r["correct"] is True and r["parsed"] is True
    assert r["pred"] == r["ref"] == parse_date(ref)


@pytest.mark.parametrize("pred,ref", DIFFERENT)
def test_date_scoring_rejects_other_dates(pred, ref):
    assert is_correct("date", pred, ref) is False


def test_date_result_fields_and_unreadable_reference():
    r = score_sample("date", "2019年6月1日", "2019")
    assert r == {"qtype": "date", "correct": True, "parsed": True, "pred": "2019", "ref": "2019"}
    r = score_sample("date", "maybe", "2019")
    assert (r["correct"], r["parsed"], r["pred"]) == (False, False, None)
    r = score_sample("date", "2019", "some year")
    assert r["correct"] is False and r["note"] == "reference_unparseable"
    assert "date" in QTYPES
    s = make_sample("t1", "In which year did building first appear?", "2020", [b"png"], qtype="date")
    assert s["qtype"] == "date"


def test_date_qtype_in_the_evaluation_report():
    recs = [
        {"id": "a", "qtype": "date", "prediction": "2020年", "reference": "2020", "meta": {"lang": "zh"}},
        {"id": "b", "qtype": "date", "prediction": "2019 到 2021", "reference": "2019–2021", "meta": {"lang": "zh"}},
        {"id": "c", "qtype": "date", "prediction": "2018", "reference": "2019–2021", "meta": {"lang": "en"}},
        {"id": "d", "qtype": "date", "prediction": "no idea", "reference": "2021", "meta": {"lang": "en"}},
        {"id": "e", "qtype": "yes_no", "prediction": "yes", "reference": "是", "meta": {"lang": "zh"}},
    ]
    m = compute_metrics([score_record(r) for r in recs])
    d = m["by_qtype"]["date"]
    assert (d["n"], d["correct"], d["accuracy"], d["unparsed"]) == (4, 2, 0.5, 1)
    assert list(m["by_qtype"]) == ["yes_no", "date"]
    assert m["by_lang"]["zh"]["by_qtype"]["date"]["accuracy"] == 1.0
    assert m["by_lang"]["en"]["by_qtype"]["date"]["accuracy"] == 0.0
    table = format_metrics(m)
    assert any(line.startswith("date ") and "50.0%" in line for line in table.splitlines())
    json.dumps(m, allow_nan=False)


ROUTES = [
    ("这块耕地是哪一年开始被占用的？", "date"),
    ("In which year did building first appear here?", "date"),
    ("森林是在哪个时间段减少的？", "date"),
    ("In which interval was forest lost?", "date"),
    ("When was the forest cleared?", "date"),
    ("哪一年耕地面积最大？", "date"),  # a year, not an area
    ("第一期到最后一期耕地减少了多少公顷？", "number"),
    ("How much cropland was lost between the first and last date, in hectares?", "number"),
    ("Did built-up area grow every year?", "yes_no"),
    ("建设用地是否每年都在增加？", "yes_no"),
    ("Is there water when the river floods?", "yes_no"),
    ("How many buildings are there?", "count"),
]


@pytest.mark.parametrize("question,kind", ROUTES)
def test_date_questions_are_detected(question, kind):
    assert detect_qtype(question) == kind


def test_date_reward_rule_and_routing():
    assert route("date", "Describe it") == ("date", "qtype")
    assert route(None, "森林是在哪个时间段减少的？") == ("date", "question")
    assert "date_reward" in DEFAULT_REWARDS
    preds = ["2019年至2021年", "2020", "<answer>between 2019 and 2021</answer>", "2021-2019", "yes"]
    kw = {"answer": ["2019–2021"] * 5, "qtype": ["date"] * 5}
    assert rs_reward(preds, **kw) == [1.0, 0.0, 1.0, 0.0, 0.0]
    assert date_reward(preds, **kw) == [1.0, 0.0, 1.0, 0.0, 0.0]
    # other kinds: not applicable
    assert date_reward(["3"], answer=["3"], qtype=["count"]) == [None]
    # a date sample without a qtype is routed by its question
    assert rs_reward(["2020年"], answer=["2020"], question=["这块耕地是哪一年开始被占用的？"]) == [1.0]


DATE_TEXT = st.one_of(
    st.text(max_size=80),
    st.text(alphabet="0123456789-–/~年月日至到 andbetweentonotjuneor，。", max_size=40),
)


@settings(max_examples=300, deadline=None)
@given(DATE_TEXT, DATE_TEXT)
def test_date_parser_and_scorer_never_raise(a, b):
    v = parse_date(a)
    assert v is None or (isinstance(v, str) and v[:4].isdigit())
    r = score_sample("date", a, b)
    assert isinstance(r["correct"], bool)
    json.dumps(r, allow_nan=False)
    assert is_correct("date", a, a) is bool(score_sample("open", a, a)["correct"])


@settings(max_examples=200, deadline=None)
@given(st.integers(1900, 2100), st.integers(0, 30))
def test_every_year_and_interval_reads_back(y, span):
    assert parse_date(f"{y}年") == str(y)
    assert parse_date(f"between {y} and {y + span}") == f"{y}/{y + span}"
    assert is_correct("date", f"{y}年至{y + span}年", f"{y}–{y + span}")
    assert not is_correct("date", f"{y}–{y + span + 1}", f"{y}–{y + span}")
