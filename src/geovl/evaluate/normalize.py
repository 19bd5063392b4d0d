"""Answer normalisation for scoring (``geovl score`` / ``geovl compare``) and GRPO rewards.

Pure functions on text; none of them raises on junk input (``None``, ``""``, ``"???"``,
``"<|im_end|>"``, megabytes of text): parsers return ``None`` when nothing can be read.

- :func:`normalize_text` — NFKC, lowercase, markup/special tokens and ``<answer>`` tags removed,
  "answer:"/"答案：" prefixes and surrounding punctuation stripped, spaces collapsed.
- :func:`parse_yes_no` — ``True``/``False``/``None`` from English or Chinese answers, including
  short sentences ("Yes, there is water." → True, "图中没有水体" → False); both → ``None``.
- :func:`normalize_choice` — normalised text with zh/en synonyms mapped to one canonical form
  (农村/乡村 → ``rural``, 严重 → ``severe``), optionally resolved against the offered choices.
- :func:`parse_date` — a year, a month, a day or an interval of two of them in canonical ISO form
  (``"2019"``, ``"2019-06"``, ``"2019-06-01"``, ``"2019/2021"``) from English or Chinese answers
  ("2019年", "June 1, 2019", "2019年6月1日", "2019–2021", "2019 到 2021", "2019年至2021年",
  "between 2019 and 2021"); ``None`` when no date, several unrelated ones or a negated one.

Numbers and quantities live in :mod:`geovl.evaluate.quantities` and the per-qtype scoring rules
in :mod:`geovl.evaluate.rules`; their public functions (``parse_number``, ``parse_quantity``,
``is_correct``, ``score_sample``) are importable from this module too, so callers need only
``from geovl.evaluate.normalize import ...``.
"""

from __future__ import annotations

import itertools
import re
import unicodedata

__all__ = [
    "strip_markup",
    "normalize_text",
    "parse_yes_no",
    "normalize_choice",
    "canonical_choice",
    "parse_date",
    "parse_number",
    "parse_quantity",
    "is_correct",
    "score_sample",
]

# ---------------------------------------------------------------------------------------------
# text clean-up

_THINK_TAG = re.compile(r"<(/?)think>", re.I)
_ANSWER_TAG = re.compile(r"<(/?)answer>", re.I)
_SPECIAL = re.compile(r"<\|[^<>|]{0,40}\|>")
_TAG = re.compile(r"</?[a-z_][a-z0-9_:-]{0,30}\s*/?>", re.I)
_FENCE = re.compile(r"```[a-z]*", re.I)
_SPACES = re.compile(r"\s+")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2064\ufeff]")
# "answer:", "the final answer is", "答案：", "答案是", "答：", "回答："
_PREFIX = re.compile(
    r"^(?:(?:the\s+)?(?:final\s+)?answer\b(?:\s+is\b)?\s*[:：]?|答案\s*(?:是|为)?\s*[:：]?|(?:回答|答)\s*[:：])\s*",
    re.I,
)
# stripped from both ends; '-', '+', '%', '.' inside numbers etc. are kept where they matter
_EDGE_PUNCT = "".join(sorted(set("!\"'(),.:;?[]{}<>`*_~#|\\/" + "。，！？、：；“”‘’（）《》〈〉【】「」『』…·～—　")))


def _to_str(s) -> str:
    if s is None:
        return ""
    if isinstance(s, bytes):
        return s.decode("utf-8", "replace")
    return s if isinstance(s, str) else str(s)


def _drop_think(t: str) -> str:
    """Text outside ``<think>...</think>`` (an unclosed block runs to the end). One linear pass:
    lazy regexes like ``<think>.*?</think>`` are quadratic on text with many open tags."""
    if "<" not in t:
        return t
    keep, pos, inside = [], 0, False
    for m in _THINK_TAG.finditer(t):
        closing = m.group(1) == "/"
        if not inside and not closing:
            keep.append(t[pos : m.start()])
            inside = True
        elif inside and closing:
            inside = False
        pos = m.end() if (closing or inside) else pos
    if not inside:
        keep.append(t[pos:])
    return " ".join(keep)


def _answer_part(t: str) -> str:
    """Content of the last closed ``<answer>...</answer>``, else what follows the last ``<answer>``."""
    if "<" not in t:
        return t
    last_open, closed = None, None
    for m in _ANSWER_TAG.finditer(t):
        if m.group(1) != "/":
            last_open = m.end()
        elif last_open is not None:
            closed, last_open = (last_open, m.start()), None
    if closed:
        return t[closed[0] : closed[1]]
    return t[last_open:] if last_open is not None else t


