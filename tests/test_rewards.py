"""GRPO reward rules (geovl.rewards): routing, yes/no, count, number with units, choice, open
(fuzzy + BLEU), format, brevity, and the TRL reward-function contract. Table-driven, zh + en."""

from __future__ import annotations

import math

import pytest

from geovl.evaluate.normalize import is_correct
from geovl.rewards import (
    BUILTIN_REWARDS,
    DEFAULT_REWARDS,
    brevity_reward,
    count_reward,
    detect_qtype,
    format_reward,
    number_reward,
    open_reward,
    route,
    routed_reward,
    rs_reward,
    yes_no_reward,
)
from geovl.rewards.bleu import sentence_bleu, text_bleu, tokenize
from geovl.rewards.rules import (
    brevity_score,
    choice_score,
    count_score,
    format_score,
    number_score,
    open_score,
    yes_no_score,
)

# ----------------------------------------------------------------------------------- routing

ROUTE_CASES = [
    ("图中是否有水体？", "yes_no"),
    ("是不是农村？", "yes_no"),
    ("有没有道路？", "yes_no"),
    ("图中有水吗？", "yes_no"),
    ("Is there water in the image?", "yes_no"),
    ("Are there any ships?", "yes_no"),
    ("Does the image contain a road?", "yes_no"),
    ("Is the forest larger than the cropland?", "yes_no"),
    ("耕地面积是否大于林地面积？", "yes_no"),  # yes/no before area cues
    ("图中有多少栋建筑？", "count"),
    ("图中有几栋房子？", "count"),
    ("How many buildings are there?", "count"),
    ("What is the number of buildings?", "count"),
    ("耕地面积约为多少公顷？", "number"),
    ("水体面积多大？", "number"),
    ("两个地块之间的距离是多少？", "number"),
    ("What is the area of cropland in hectares?", "number"),
    ("How large is the lake?", "number"),
    ("How far is the river from the road?", "number"),
    ("What percentage of the image is water?", "number"),
    ("这是农村地区还是城镇地区？请回答农村或城镇。", "choice"),
    ("Is this a rural or an urban area?", "choice"),
    ("Describe the image.", "open"),
    ("描述这张图像。", "open"),
    ("几乎都是森林，这是什么地方？", "open"),  # 几乎 is not a count
    ("", "open"),
    (None, "open"),
]


@pytest.mark.parametrize("question,kind", ROUTE_CASES)
def test_detect_qtype(question, kind):
    assert detect_qtype(question) == kind


def test_route_prefers_qtype_and_falls_back_to_the_question():
    assert route("area", "Describe it") == ("number", "qtype")
    assert route("structured", "How many?") == ("open", "qtype")
    assert route("count", "Is there water?") == ("count", "qtype")
    assert route("", "How many buildings?") == ("count", "question")
    assert route(None, "图中是否有水体？") == ("yes_no", "question")
    assert route("not_a_qtype", "面积是多少？") == ("number", "question")


# ----------------------------------------------------------------------------------- yes / no

YES_NO_CASES = [
    ("yes", "yes", 1.0),
    ("Yes, there is water.", "yes", 1.0),
    ("是", "yes", 1.0),
    ("图中没有水体", "否", 1.0),
    ("No.", "没有", 1.0),
    ("<answer>是的</answer>", "是", 1.0),
    ("是", "no", 0.0),
    ("yes", "no", 0.0),
    ("I am not sure", "yes", 0.0),
    ("", "yes", 0.0),
    ("<|im_end|>", "no", 0.0),
]


@pytest.mark.parametrize("pred,ref,expected", YES_NO_CASES)
def test_yes_no(pred, ref, expected):
    assert yes_no_score(pred, ref) == expected
    assert yes_no_score(pred, ref) == float(is_correct("yes_no", pred, ref))  # the evaluation rule


# ----------------------------------------------------------------------------------- count

COUNT_CASES = [
    ("3", "3", 1.0),
    ("三", "3", 1.0),
    ("There are 3 buildings.", "3", 1.0),
    ("图中有三栋建筑", "3", 1.0),
    ("two", "2", 1.0),
    ("none", "0", 1.0),
    ("没有", "0", 1.0),
    ("4", "3", math.exp(-1)),  # small count: absolute error, scale 1
    ("1", "3", math.exp(-2)),
    ("21", "20", math.exp(-1 / 5)),  # large count: scale 0.25·20 = 5
    ("10", "20", math.exp(-10 / 5)),
    ("2.5", "3", math.exp(-0.5)),
    ("many", "3", 0.0),
    ("", "3", 0.0),
    ("3", "lots", 0.0),  # unreadable reference, different text
    ("lots", "lots", 1.0),  # identical answers always score 1
]


