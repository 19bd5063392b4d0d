"""Reading the scores out of a judge model's free text (MMDU-style judgments), robustly.

:func:`parse_judgment` never raises; it returns a JSON-serialisable dict::

    {"scores": {"creativity": 8.0, ..., "overall": 7.0},   # valid values only
     "status": "ok" | "partial" | "unparseable",
     "missing": [keys without a valid value, canonical order],
     "rejected": [{"dim", "text", "reason"}],             # values seen but not accepted
     "conflicts": [{"dim", "kept", "ignored": [...]}],     # other valid values seen for a key
     "from_dict": bool}                                   # a final dictionary/JSON was used

Keys: the six MMDU dimensions :data:`DIMENSIONS` plus :data:`OVERALL`. ``ok`` = all seven
valid, ``partial`` = at least one, ``unparseable`` = none.

What is understood
  * dictionaries and JSON objects anywhere in the text (MMDU ends its judgments with
    ``{'Creativity': 8, ..., 'Overall Score': 7}``): JSON first, then Python literals (read
    with :func:`ast.literal_eval`, never ``eval``); nested objects (``{"scores": {...}}``,
    ``{"creativity": {"score": 8}}``) and string values (``"8/10"``, ``"8分"``);
  * prose and markdown: ``创造性：8分``, ``Creativity: 8/10``, ``**Richness** - 7``,
    ``- 视觉感知（满分10分）：7``, ``创造性得分为8``, tables (``| 创造性 | 8 |``, and header
    row of names over a row of numbers), a heading line followed by an explanation and then
    ``Score: 3`` / ``评分：3分`` / ``3/10`` / ``给3分``;
  * dimension names in English and Chinese with synonyms (:data:`SYNONYMS`), any case,
    ``visual_perception`` / ``Visual-Perception`` spellings; full-width digits (NFKC);
    Chinese numerals followed by 分 (``八分``; ``十分`` followed by a Chinese character is the
    adverb "very", not a score).

Decisions (documented, tested in ``tests/test_judge_parse.py``)
  * Scale: scores are on 1–10; decimals are kept (7.5). A value written against 100
    (``80/100``, ``80%``, ``out of 100``) is divided by 10. Any other value outside [1, 10]
    (``0``, ``85`` without ``/100``) is rejected (``out_of_range``), never clamped or guessed;
    a denominator other than 10 or 100 (``4/5``) is rejected (``bad_scale``); a band such as
    ``7-8分`` is rejected (``range``). Numbers that count things (``2 images``, ``3张``) and
    maxima (``满分10分``, ``out of 10`` before the value) are not scores.
  * Duplicates: a valid value in the judge's last dictionary/JSON object wins (it is the
    judge's own summary); otherwise the first valid occurrence in the text wins. Other valid
    values that differ are listed in ``conflicts``; they are never averaged.
  * A value that is only written on the line after the dimension name needs a marker
    (``Score: 8``, ``8/10``, ``8分``); a bare number on the next line is not read (list
    numbering would be mistaken for scores).
"""

from __future__ import annotations

import ast
import json
import re
import unicodedata

DIMENSIONS = (
    "creativity",
    "richness",
    "visual_perception",
    "logical_coherence",
    "answer_accuracy",
    "image_relationship",
)
OVERALL = "overall"
KEYS = DIMENSIONS + (OVERALL,)

# canonical key → (English label, Chinese label) used by templates and reports
LABELS = {
    "creativity": ("Creativity", "创造性"),
    "richness": ("Richness", "丰富性"),
    "visual_perception": ("Visual Perception", "视觉感知"),
    "logical_coherence": ("Logical Coherence", "逻辑连贯性"),
    "answer_accuracy": ("Answer Accuracy", "答案准确性"),
    "image_relationship": ("Image Relationship Understanding", "图像关系理解"),
    "overall": ("Overall Score", "总体评分"),
}