def strip_markup(s) -> str:
    """NFKC text with ``<think>`` blocks, special tokens (``<|im_end|>``) and tags removed.

    A ``</think>`` without an opening tag drops everything before it (Qwen3 puts ``<think>`` in
    the prompt, so completions start inside the reasoning). Linear time on any input.

    If the text has ``<answer>...</answer>`` the content of the last one is kept (GRPO format);
    an unclosed ``<answer>`` keeps what follows it. Case and punctuation are untouched."""
    t = _CONTROL.sub(" ", unicodedata.normalize("NFKC", _to_str(s)))  # control / zero-width characters
    t = _answer_part(_drop_think(t))
    t = _SPECIAL.sub(" ", t)
    t = _TAG.sub(" ", t)
    t = _FENCE.sub(" ", t)
    return t.replace("\u2212", "-")  # U+2212 minus sign → ASCII


def normalize_text(s) -> str:
    """Canonical short-answer text: see the module docstring. Always returns a string."""
    t = _SPACES.sub(" ", strip_markup(s).lower()).strip()
    while True:
        before = t
        t = t.strip(_EDGE_PUNCT + " ")
        t = _PREFIX.sub("", t)
        if t == before:
            return t


# ---------------------------------------------------------------------------------------------
# yes / no

_YES_EXACT = {
    "yes", "y", "yeah", "yep", "yup", "true", "correct", "right", "affirmative", "sure", "yes it is",
    "yes there is", "yes there are", "it is", "there is", "there are", "present", "exists",
    "是", "是的", "对", "对的", "有", "有的", "存在", "正确", "没错", "不错", "确实", "确实是", "是啊", "是呀",
    "对啊", "嗯", "肯定", "肯定是", "真", "真的", "会", "能", "可以", "有的是",
}  # fmt: skip
_NO_EXACT = {
    "no", "n", "nope", "false", "incorrect", "wrong", "negative", "none", "not", "no it is not",
    "no there is not", "no there are not", "absent", "not present", "nothing",
    "否", "不", "不是", "不对", "错", "错误", "不正确", "没有", "没", "无", "不存在", "并没有", "不会", "不能",
    "没有的", "假", "非", "并非", "否定", "不可以", "未见", "未发现",
}  # fmt: skip
_CLAUSE = re.compile(r"[,.;!?，。；！？、:：\n]+")
_UNSURE = (
    r"(?<![a-z])(?:not\s+sure|unsure|uncertain|unclear|no\s+idea|[a-z]*n't\s+(?:know|tell|say|determine)|"
    r"(?:cannot|can\s+not)\s+(?:tell|say|determine|be\s+determined)|hard\s+to\s+(?:tell|say))(?![a-z])|"
    r"不确定|不知道|无法|不清楚|看不清|难以判断|不好说|没有把握"
)
HEDGE = re.compile(_UNSURE)  # "not sure", "无法判断": the answer abstains
# cue classes, longest/most specific alternatives first; matched left to right without overlap
_CUES = [
    ("unsure", _UNSURE),
    (
        "neutral",
        r"yes or no|yes/no|true or false|是否|是不是|有没有|有无|对不对|否则|但是|还是|可是|于是|总是|"
        r"所有|对应|对于|相对|对比|针对|无论|无人机|是非|不同|不仅|一无|有关",
    ),
    (
        "strong_neg",
        r"(?<![a-z])(?:not\s+(?:true|correct|right)|[a-z]*n't\s+(?:true|correct|right)|incorrect|"
        r"false|nope|no(?!\s+[a-z])|negative|wrong)(?![a-z])|不是|不对|不正确|错误|并非|否|错",
    ),
    (
        "strong_pos",
        r"(?<![a-z])(?:yes|yeah|yep|yup|true|correct|affirmative)(?![a-z])|是的|对的|正确|没错|不错|确实|对",
    ),
    ("weak_pos", r"不少"),  # before the bare 不 below
    (
        "weak_neg",
        r"(?<![a-z])(?:no|not|[a-z]*n't|none|nothing|nobody|absent|never|without|neither|nor|cannot|"
        r"lacks?|lacking)(?![a-z])|没有|不存在|看不到|未见|未发现|没|无|未|不|非",
    ),
    (
        "weak_pos",
        r"(?<![a-z])(?:there\s+(?:is|are|was|were)|there's|present|exists?|visible|contains?|has|have|"
        r"had|seen|detected|some|several|many)(?![a-z])|不少|存在|可见|看到|包含|有|是",
    ),
]
_CUE_RE = re.compile("|".join(f"(?P<g{i}>{pat})" for i, (_, pat) in enumerate(_CUES)))


