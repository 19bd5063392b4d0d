"""rewards/bleu.py against sacreBLEU (2.6, test-only dependency): the same scoring (smoothing ``exp``, effective
order, brevity penalty) on the same tokens; the same text scores where the tokenizations agree (Chinese per
character — sacreBLEU's ``zh`` — and plain English); and the differences by design, each pinned exactly."""

from __future__ import annotations

import pytest

sacrebleu = pytest.importorskip("sacrebleu")
from sacrebleu.metrics import BLEU  # noqa: E402
from sacrebleu.tokenizers.tokenizer_zh import TokenizerZh  # noqa: E402

from geovl.rewards.bleu import MAX_TOKENS, sentence_bleu, text_bleu, tokenize  # noqa: E402

PAIRS = [
    ("the cat sat on the mat", "the cat is on the mat"),
    ("there is a river near the farmland", "a river runs near the farmland"),
    ("a b", "a b c d"),  # 2 tokens: effective order 2, brevity penalty
    ("a", "a b"),
    ("x y z", "a b c"),  # no unigram match: 0
    ("the the the the", "the cat"),  # clipped counts
    ("one two three four five six", "one two three four five six"),  # identical: 1
    ("one two three four five six seven", "one two three four"),  # longer hypothesis: no penalty
    ("boats in the harbour , near the pier .", "boats are in the harbour ."),
    ("图中有三栋建筑", "图中有两栋建筑"),
    ("这是一片农田，旁边有一条河流。", "这是一片农田，河流在旁边。"),
    ("水田（约12公顷）", "水田约12公顷"),
    ("机场跑道", "机场有两条跑道"),
    ("城区 urban area 很大", "城区 urban area 较大"),
    ("有", "没有"),
]


def sacre_none() -> BLEU:
    return BLEU(tokenize="none", smooth_method="exp", effective_order=True)


@pytest.mark.parametrize("hyp, ref", PAIRS)
def test_same_score_on_the_same_tokens(hyp, ref):
    h, r = tokenize(hyp), tokenize(ref)
    want = sacre_none().sentence_score(" ".join(h), [" ".join(r)]).score / 100
    assert sentence_bleu(h, r) == pytest.approx(want, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("hyp, ref", PAIRS)
def test_same_text_score_as_sacrebleu_zh_where_the_tokens_agree(hyp, ref):
    zh = TokenizerZh()
    assert tokenize(hyp) == zh(hyp).split() and tokenize(ref) == zh(ref).split()
    want = BLEU(tokenize="zh", smooth_method="exp", effective_order=True).sentence_score(hyp, [ref]).score / 100
    assert text_bleu(hyp, ref) == pytest.approx(want, rel=1e-12, abs=1e-15)


def test_scores_move_the_same_way():
    # a sanity check that the comparison is not vacuous: the pairs span 0 to 1
    scores = [text_bleu(h, r) for h, r in PAIRS]
    assert min(scores) == 0.0 and max(scores) == 1.0 and len({round(s, 9) for s in scores}) >= 10


# --- differences by design (tokenization; the token cap) ------------------------------------------------------
@pytest.mark.parametrize(
    "text, ours, sacre_zh",
    [
        # decimals and thousands separators: we split at every punctuation mark, sacreBLEU (13a rules) keeps numbers
        ("面积3.2 km2", ["面", "积", "3", ".", "2", "km2"], ["面", "积", "3.2", "km2"]),
        ("约 1,500 亩", ["约", "1", ",", "500", "亩"], ["约", "1,500", "亩"]),
        # apostrophes and hyphens inside words: we split, 13a keeps the word
        ("don't stop", ["don", "'", "t", "stop"], ["don't", "stop"]),
        ("a-b", ["a", "-", "b"], ["a-b"]),
        # kana and Hangul: one token per character for us; sacreBLEU's zh splits Chinese characters only
        ("東京タワー", ["東", "京", "タ", "ワ", "ー"], ["東", "京", "タワー"]),
        ("서울", ["서", "울"], ["서울"]),
    ],
)
def test_tokenization_differences(text, ours, sacre_zh):
    assert tokenize(text) == ours
    assert TokenizerZh()(text).split() == sacre_zh


def test_a_number_difference_changes_the_score_as_documented():
    hyp, ref = "面积3.5 km2", "面积3.2 km2"
    # ours: 面 积 3 . 5 km2 vs 面 积 3 . 2 km2 → 5 of 6 unigrams match; sacreBLEU: 3.5 ≠ 3.2 → 3 of 4
    ours = text_bleu(hyp, ref)
    theirs = BLEU(tokenize="zh", smooth_method="exp", effective_order=True).sentence_score(hyp, [ref]).score / 100
    assert ours == pytest.approx(
        sacre_none().sentence_score("面 积 3 . 5 km2", ["面 积 3 . 2 km2"]).score / 100, rel=1e-12
    )
    assert theirs == pytest.approx(
        sacre_none().sentence_score("面 积 3.5 km2", ["面 积 3.2 km2"]).score / 100, rel=1e-12
    )
    assert ours != pytest.approx(theirs)


def test_the_token_cap():
    ref = " ".join(f"w{i}" for i in range(MAX_TOKENS + 100))
    hyp = " ".join(f"w{i}" for i in range(MAX_TOKENS)) + " " + " ".join(f"x{i}" for i in range(100))
    assert text_bleu(hyp, ref) == 1.0  # only the first MAX_TOKENS tokens of each side are compared
    assert sacre_none().sentence_score(hyp, [ref]).score / 100 < 0.99  # sacreBLEU reads everything