@pytest.mark.parametrize("pred,ref,expected", COUNT_CASES)
def test_count(pred, ref, expected):
    assert count_score(pred, ref) == pytest.approx(expected, abs=1e-12)


def test_count_decays_with_distance():
    values = [count_score(str(p), "8") for p in range(8, 20)]
    assert values[0] == 1.0 and all(a > b for a, b in zip(values, values[1:]))


# ----------------------------------------------------------------------------------- number / area

NUMBER_CASES = [
    ("约1.5平方公里", "150 ha", 1.0),
    ("150 ha", "1.5 km²", 1.0),
    ("10632m2", "10632 m2", 1.0),
    ("10632", "10632m2", 1.0),  # unit-less: read in the reference's unit
    ("3.2 km²", "320公顷", 1.0),
    ("1500亩", "1 km2", 1.0),
    ("4800亩", "3.2 km2", 1.0),
    ("15 hectares", "0.15 km2", 1.0),
    ("0.15 square kilometres", "15 ha", 1.0),
    ("3.2平方千米", "3200000平方米", 1.0),
    ("1.5万平方米", "1.5公顷", 1.0),
    ("1000 m", "1 km", 1.0),
    ("100 cm", "1 m", 1.0),
    ("2.5公里", "2500米", 1.0),
    ("12%", "0.12", 1.0),
    ("20%", "百分之二十", 1.0),
    ("about 1.53 km2", "1.5 km2", 1.0),  # 2 % off: still exact
    ("1.6 km2", "1.5 km2", math.exp(-5 * (0.1 / 1.5))),
    ("2 km2", "1 km2", math.exp(-5)),
    ("1.5 km", "1.5 km2", 0.0),  # length vs area
    ("150 m", "1.5 ha", 0.0),
    ("???", "1.5 km2", 0.0),
    ("", "1.5 km2", 0.0),
    ("large", "1.5 km2", 0.0),
]


@pytest.mark.parametrize("pred,ref,expected", NUMBER_CASES)
def test_number(pred, ref, expected):
    assert number_score(pred, ref) == pytest.approx(expected, rel=1e-9)
    # 1.0 exactly when `geovl score` counts it correct at the 2 % tolerance
    assert (number_score(pred, ref) == 1.0) == is_correct("area", pred, ref, tolerance=0.02)


def test_number_checks_against_the_measured_value_in_meta():
    # the reference text is rounded (约12公顷); the grounded task's measured area is 12.34 ha
    assert number_score("12.34 ha", "约12公顷") < 0.9
    assert number_score("12.34 ha", "约12公顷", meta={"gt": {"m2": 123400.0}}) == 1.0
    assert number_score("12.34", "约12公顷", meta={"gt": {"m2": 123400.0}}) == 1.0  # unit-less → the reference's unit
    assert number_score("0.1234平方公里", "约12公顷", meta={"gt": {"area_m2": 123400.0}}) == 1.0
    assert number_score("12", "about 12 ha", meta={"gt": {"m2": 200000.0}}) == pytest.approx(math.exp(-5 * 0.4))
    # without a unit in the reference text, meta's unit decides how a bare number reads
    assert number_score("20", "约20", meta={"gt": {"m2": 200000.0, "unit": "ha"}}) == 1.0
    # a junk measured value is ignored
    assert number_score("12 ha", "12 ha", meta={"gt": {"m2": "n/a"}}) == 1.0
    assert number_score("1.2 km", "12 ha", meta={"gt": {"m2": 120000.0}}) == 0.0


# ----------------------------------------------------------------------------------- choice


def test_choice():
    assert choice_score("农村", "rural") == 1.0
    assert choice_score("This is a rural area.", "农村") == 1.0
    assert choice_score("urban", "rural") == 0.0
    assert choice_score("B", "urban", meta={"choices": ["rural", "urban"]}) == 1.0
    assert choice_score("A", "urban", meta={"choices": ["rural", "urban"]}) == 0.0


# ----------------------------------------------------------------------------------- BLEU and open