def _cue_classes(text: str) -> set[str]:
    return {_CUES[int(m.lastgroup[1:])][0] for m in _CUE_RE.finditer(text)} - {"neutral"}


def parse_yes_no(s) -> bool | None:
    """``True`` for yes, ``False`` for no, ``None`` when unreadable or ambiguous.

    Order of evidence: the whole answer is a yes/no word; the first clause is one (unless a later
    clause says the opposite word → ``None``); explicit verdict words anywhere ("yes", "不是",
    both → ``None``); else per clause, negation beats existence ("there is no water" → no) and
    clauses that disagree ("有水体，没有建筑") or hedging ("not sure", "无法判断") → ``None``."""
    t = normalize_text(s).replace("’", "'").replace("‘", "'")
    if not t:
        return None
    if t in _YES_EXACT:
        return True
    if t in _NO_EXACT:
        return False
    clauses = [c.strip() for c in _CLAUSE.split(t) if c.strip()]
    if not clauses:
        return None
    first = clauses[0]
    if first in _YES_EXACT or first in _NO_EXACT:
        verdict = first in _YES_EXACT
        opposite = _NO_EXACT if verdict else _YES_EXACT
        return None if any(c in opposite for c in clauses[1:]) else verdict
    per_clause = [_cue_classes(c) for c in clauses]
    found = set().union(*per_clause)
    if "strong_pos" in found and "strong_neg" in found:
        return None
    if "strong_pos" in found or "strong_neg" in found:
        return "strong_pos" in found
    if "unsure" in found:
        return None
    polarities = set()
    for classes in per_clause:
        if "weak_neg" in classes:
            polarities.add(False)
        elif "weak_pos" in classes:
            polarities.add(True)
    return polarities.pop() if len(polarities) == 1 else None


# ---------------------------------------------------------------------------------------------
# choices

# canonical form -> synonyms (normalised text); single CJK characters and generic English words
# only count as a whole answer, never when searched for inside a sentence
CHOICE_SYNONYMS: dict[str, tuple[str, ...]] = {
    "rural": ("rural", "rural area", "countryside", "农村", "乡村", "乡下", "农村地区", "乡村地区"),
    "urban": ("urban", "urban area", "city", "town", "城镇", "城市", "城区", "市区", "城镇地区", "城市地区"),
    "minor": ("minor", "slight", "mild", "low", "轻微", "轻度", "低", "轻", "低风险", "轻微风险"),
    "moderate": ("moderate", "medium", "intermediate", "中等", "中度", "中", "中风险", "中等风险"),
    "severe": ("severe", "serious", "major", "high", "严重", "重度", "高", "重", "高风险", "严重风险"),
}
_SYNONYM_TO_CANON = {syn: canon for canon, syns in CHOICE_SYNONYMS.items() for syn in syns}
_GENERIC = {"low", "high", "city", "town", "major", "medium", "light", "mild", "slight"}
_LETTER = re.compile(r"^(?:option|choice|选项)?\s*\(?([a-h])\)?$")
_LETTER_LABEL = re.compile(r"^\(?([a-h])\)?\s*[.)、:]\s*(.+)$")


def canonical_choice(t: str) -> str:
    """Canonical form of already-normalised text (synonym table lookup; else ``t`` itself)."""
    return _SYNONYM_TO_CANON.get(t, t)


def _contains(text: str, word: str) -> bool:
    if not word:
        return False
    if word.isascii():
        return re.search(rf"(?<![a-z0-9]){re.escape(word)}(?![a-z0-9])", text) is not None
    return len(word) >= 2 and word in text


def _searchable(word: str) -> bool:
    return (len(word) >= 2 or word.isascii()) and word not in _GENERIC


def _innermost(hits: set[str], spelled: dict[str, set[str]]) -> set[str]:
    """Drop hits whose every spelling is contained in another hit's spelling ("1000" vs "more than 1000")."""
    keep = set()
    for h in hits:
        shadowed = any(o != h and all(any(w != x and w in x for x in spelled[o]) for w in spelled[h]) for o in hits)
        if not shadowed:
            keep.add(h)
    return keep