SYNONYMS = {
    "creativity": ["creativity", "creative", "originality", "创造性", "创造力", "创意性", "创意", "创新性", "原创性", "新颖性"],
    "richness": ["richness", "content richness", "informativeness", "丰富性", "丰富度", "丰富程度", "内容丰富度", "内容丰富性",
                 "信息丰富度", "丰富"],
    "visual_perception": ["visual perception", "perception", "visual understanding", "视觉感知", "视觉感知能力", "视觉理解",
                          "视觉识别", "图像感知", "感知能力"],
    "logical_coherence": ["logical coherence", "coherence", "logical consistency", "logic", "逻辑连贯性", "逻辑连贯", "逻辑一致性",
                          "逻辑性", "连贯性", "逻辑"],
    "answer_accuracy": ["answer accuracy", "accuracy", "answer correctness", "correctness", "答案准确性", "回答准确性", "答案准确度",
                        "准确性", "准确度", "正确性"],
    "image_relationship": ["image relationship understanding", "image relation understanding", "image relationships",
                           "image relationship", "image relations", "relationship understanding", "multi-image understanding",
                           "图像关系理解", "图片关系理解", "图像间关系理解", "多图关系理解", "图像关联理解", "图像关系", "图片关系",
                           "多图理解", "关系理解"],
    "overall": ["overall score", "overall rating", "overall", "total score", "final score", "总体评分", "总体得分", "总评分",
                "综合评分", "综合得分", "整体评分", "整体得分", "总分", "总体", "综合", "总评"],
}  # fmt: skip

MAX_CHARS = 50_000  # longer judge outputs are read up to here
CONTEXT = 24  # characters around a value that decide ranges ("7-8") and maxima ("满分10")
_CJK_DIGITS = {"零": 0, "一": 1, "二": 2, "两": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7, "八": 8, "九": 9}


def _key_norm(s: str) -> str:
    return re.sub(r"[\s_\-]+", " ", unicodedata.normalize("NFKC", str(s)).strip().lower()).strip(" *'\"")


_KEY_OF = {_key_norm(name): key for key, names in SYNONYMS.items() for name in names}
_KEY_OF.update({_key_norm(en): k for k, (en, _) in LABELS.items()})
_KEY_OF.update({_key_norm(zh): k for k, (_, zh) in LABELS.items()})


def dim_of(name: str) -> str | None:
    """Canonical key of a dimension name (English/Chinese/synonym, any case), else ``None``."""
    k = _key_norm(name)
    if k in _KEY_OF:
        return _KEY_OF[k]
    short = re.sub(r"(?:\s*(?:score|rating)|得分|评分|分数)$", "", k).strip()
    if short in _KEY_OF:
        return _KEY_OF[short]
    m = _NAME_RE.fullmatch(k)
    return _KEY_OF.get(_key_norm(m.group(0))) if m else None


def _name_pattern(name: str) -> str:
    if re.search(r"[a-z]", name):
        words = [re.escape(w) for w in re.split(r"[\s\-]+", name)]
        return r"(?<![a-z])" + r"[\s_\-]*".join(words) + r"(?![a-z])"
    return re.escape(name)


_ALL_NAMES = sorted({(n, k) for k, names in SYNONYMS.items() for n in names}, key=lambda x: -len(x[0]))
_NAME_RE = re.compile("|".join(f"(?:{_name_pattern(n)})" for n, _ in _ALL_NAMES), re.I)


# a score value: arabic or Chinese numeral, then an optional scale ("/10", "out of 100", "%", "分")
def _num(p: str = "") -> str:
    return (
        rf"(?P<{p}num>\d+(?:\.\d+)?(?![\d])|[零一二两三四五六七八九十]{{1,3}})"
        rf"(?P<{p}tail>[ \t]*(?:%|(?:/|out\s+of|满分)[ \t]*\d+(?:\.\d+)?(?![\d.])|分(?!析|别|类|钟|布|辨|割|开|解|支|享|配|散|歧|成|离)))?"
    )


