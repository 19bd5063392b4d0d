"""Sentence BLEU with smoothing, for short answers in Chinese and English.

Tokens: every CJK character (Han, kana, Hangul) is one token; other text splits into runs of
letters/digits (words) and single punctuation marks. Mixed text ("面积3.2 km2") mixes both.

:func:`sentence_bleu` (Papineni et al. 2002, for one sentence):

- orders ``n = 1 .. N`` with ``N = min(max_n, len(hypothesis))`` ("effective order": a 2-token
  answer is not punished for having no 4-grams);
- ``p_n`` = clipped n-gram matches / hypothesis n-grams;
- no unigram match at all → 0.0;
- a higher order with no match is smoothed like sacreBLEU's ``exp`` method (Chen & Cherry 2014,
  method 3 / mteval-v13a): the k-th zero-match order gets ``p_n = 1 / (2^k · hypothesis n-grams)``;
- brevity penalty ``BP = 1`` if the hypothesis is longer than the reference, else ``exp(1 - r/c)``;
- ``BLEU = BP · exp(mean_n log p_n)``, in [0, 1]; identical token lists → 1.0.

At most :data:`MAX_TOKENS` tokens of each side are used (answers are short; this bounds the cost of
junk completions).

Against sacreBLEU (``BLEU(smooth_method="exp", effective_order=True).sentence_score``; tests/test_bleu_parity.py):
the same score on the same tokens, and the same score as its ``zh`` tokenizer wherever the tokens agree
(Chinese per character, plain English words and punctuation). By design the tokens differ for decimals and
thousands separators (``3.2`` → ``3 . 2``; sacreBLEU keeps ``3.2``), apostrophes and hyphens inside words
(``don't`` → ``don ' t``), kana and Hangul (one token per character here), and texts over MAX_TOKENS tokens.
"""

from __future__ import annotations

import math
import re
from collections import Counter

__all__ = ["MAX_TOKENS", "sentence_bleu", "text_bleu", "tokenize"]

MAX_TOKENS = 512
_TOKEN = re.compile(
    r"[\u2e80-\u2fdf\u3040-\u30ff\u3100-\u312f\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]"
    r"|[^\W_\u2e80-\u2fdf\u3040-\u30ff\u3100-\u312f\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]+"
    r"|[^\w\s]|_"
)


def tokenize(text: str) -> list[str]:
    """CJK characters one by one, other words whole, punctuation marks one by one."""
    return _TOKEN.findall(text or "")[:MAX_TOKENS]


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def sentence_bleu(hypothesis: list[str], reference: list[str], max_n: int = 4) -> float:
    """Smoothed sentence BLEU of two token lists (see the module docstring)."""
    hyp, ref = list(hypothesis)[:MAX_TOKENS], list(reference)[:MAX_TOKENS]
    if not hyp or not ref:
        return 0.0
    order = min(max_n, len(hyp))
    log_sum = 0.0
    zeros = 0
    for n in range(1, order + 1):
        h = _ngrams(hyp, n)
        total = sum(h.values())
        matches = sum((h & _ngrams(ref, n)).values())
        if matches == 0:
            if n == 1:
                return 0.0
            zeros += 1
            p = 1.0 / (2**zeros * total)
        else:
            p = matches / total
        log_sum += math.log(p)
    c, r = len(hyp), len(ref)
    bp = 1.0 if c > r else math.exp(1.0 - r / c)
    return min(1.0, max(0.0, bp * math.exp(log_sum / order)))


def text_bleu(hypothesis: str, reference: str, max_n: int = 4) -> float:
    """:func:`sentence_bleu` of two texts tokenised with :func:`tokenize`."""
    return sentence_bleu(tokenize(hypothesis), tokenize(reference), max_n)
