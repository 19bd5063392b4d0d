"""Property tests (hypothesis) for the GRPO rewards: bounds, never raising on junk, unit
equivalence, exact matches score 1.0 and symmetrically."""

from __future__ import annotations

import math

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from geovl.evaluate.normalize import normalize_text
from geovl.rewards import BUILTIN_REWARDS
from geovl.rewards.bleu import sentence_bleu
from geovl.rewards.rules import (
    SCORES,
    brevity_score,
    choice_score,
    count_score,
    format_score,
    number_score,
    score,
    yes_no_score,
)

KINDS = sorted(SCORES)
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# text that looks like model output: answers, numbers with units, markup, junk
PIECES = st.sampled_from(
    [
        "yes",
        "no",
        "是",
        "否",
        "没有",
        "3",
        "三",
        "1.5",
        "-2",
        "1e9",
        "1,234",
        "万",
        "平方公里",
        "km²",
        "ha",
        "公顷",
        "亩",
        "m",
        "km",
        "%",
        "<answer>",
        "</answer>",
        "<think>",
        "<|im_end|>",
        " ",
        "。",
        "?",
        "nan",
        "inf",
        "约",
        "about",
        "\x00",
        "\n",
        "百分之",
        "分之",
        "rural",
        "农村",
    ]
)
ANSWERS = st.one_of(st.text(max_size=40), st.lists(PIECES, max_size=8).map("".join))
META = st.one_of(
    st.none(),
    st.just({}),
    st.fixed_dictionaries(
        {"gt": st.fixed_dictionaries({"m2": st.one_of(st.floats(allow_nan=True), st.text(max_size=3), st.none())})}
    ),
    st.fixed_dictionaries({"choices": st.lists(st.text(max_size=5), max_size=3)}),
)


@FAST
@given(kind=st.sampled_from(KINDS), pred=ANSWERS, ref=ANSWERS, meta=META)
def test_every_rule_is_bounded_and_never_raises(kind, pred, ref, meta):
    v = score(kind, pred, ref, meta)
    assert isinstance(v, float) and 0.0 <= v <= 1.0
    assert 0.0 <= format_score(pred) <= 1.0
    assert 0.0 <= brevity_score(pred, ref) <= 1.0


@FAST
@given(
    preds=st.lists(
        st.one_of(
            ANSWERS,
            st.none(),
            st.integers(),
            st.lists(st.fixed_dictionaries({"role": st.just("assistant"), "content": ANSWERS}), max_size=2),
        ),
        min_size=1,
        max_size=4,
    ),
    qtype=st.one_of(
        st.none(), st.sampled_from(["", "yes_no", "count", "area", "number", "open", "choice", "structured", "bogus"])
    ),
    question=st.one_of(st.none(), ANSWERS),
    ref=ANSWERS,
)
def test_reward_functions_never_raise_on_junk_completions(preds, qtype, question, ref):
    n = len(preds)
    for name, fn in BUILTIN_REWARDS.items():
        out = fn(preds, answer=[ref] * n, qtype=[qtype] * n, question=[question] * n, meta=[None] * n)
        assert len(out) == n
        assert all(v is None or 0.0 <= v <= 1.0 for v in out), (name, out)


@FAST
@given(kind=st.sampled_from(KINDS), a=ANSWERS)
def test_an_exact_match_scores_one(kind, a):
    assume(normalize_text(a))
    assert score(kind, a, a) == 1.0


@FAST
@given(a=ANSWERS, b=ANSWERS)
def test_exact_match_rules_are_symmetric(a, b):
    assert yes_no_score(a, b) == yes_no_score(b, a)
    assert choice_score(a, b) == choice_score(b, a)
    assert (count_score(a, b) == 1.0) == (count_score(b, a) == 1.0)


# unit spellings and their size in m² (1 km² = 100 公顷 = 1500 亩 = 10⁶ m²)
AREA_UNITS = [
    ("平方公里", 1e6),
    (" km²", 1e6),
    (" km2", 1e6),
    (" square kilometres", 1e6),
    ("公顷", 1e4),
    (" ha", 1e4),
    (" hectares", 1e4),
    ("亩", 1e6 / 1500),
    (" m2", 1.0),
    ("平方米", 1.0),
    (" m²", 1.0),
]
LENGTH_UNITS = [("公里", 1e3), (" km", 1e3), ("米", 1.0), (" m", 1.0), (" cm", 1e-2), ("厘米", 1e-2)]


def _spell(m2: float, unit: tuple[str, float]) -> str:
    return f"{m2 / unit[1]:.9g}{unit[0]}"


@FAST
@given(
    m2=st.floats(min_value=1.0, max_value=1e9),
    a=st.sampled_from(AREA_UNITS),
    b=st.sampled_from(AREA_UNITS),
    prefix=st.sampled_from(["", "约", "about ", "答案：", "<answer>"]),
)
def test_the_same_area_in_any_units_scores_one_both_ways(m2, a, b, prefix):
    p, r = prefix + _spell(m2, a), _spell(m2, b)
    assert number_score(p, r) == 1.0
    assert number_score(r, p) == 1.0
    assert number_score(_spell(m2, a), "about 1 km2", meta={"gt": {"m2": m2}}) == 1.0


@FAST
@given(
    metres=st.floats(min_value=0.01, max_value=1e7),
    a=st.sampled_from(LENGTH_UNITS),
    b=st.sampled_from(LENGTH_UNITS),
    c=st.sampled_from(AREA_UNITS),
)
def test_lengths_convert_and_never_match_areas(metres, a, b, c):
    assert number_score(_spell(metres, a), _spell(metres, b)) == 1.0
    assert number_score(_spell(metres, a), _spell(metres, c)) == 0.0


@FAST
@given(m2=st.floats(min_value=1.0, max_value=1e9), f=st.floats(min_value=1.03, max_value=100.0))
def test_number_reward_decays_with_relative_error(m2, f):
    v = number_score(_spell(m2 * f, (" m2", 1.0)), _spell(m2, ("公顷", 1e4)))
    assert v < 1.0
    assert math.isclose(v, math.exp(-5 * (f - 1)), rel_tol=1e-6, abs_tol=1e-12)


@FAST
@given(
    r=st.integers(min_value=0, max_value=500),
    d1=st.integers(min_value=0, max_value=50),
    d2=st.integers(min_value=0, max_value=50),
)
def test_count_reward_is_monotone_in_the_error(r, d1, d2):
    assume(d1 < d2)
    assert count_score(str(r + d1), str(r)) > count_score(str(r + d2), str(r))


@FAST
@given(h=st.lists(st.sampled_from("abcde"), max_size=12), r=st.lists(st.sampled_from("abcde"), max_size=12))
def test_bleu_is_bounded_and_one_only_for_identical(h, r):
    v = sentence_bleu(h, r)
    assert 0.0 <= v <= 1.0
    if h and h == r:
        assert v == 1.0
    if v == 1.0:
        assert len(h) >= len(r)