_NUM = _num()
_NOT_COUNT = r"(?![ \t]*(?:(?:images?|pictures?|photos?|figures?)(?![a-z])|张|幅|个|处|种|条|次|项|点))"
_SEP = r"[ \t*_#|:：=\-–—>'\"“”‘’\[\]【】,，]*+"  # possessive: no backtracking over long separator runs
_ALIAS = r"(?:[(（][^()（）\n]{0,40}[)）])?"
_WORDS = r"(?:(?:方面|维度|dimension)[ \t]*)?(?:(?:score|rating|得分|评分|分数|打分|分值)[ \t]*)?(?:(?:is|of|为|是|给|得|打|=)[ \t]*)?"
# (a) the value right after the name, on the same line
_DIRECT = re.compile("(?>" + _SEP + _ALIAS + _SEP + _WORDS + _SEP + ")" + _NUM + _NOT_COUNT, re.I)
# (b) in the section a heading opens: a value after a marker ("Score: 3", "评分：3分", "给3分"),
#     or a value with a scale ("3/10", "3分", "30%"); bare numbers in prose are not read
_MARKED = re.compile(
    r"(?:(?<![a-z])(?:score|scored|rating|rated|rate\s+it|grade|(?:i|i'd|i\s+would|we)\s+(?:give|assign|award)(?:\s+it)?(?:\s+an?)?)(?![a-z])\s*(?:is|of|as|at|=|:|：)?"
    r"|(?:得分|评分|分数|打分|给分|评为|给予|给出|给|打)\s*(?:为|是|:|：)?)"
    r"\s*[*_]*\s*" + _num("m") + _NOT_COUNT
    + r"|(?<![\d.])" + _num("b") + _NOT_COUNT,
    re.I,
)  # fmt: skip
_RANGE_AFTER = re.compile(r"\s*(?:-|~|～|–|到|至)\s*(?:\d|[一二三四五六七八九十])")
_RANGE_BEFORE = re.compile(r"(?:\d|[一二三四五六七八九十])\s*(?:-|~|～|–|到|至)\s*$")
_MAX_BEFORE = re.compile(r"(?:满分|out\s+of|最高|total\s+of)\s*(?:为|是|:|：)?\s*$", re.I)
_HEADING_PREFIX = re.compile(r"[\s\-*+#>|\d.、()（）【】\[\]]*")


def _cjk_number(s: str) -> int | None:
    if s == "十":
        return 10
    if len(s) == 1:
        return _CJK_DIGITS.get(s)
    if len(s) == 2 and s[0] == "十":
        return 10 + _CJK_DIGITS.get(s[1], -100)
    if len(s) == 2 and s[1] == "十":
        return 10 * _CJK_DIGITS.get(s[0], -100)
    if len(s) == 3 and s[1] == "十":
        return 10 * _CJK_DIGITS.get(s[0], -100) + _CJK_DIGITS.get(s[2], -100)
    return None


def read_value(num: str, tail: str = "", after: str = "", before: str = "") -> tuple[float | None, str | None]:
    """(score on 1–10, None) or (None, rejection reason) or (None, None) when it is no score at all."""
    tail = (tail or "").strip()
    if _MAX_BEFORE.search(before):
        return None, None  # "满分10分", "out of 10": the maximum, not the score
    if num[0].isdigit():
        v = float(num)
    else:
        if "分" not in tail and "/" not in tail:
            return None, None  # a bare Chinese numeral is text ("一个", "三张")
        if num == "十" and tail == "分" and after[:1] and "\u4e00" <= after[0] <= "\u9fff":
            return None, None  # 十分 + adjective = "very"
        n = _cjk_number(num)
        if n is None or n < 0:
            return None, None
        v = float(n)
    if _RANGE_AFTER.match(after) or _RANGE_BEFORE.search(before):
        return None, "range"
    den = None
    if "%" in tail:
        den = 100.0
    else:
        m = re.search(r"(?:/|out\s+of|满分)\s*(\d+(?:\.\d+)?)", tail, re.I)
        if m:
            den = float(m.group(1))
    if den is not None:
        if den == 100:
            v = v / 10
        elif den != 10:
            return None, "bad_scale"
    if not 1 <= v <= 10:
        return None, "out_of_range"
    return v, None


