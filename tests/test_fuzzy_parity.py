"""char_similarity (rapidfuzz) against the difflib ratio it replaced: equal where difflib's greedy matching
finds a longest common subsequence, never below it, exactly 2·LCS/T always, and no 2,000-character cap."""

from __future__ import annotations

import difflib
import random

import pytest

from geovl.evaluate.rules import char_similarity
from geovl.rewards.rules import open_score


def old_char_similarity(a: str, b: str) -> float:
    """The function before rapidfuzz (evaluate/rules.py up to this change), cap included."""
    if not a or not b:
        return 0.0
    return difflib.SequenceMatcher(None, a[:2000], b[:2000], autojunk=False).ratio()


def lcs_ratio(a: str, b: str) -> float:
    """2·LCS/(len a + len b) by the textbook dynamic programme (small strings only)."""
    if not a or not b:
        return 0.0
    prev = [0] * (len(b) + 1)
    for ca in a:
        cur = [0]
        for j, cb in enumerate(b):
            cur.append(prev[j] + 1 if ca == cb else max(prev[j + 1], cur[j]))
        prev = cur
    return 2 * prev[-1] / (len(a) + len(b))


# pairs where the two must agree: one changed/inserted/deleted stretch, prefixes, suffixes, identical,
# disjoint, Chinese, mixed, the values other tests pin by hand
AGREE = [
    ("一条河流", "河流"),  # 2·2/6 (tests/test_normalize.py)
    ("检查防水", "检查防水层"),  # 2·4/9 (tests/test_structured.py)
    ("there is a river", "there is a lake"),
    ("the farmland covers 12 hectares", "the farmland covers 15 hectares"),
    ("城区面积约为 3.5 平方公里", "城区面积约为 4 平方公里"),
    ("有 3 栋建筑", "有三栋建筑"),
    ("yes", "yes"),
    ("yes", "no"),
    ("abc", "xyz"),
    ("airport", "airport runway"),
    ("a small harbour with boats", "harbour with boats"),
    ("水田", "水田和旱地"),
    ("forest 森林", "forest"),
    ("", "river"),
    ("river", ""),
]


@pytest.mark.parametrize("a, b", AGREE)
def test_agrees_with_difflib_where_it_must(a, b):
    assert char_similarity(a, b) == old_char_similarity(a, b)  # the same float, bit for bit
    assert char_similarity(a, b) == pytest.approx(lcs_ratio(a, b), abs=1e-12)
    assert char_similarity(a, b) == pytest.approx(char_similarity(b, a), abs=1e-12)


def test_hand_values():
    assert char_similarity("一条河流", "河流") == pytest.approx(4 / 6)
    assert char_similarity("检查防水", "检查防水层") == pytest.approx(8 / 9)
    assert char_similarity("same", "same") == 1.0 and char_similarity("", "") == 0.0


def test_exactly_the_lcs_ratio_and_never_below_difflib():
    rng = random.Random(14)
    differ = 0
    for _ in range(600):
        alphabet = rng.choice(["abc", "河流湖泊", "ab 1"])
        a = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12)))
        b = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12)))
        new, old = char_similarity(a, b), old_char_similarity(a, b)
        assert new == pytest.approx(lcs_ratio(a, b), abs=1e-12), (a, b)
        assert new >= old - 1e-12, (a, b)
        differ += new > old + 1e-12
    assert differ > 0  # the documented difference does occur on such strings


def test_the_documented_difference():
    # difflib takes the first longest block ("c" / "a" of length 1) and recurses around it: 1 match;
    # the longest common subsequence is "ca": 2 matches
    assert old_char_similarity("acac", "cbba") == pytest.approx(2 * 1 / 8)
    assert char_similarity("acac", "cbba") == pytest.approx(2 * 2 / 8)


def test_no_two_thousand_character_cap():
    a = "农" * 2500
    b = "农" * 2000 + "林" * 500
    assert old_char_similarity(a, b) == 1.0  # the old cap saw only the first 2000 characters
    assert char_similarity(a, b) == pytest.approx(2 * 2000 / 5000)
    long_a = "".join(random.Random(1).choice("abcdefgh 河流") for _ in range(20_000))
    long_b = long_a[:10_000] + "X" + long_a[10_000:]
    assert char_similarity(long_a, long_b) == pytest.approx(2 * 20_000 / 40_001)


def test_the_open_reward_uses_it():
    from geovl.evaluate.normalize import normalize_text
    from geovl.rewards.bleu import text_bleu

    for pred, ref in [("acac", "cbba"), ("一条河流", "河流"), ("there is a river", "there is a lake")]:
        p, r = normalize_text(pred), normalize_text(ref)
        assert open_score(pred, ref) == pytest.approx(0.6 * char_similarity(p, r) + 0.4 * text_bleu(p, r), abs=1e-12)
    assert open_score("acac", "cbba") == pytest.approx(0.6 * 0.5)  # the LCS ratio, not difflib's 0.25