def normalize_choice(s, choices=None) -> str | None:
    """Canonical choice for ``s`` (``None`` if empty).

    Without ``choices``: the synonym-mapped normalised text; a sentence that mentions exactly
    one known option ("This is a rural area." → ``rural``) maps to it. With ``choices`` (the
    offered options): a letter ("B", "(b)", "选项B") picks that option, and a sentence
    mentioning exactly one option resolves to it; otherwise the normalised text is returned."""
    t = normalize_text(s)
    if not t:
        return None
    canon = canonical_choice(t)
    if choices:
        opts = []
        for c in choices:
            ct = normalize_text(c)
            if ct:
                opts.append(canonical_choice(ct))
        if canon in opts:
            return canon
        m = _LETTER.match(t)
        if m:
            i = ord(m.group(1)) - ord("a")
            return opts[i] if i < len(opts) else canon
        m = _LETTER_LABEL.match(t)
        if m:
            rest = normalize_choice(m.group(2), choices)
            if rest in opts:
                return rest
        spelled = {o: {o, *CHOICE_SYNONYMS.get(o, ())} for o in opts}
        hits = {o for o in opts if any(_contains(t, w) for w in spelled[o] if w == o or _searchable(w))}
        hits = _innermost(hits, spelled)
        return hits.pop() if len(hits) == 1 else canon
    if canon != t:
        return canon
    hits = {c for c, syns in CHOICE_SYNONYMS.items() if any(_searchable(w) and _contains(t, w) for w in syns)}
    return hits.pop() if len(hits) == 1 else t


# ---------------------------------------------------------------------------------------------
# dates and intervals (qtype ``date``)

_MONTHS = {
    m: i + 1
    for i, names in enumerate(
        ("jan january", "feb february", "mar march", "apr april", "may", "jun june", "jul july", "aug august",
         "sep sept september", "oct october", "nov november", "dec december")
    )
    for m in names.split()
}  # fmt: skip
_MONTH_RE = "|".join(sorted(_MONTHS, key=len, reverse=True))
_ZH_DIGITS = str.maketrans("〇零一二三四五六七八九", "00123456789")
_ZH_YEAR = re.compile(r"[〇零一二三四五六七八九]{4}(?=\s*年)")
# a 4-digit year 1000-2999 that is not part of a longer number, a decimal or a quantity ("1500亩", "2000 ha")
_YEAR = r"(?<![\d.,])([12]\d{3})(?![\d]|[.,]\d)"
_NOT_QUANTITY = (
    r"(?!\s*(?:%|percent|公顷|亩|平方|公里|千米|米|栋|个|座|处|块|像元|像素|pixels?|ha\b|km|m\b|m2|m²|acres?|hectares?|"
    r"square|sq\b|buildings?))"
)
_Y = r"(?<![\d.,])([12]\d{3})"  # a year starting a full or month date
_DATE_TOKEN = re.compile(
    # 2019-06-01, 2019/6/1, 2019.06.01, 2019年6月1日
    rf"{_Y}\s*(?:[-/.]|年)\s*(\d{{1,2}})\s*(?:[-/.]|月)\s*(\d{{1,2}})(?!\d)\s*日?"
    # 2019-06, 2019/6, 2019年6月 (not "2019.5": a decimal)
    rf"|{_Y}\s*(?:[-/]\s*(\d{{1,2}})(?![\d.])|年\s*(\d{{1,2}})\s*月)"
    # June 1, 2019 / 1 June 2019 / June 2019
    rf"|(?<![a-z])({_MONTH_RE})\.?\s+(\d{{1,2}})(?:st|nd|rd|th)?,?\s+{_YEAR}"
    rf"|(?<!\d)(\d{{1,2}})(?:st|nd|rd|th)?\s+(?:of\s+)?({_MONTH_RE})\.?,?\s+{_YEAR}"
    rf"|(?<![a-z])({_MONTH_RE})\.?,?\s+(?:of\s+)?{_YEAR}"
    # 2019 / 2019年
    rf"|{_YEAR}{_NOT_QUANTITY}\s*年?"
)
# what may join the two ends of an interval (after the text between them is stripped of spaces)
_RANGE_JOIN = re.compile(r"^(?:-+|–|—|~|～|/|至|到|至到|和|与|及|to|and|through|thru|until|till|-to-)$")
_NEGATED = re.compile(
    r"(?:(?<![a-z])(?:not|never|isn't|wasn't|aren't|weren't|didn't)(?:\s+(?:in|on|during|from|between))?|不是在?|并非|不在|没有在?|非)$"
)