def _value_of(obj) -> tuple[float | None, str | None, str]:
    """A dictionary value → (score, rejection, text)."""
    if isinstance(obj, bool) or obj is None:
        return None, "not_a_number", repr(obj)
    if isinstance(obj, (int, float)):
        v = float(obj)
        return (v, None, repr(obj)) if 1 <= v <= 10 else (None, "out_of_range", repr(obj))
    if isinstance(obj, dict):
        for k, v in obj.items():
            if _key_norm(k) in ("score", "value", "rating", "得分", "分数", "评分"):
                return _value_of(v)
        return None, "not_a_number", json.dumps(obj, ensure_ascii=False)[:80]
    if isinstance(obj, (list, tuple)):
        for v in obj:
            if isinstance(v, (int, float, str)) and not isinstance(v, bool):
                return _value_of(v)
        return None, "not_a_number", repr(obj)[:80]
    s = unicodedata.normalize("NFKC", str(obj)).strip()
    m = re.match(r"\s*" + _NUM, s)
    if not m:
        return None, "not_a_number", s[:80]
    v, why = read_value(m.group("num"), m.group("tail") or "", s[m.end() :])
    return v, (why or ("not_a_number" if v is None else None)), s[:80]


def _balanced_blocks(text: str) -> list[tuple[int, int]]:
    """Spans of outermost ``{...}`` blocks (quotes respected)."""
    spans, depth, start, quote = [], 0, -1, None
    for i, c in enumerate(text):
        if quote:
            if c == quote and text[i - 1] != "\\":
                quote = None
            continue
        if c in "\"'" and depth > 0:
            # an apostrophe inside words ("model's") is not a quote
            if c == "'" and i > 0 and text[i - 1].isalnum() and i + 1 < len(text) and text[i + 1].isalnum():
                continue
            quote = c
        elif c == "{":
            if depth == 0:
                start = i
            depth += 1
        elif c == "}" and depth > 0:
            depth -= 1
            if depth == 0:
                spans.append((start, i + 1))
    return spans


def _load_object(block: str):
    for attempt in (block, re.sub(r",\s*([}\]])", r"\1", block.replace("：", ":").replace("，", ","))):
        try:
            return json.loads(attempt)
        except (ValueError, RecursionError):
            pass
        try:
            return ast.literal_eval(attempt)
        except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
            pass
    return None


def _walk_dict(obj, found: dict, depth: int = 0) -> None:
    if depth > 4 or not isinstance(obj, dict):
        return
    for k, v in obj.items():
        key = dim_of(k) if isinstance(k, str) else None
        if key is not None and key not in found:
            found[key] = v
        elif isinstance(v, dict):
            _walk_dict(v, found, depth + 1)


def _dict_scores(text: str) -> tuple[dict, list, list[tuple[int, int]]]:
    """(values by key from the last usable object, its rejections, spans of all usable objects)."""
    best, spans = None, []
    for a, b in _balanced_blocks(text):
        obj = _load_object(text[a:b])
        found: dict = {}
        _walk_dict(obj, found)
        if found:
            best = found
            spans.append((a, b))
    scores, rejected = {}, []
    for key, raw in (best or {}).items():
        v, why, shown = _value_of(raw)
        if v is not None:
            scores[key] = v
        else:
            rejected.append({"dim": key, "text": shown, "reason": why or "not_a_number"})
    return scores, rejected, spans


def _after(text: str, i: int) -> str:
    return text[i : i + CONTEXT]


def _before(text: str, i: int) -> str:
    return text[max(0, i - CONTEXT) : i]


def _is_heading(text: str, start: int) -> bool:
    """The name opens its line (after bullets/numbering/markdown only)."""
    lo = max(0, start - 80)
    nl = text.rfind("\n", lo, start)
    if nl < 0 and lo > 0:
        return False  # 80 characters of bullets before a heading do not happen
    return _HEADING_PREFIX.fullmatch(text, nl + 1, start) is not None