def test_tokenize_cjk_characters_and_words():
    assert tokenize("图中有3栋 buildings, ok") == ["图", "中", "有", "3", "栋", "buildings", ",", "ok"]
    assert tokenize("") == []


def test_bleu_hand_computed_english():
    hyp, ref = "the cat sat on the mat".split(), "the cat is on the mat".split()
    # p1 = 5/6, p2 = 3/5, p3 = 1/4, p4: no match → 1/(2·3); equal lengths → BP = 1
    expected = (5 / 6 * 3 / 5 * 1 / 4 * 1 / 6) ** 0.25
    assert sentence_bleu(hyp, ref) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(0.379918, abs=1e-6)


def test_bleu_hand_computed_chinese_characters():
    # 图中有三栋建筑 vs 图中有两栋建筑: p1 = 6/7, p2 = 4/6, p3 = 2/5, p4: 0 → 1/(2·4)
    expected = (6 / 7 * 4 / 6 * 2 / 5 * 1 / 8) ** 0.25
    assert text_bleu("图中有三栋建筑", "图中有两栋建筑") == pytest.approx(expected, rel=1e-12)


def test_bleu_brevity_penalty_effective_order_and_edges():
    # 2-token hypothesis: orders 1..2 only; both match fully; BP = exp(1 - 4/2)
    assert sentence_bleu(["a", "b"], ["a", "b", "c", "d"]) == pytest.approx(math.exp(1 - 4 / 2))
    # two zero-match orders: 1/(2·n3), 1/(4·n4)
    hyp, ref = list("abcde"), list("abxde")
    p1, p2 = 4 / 5, 2 / 4  # a b d e match; ab, de match
    p3, p4 = 1 / (2 * 3), 1 / (4 * 2)  # first zero order: 1/(2·3 trigrams), second: 1/(4·2 four-grams)
    expected = (p1 * p2 * p3 * p4) ** 0.25
    assert sentence_bleu(hyp, ref) == pytest.approx(expected, rel=1e-12)
    assert sentence_bleu(["x"], ["y"]) == 0.0  # no unigram match
    assert sentence_bleu([], ["y"]) == 0.0 and sentence_bleu(["y"], []) == 0.0
    assert sentence_bleu(list("abcdef"), list("abcdef")) == 1.0
    # longer hypothesis: no brevity penalty, clipped counts (the "the the the" case)
    assert sentence_bleu(["the"] * 4, ["the", "cat"], max_n=1) == pytest.approx(1 / 4)


OPEN_CASES = [
    ("A big river crosses farmland.", "A big river crosses farmland.", 1.0),
    ("a big river crosses farmland", "A BIG river crosses farmland!", 1.0),
    ("图中有一条河流穿过农田", "图中有一条河流穿过农田。", 1.0),
    ("", "图中有一条河流", 0.0),
]


@pytest.mark.parametrize("pred,ref,expected", OPEN_CASES)
def test_open_exact_and_empty(pred, ref, expected):
    assert open_score(pred, ref) == expected


def test_open_is_fuzzy_times_0_6_plus_bleu_times_0_4():
    import difflib

    p, r = "图中有三栋建筑", "图中有两栋建筑"
    sim = difflib.SequenceMatcher(None, p, r, autojunk=False).ratio()  # 12/14
    bleu = (6 / 7 * 4 / 6 * 2 / 5 * 1 / 8) ** 0.25
    assert open_score(p, r) == pytest.approx(0.6 * sim + 0.4 * bleu, rel=1e-12)
    closer = open_score("a river crosses farmland", "a big river crosses farmland")
    farther = open_score("a forest", "a big river crosses farmland")
    assert 0 < farther < closer < 1


# ----------------------------------------------------------------------------------- format / brevity

FORMAT_CASES = [
    ("<answer>3</answer>", 1.0),
    ("  <answer> yes </answer>\n", 1.0),
    ("<think>count the roofs</think><answer>3</answer>", 1.0),
    ("<answer>3</answer><|im_end|>", 1.0),
    ("I think <answer>3</answer>", 0.5),
    ("<answer>3</answer><answer>4</answer>", 0.5),
    ("<answer></answer>", 0.0),
    ("<answer>3", 0.0),
    ("3", 0.0),
    ("", 0.0),
]


@pytest.mark.parametrize("text,expected", FORMAT_CASES)
def test_format(text, expected):
    assert format_score(text) == expected