def _token_value(m: re.Match) -> str | None:
    """Canonical ISO text of one matched date token, ``None`` when it is not a real date."""
    import datetime

    g = m.groups()
    if g[0]:
        y, mo, d = g[0], g[1], g[2]
    elif g[3]:
        y, mo, d = g[3], g[4] or g[5], None
    elif g[6]:
        y, mo, d = g[8], str(_MONTHS[g[6]]), g[7]
    elif g[9]:
        y, mo, d = g[11], str(_MONTHS[g[10]]), g[9]
    elif g[12]:
        y, mo, d = g[13], str(_MONTHS[g[12]]), None
    else:
        return g[14]
    try:
        if d is None:
            datetime.date(int(y), int(mo), 1)
            return f"{int(y):04d}-{int(mo):02d}"
        return datetime.date(int(y), int(mo), int(d)).isoformat()
    except ValueError:
        return None


def parse_date(s) -> str | None:
    """Canonical date text of an answer: ``"2019"`` (a year), ``"2019-06"`` (a month), ``"2019-06-01"``
    (a day) or ``"START/END"`` (an interval, ISO 8601's separator), else ``None``.

    Reads ISO dates (``2019-06-01``, ``2019/6/1``, ``2019.06.01``), Chinese dates (``2019年6月1日``,
    ``二〇一九年``), English ones (``June 1, 2019``, ``1 June 2019``, ``June 2019``) and years (``2019``,
    ``2019年``), anywhere in a short sentence ("The buildings first appear in 2020."). Two dates form an
    interval when only a range word joins them: ``-`` ``–`` ``~`` ``/`` 至 到 和 与 to and through until
    ("2019–2021", "2019 到 2021", "2019年至2021年", "between 2019 and 2021", "from 2019 to 2021"). An interval
    whose end precedes its start, more than two dates, two dates joined otherwise ("2019 or 2021",
    "2019年还是2021年"), a negated date ("not 2019", "不是2019年") and text with no date give ``None``.
    Four-digit numbers with a unit are quantities, not years ("1500亩", "2000 ha")."""
    t = normalize_text(s)
    if not t:
        return None
    t = _ZH_YEAR.sub(lambda m: m.group(0).translate(_ZH_DIGITS), t)
    tokens = list(itertools.islice(_DATE_TOKEN.finditer(t), 3))  # a third date already makes it unreadable
    if not tokens or len(tokens) > 2:
        return None
    values = [_token_value(m) for m in tokens]
    if any(v is None for v in values):
        return None
    if any(_NEGATED.search(t[: m.start()].rstrip()) for m in tokens):
        return None
    if len(values) == 1:
        return values[0]
    join = re.sub(r"\s+", "", t[tokens[0].end() : tokens[1].start()])
    if not _RANGE_JOIN.match(join):
        return None
    start, end = values
    if _date_key(end) < _date_key(start):
        return None
    return f"{start}/{end}"


def _date_key(v: str) -> tuple[int, int, int]:
    parts = [int(x) for x in v.split("-")]
    return tuple(parts + [0] * (3 - len(parts)))  # type: ignore[return-value]


def date_at_precision(value: str, like: str) -> str:
    """``value`` (canonical, from :func:`parse_date`) cut to the precision of ``like``, end by end:
    ``"2019-06-01"`` like ``"2020"`` → ``"2019"``; an interval against an interval cuts both ends. A value
    coarser than ``like``, or a single date against an interval (or the reverse), is returned unchanged."""
    vs, ls = value.split("/"), like.split("/")
    if len(vs) != len(ls):
        return value
    return "/".join(v[: len(ref)] if len(v) > len(ref) else v for v, ref in zip(vs, ls))


# ---------------------------------------------------------------------------------------------
# lazy re-exports (no import cycle: quantities and rules import this module)

_REEXPORTS = {
    "parse_number": "quantities",
    "parse_quantity": "quantities",
    "is_correct": "rules",
    "score_sample": "rules",
}


def __getattr__(name: str):
    mod = _REEXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__package__}.{mod}"), name)