def _table_scores(text: str) -> list[tuple[int, str, float | None, str | None, str]]:
    """Tables with a header row of dimension names over a row of values."""
    out = []
    rows = [
        (m.start(), [c.strip() for c in m.group(1).split("|")])
        for m in re.finditer(r"^[ \t]*\|(.*)\|[ \t]*$", text, re.M)
    ]
    rows = [(p, cells) for p, cells in rows if not all(re.fullmatch(r":?-{2,}:?", c or "--") for c in cells)]
    for (pos, head), (_, vals) in zip(rows, rows[1:]):
        keys = [dim_of(c.strip("* ")) if c else None for c in head]
        if sum(k is not None for k in keys) < 2 or len(vals) != len(head):
            continue
        for key, cell in zip(keys, vals):
            m = re.fullmatch(r"[*_ ]*" + _NUM + r"[*_ ]*", cell)
            if key is None or not m:
                continue
            v, why = read_value(m.group("num"), m.group("tail") or "")
            if v is not None or why:
                out.append((pos, key, v, why, cell))
    return out


def _text_scores(text: str) -> list[tuple[int, str, float | None, str | None, str]]:
    """Occurrences (position, key, value, rejection, shown text) in prose/markdown/tables."""
    occ = _table_scores(text)
    names = list(_NAME_RE.finditer(text))
    bounds = []  # (match, direct match or None) of names that open a section or carry a value
    for m in names:
        d = _DIRECT.match(text, m.end())
        if d is not None or _is_heading(text, m.start()):
            bounds.append((m, d))
    for i, (m, d) in enumerate(bounds):
        key = dim_of(m.group(0))
        if key is None:
            continue
        if d is not None:
            v, why = read_value(
                d.group("num"), d.group("tail") or "", _after(text, d.end()), _before(text, d.start("num"))
            )
            if v is not None or why:
                occ.append((m.start(), key, v, why, text[m.start() : d.end()].strip()))
                continue
        end = bounds[i + 1][0].start() if i + 1 < len(bounds) else len(text)
        seg_from = d.end() if d is not None else m.end()
        first_reject = None
        for c in _MARKED.finditer(text, seg_from, end):
            marked = c.group("mnum") is not None
            p = "m" if marked else "b"
            num, tail = c.group(p + "num"), c.group(p + "tail") or ""
            if not marked and not tail:
                continue  # a bare number in prose is not a score
            v, why = read_value(num, tail, _after(text, c.end()), _before(text, c.start(p + "num")))
            if v is None and why is None:
                continue
            if why == "range":
                first_reject = first_reject or (why, c.group(0).strip())
                continue
            occ.append((c.start(), key, v, why, c.group(0).strip()))
            break
        else:
            if first_reject:
                occ.append((m.start(), key, None, first_reject[0], first_reject[1]))
    return sorted(occ, key=lambda o: o[0])


def _resolve(dict_scores: dict, dict_rejected: list, occ: list) -> dict:
    scores: dict = {}
    conflicts: dict = {}
    rejected = list(dict_rejected)
    for key, v in dict_scores.items():
        scores[key] = v
    for _, key, v, why, shown in occ:
        if v is None:
            rejected.append({"dim": key, "text": shown, "reason": why})
        elif key not in scores:
            scores[key] = v
        elif v != scores[key] and v not in conflicts.setdefault(key, []):
            conflicts[key].append(v)
    out_scores = {k: scores[k] for k in KEYS if k in scores}
    missing = [k for k in KEYS if k not in scores]
    status = "ok" if not missing else "unparseable" if not out_scores else "partial"
    return {
        "scores": out_scores,
        "status": status,
        "missing": missing,
        "rejected": rejected,
        "conflicts": [{"dim": k, "kept": scores[k], "ignored": v} for k, v in conflicts.items() if v],
    }


def parse_judgment(raw) -> dict:
    """Scores of one judge output; see the module docstring. Never raises."""
    text = unicodedata.normalize("NFKC", "" if raw is None else str(raw))[:MAX_CHARS]
    text = text.replace("\r\n", "\n")
    try:
        d_scores, d_rejected, spans = _dict_scores(text)
        masked = text
        for a, b in spans:  # the objects' own "key": value pairs are not read twice
            masked = masked[:a] + " " * (b - a) + masked[b:]
        occ = _text_scores(masked)
    except RecursionError:  # pathological nesting: keep what is certain
        d_scores, d_rejected, occ = {}, [], []
    out = _resolve(d_scores, d_rejected, occ)
    out["from_dict"] = bool(d_scores)
    return out