def test_brevity():
    assert brevity_score("yes", "yes") == 1.0
    assert brevity_score("x" * 8, "y") == 1.0  # budget max(8, 2·1)
    assert brevity_score("x" * 16, "y") == pytest.approx(0.5)
    assert brevity_score("x" * 30, "y" * 10) == pytest.approx(20 / 30)
    assert brevity_score("", "yes") == 0.0


# ----------------------------------------------------------------------------------- TRL contract

BATCH = {
    "answer": ["yes", "3", "150 ha", "a river", "农村"],
    "qtype": ["yes_no", "count", "area", "open", "choice"],
    "question": ["Is there water?", "How many?", "面积？", "Describe.", "农村还是城镇？"],
    "meta": [{}, {}, {"gt": {"m2": 1.5e6}}, {}, {}],
}
PREDS = ["Yes.", "4", "约1.5平方公里", "a river", "rural"]


def _conv(texts):
    return [[{"role": "assistant", "content": t}] for t in texts]


def test_conversational_and_plain_completions_score_the_same():
    plain = rs_reward(PREDS, **BATCH)
    assert plain == pytest.approx([1.0, math.exp(-1), 1.0, 1.0, 1.0])
    assert rs_reward(_conv(PREDS), **BATCH) == plain
    assert routed_reward(_conv(PREDS), **BATCH) == plain
    # content given as a list of parts (some chat formats)
    parts = [[{"role": "assistant", "content": [{"type": "text", "text": t}]}] for t in PREDS]
    assert rs_reward(parts, **BATCH) == plain


def test_per_kind_rewards_are_none_elsewhere_and_sum_to_the_routed_total():
    per = {name: BUILTIN_REWARDS[name](_conv(PREDS), **BATCH) for name in DEFAULT_REWARDS}
    assert per["yes_no_reward"] == [1.0, None, None, None, None]
    assert per["count_reward"][1] == pytest.approx(math.exp(-1)) and per["count_reward"].count(None) == 4
    total = [sum(v[i] for v in per.values() if v[i] is not None) for i in range(len(PREDS))]
    assert total == pytest.approx(rs_reward(PREDS, **BATCH))
    # each completion is scored by exactly one kind
    assert all(sum(v[i] is not None for v in per.values()) == 1 for i in range(len(PREDS)))


def test_kwargs_variants():
    # qtype missing → detected from the question; question missing → from the prompt
    assert count_reward(["3"], answer=["3"], question=["图中有多少栋建筑？"]) == [1.0]
    prompts = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many buildings?"}]}]]
    assert count_reward(["3"], answer=["3"], prompts=prompts) == [1.0]
    assert yes_no_reward(["3"], answer=["3"], prompts=prompts) == [None]
    # meta as JSON text, TRL's extra kwargs ignored, `solution` accepted as the reference column
    assert number_reward(
        ["12.34 ha"], answer=["约12公顷"], qtype=["area"], meta=['{"gt": {"m2": 123400}}'], trainer_state=None
    ) == [1.0]
    assert open_reward(["a river"], solution=["a river"], qtype=["open"]) == [1.0]
    with pytest.raises(ValueError, match="'answer'"):
        rs_reward(["3"], qtype=["count"])
    with pytest.raises(ValueError, match="2 values for 1"):
        rs_reward(["3"], answer=["3", "4"])


def test_format_and_brevity_rewards():
    assert format_reward(_conv(["<answer>3</answer>", "3"])) == [1.0, 0.0]
    assert brevity_reward(_conv(["yes", "y" * 40]), answer=["yes", "no"]) == [1.0, pytest.approx(8 / 40)]


def test_huge_and_odd_completions_never_raise():
    odd = [None, 42, {"content": None}, [], [{"role": "assistant"}], "\x00\ud7ff", "<|im_end|>" * 100]
    for qtype in ("yes_no", "count", "area", "open", "choice", None):
        for name, fn in BUILTIN_REWARDS.items():
            out = fn(odd, answer=["1.5 km2"] * len(odd), qtype=[qtype] * len(odd))
            assert len(out) == len(odd) and all(v is None or 0.0 <= v <= 1.0 for v in out), name
    huge = ["lorem ipsum 图像 3 km2 <answer> " * 20000] * 5  # ~500k characters, once per rule
    out = rs_reward(huge, answer=["1.5 km2"] * 5, qtype=["yes_no", "count", "area", "open", "choice"])
    assert all(0.0 <= v <= 1.0 for v in out)
