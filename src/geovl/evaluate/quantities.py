"""Numbers and quantities with units, from English or Chinese answers.

- :func:`parse_number` — the first number in the text: digits ("3", "-2.5", "1,234", "1 234",
  "1.5e6", "1.5万"), English words ("twenty-one", "a hundred"), Chinese numerals ("十二", "两",
  "一百零五", "三点五"), Chinese fractions ("三分之一"); "none"/"没有" → 0 when no other number is
  present. ``None`` when there is no number.
- :func:`parse_quantity` — ``(value in SI, kind)`` for areas (m²), lengths (m) and ratios
  (fractions of 1): the first number followed by a unit wins; a number without any unit gives
  ``(value, None)``. 1 km² = 100 公顷 = 1500 亩 = 1e6 m².
- :func:`find_quantity` — the same as a :class:`Quantity` (value as written, unit, factor),
  which scoring needs to read a unit-less reference in the prediction's unit.

Never raises on junk input.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ..units import QUANTITY_UNITS
from .normalize import HEDGE, strip_markup

__all__ = ["Quantity", "UNITS", "find_quantity", "parse_number", "parse_quantity"]


@dataclass(frozen=True)
class Quantity:
    value: float  # the number as written (after 万/千 multipliers)
    unit: str | None  # canonical unit key ("km2", "ha", "mu", "m", "%", ...) or None
    factor: float  # SI units per ``unit`` (1.0 without a unit)
    kind: str | None  # "area" | "length" | "ratio" | None

    @property
    def si(self) -> float:
        return self.value * self.factor


# (canonical key, SI factor, kind, pattern): geovl.units, the one table — longer/area spellings first
UNITS: list[tuple[str, float, str, str]] = QUANTITY_UNITS
_UNIT_RES = [(key, f, kind, re.compile(rf"\s*(?:{pat})(?![a-z0-9])")) for key, f, kind, pat in UNITS]

# --- digits: "3", "-2.5", "1,234.5", "12 345", ".5", "1e6", "1.5万"
_DIGITS = re.compile(
    r"(?:(?<![\w.])[-+])?(?<![\d.a-z_])"
    r"(?:(?:\d{1,3}(?:,\d{3})+|\d{1,3}(?: \d{3})+)(?!\d)|\d+)(?:\.\d+)?(?:e[-+]?\d+)?"
    r"|(?<![\d.])\.\d+"
)
_DIGIT_MULT = re.compile(r"\s*([万亿])|([千百])(?!分)")

# --- Chinese numerals
_ZH_DIGIT = {
    "零": 0, "〇": 0, "一": 1, "壹": 1, "二": 2, "贰": 2, "两": 2, "三": 3, "叁": 3, "四": 4, "肆": 4,
    "五": 5, "伍": 5, "六": 6, "陆": 6, "七": 7, "柒": 7, "八": 8, "捌": 8, "九": 9, "玖": 9,
}  # fmt: skip
_ZH_SMALL = {"十": 10, "拾": 10, "百": 100, "佰": 100, "千": 1000, "仟": 1000}
_ZH_BIG = {"万": 10**4, "亿": 10**8}
_ZH_CHARS = "".join(_ZH_DIGIT) + "".join(_ZH_SMALL) + "".join(_ZH_BIG)
_ZH_NUM = rf"[{_ZH_CHARS}]+(?:点[零〇一二三四五六七八九]+)?"
_ZH_RUN = re.compile(_ZH_NUM)
# words that contain numeral characters but are not numbers (masked before scanning)
_ZH_NOT_NUMBER = re.compile(
    r"一些|一下|一点(?![零〇一二三四五六七八九])|一般|一样|一致|一定|一直|一起|一切|一共|一旦|一同|一律|一边|一带|"
    r"一方面|一体|统一|唯一|之一|十分|万分|百分(?!之)|一再|一向|一贯|不一|"
    r"(?<![零〇一二两三四五六七八九十百千])(?:万一|千万)"
)
_FRACTION = re.compile(rf"(?P<den>{_ZH_NUM}|\d+(?:\.\d+)?)分之(?P<num>{_ZH_NUM}|\d+(?:\.\d+)?)")

# --- English number words
_EN = {w: ("unit", i) for i, w in enumerate("zero one two three four five six seven eight nine".split())}
_EN.update(
    {
        w: ("teen", i + 10)
        for i, w in enumerate("ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split())
    }
)
_EN.update(
    {w: ("tens", (i + 2) * 10) for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split())}
)
_EN.update({"fourty": ("tens", 40), "hundred": ("hundred", 100), "dozen": ("dozen", 12),
            "thousand": ("scale", 10**3), "million": ("scale", 10**6), "billion": ("scale", 10**9)})  # fmt: skip
_EN_W = "|".join(sorted(_EN, key=len, reverse=True))
_EN_SEQ = re.compile(
    rf"(?<![a-z])(?:an?[ -]+(?=(?:hundred|thousand|million|billion|dozen)(?![a-z])))?(?:{_EN_W})(?![a-z])"
    rf"(?:[ -]+(?:and[ -]+)?(?:{_EN_W})(?![a-z]))*"
)
_EN_TOKEN = re.compile(r"[a-z]+")
_EN_NEXT = {  # token kind -> kinds that may precede it
    "unit": {None, "tens", "hundred", "scale"},
    "teen": {None, "hundred", "scale"},
    "tens": {None, "hundred", "scale"},
    "hundred": {"unit", "teen", "tens", "a"},
    "scale": {"unit", "teen", "tens", "hundred", "a", "dozen"},
    "dozen": {None, "unit", "a"},
}
# "none", "nothing", "no buildings", "没有", "无" → 0, only when no other number is present and
# the answer does not hedge ("no idea", "无法判断")
_ZERO_WORDS = re.compile(r"(?<![a-z])(?:none|nothing|nil|no(?=\s+[a-z]+s(?![a-z])))(?![a-z])|没有|无(?![法论人])")


_WS = re.compile(r"\s+")


def _prep(s) -> str:
    return _WS.sub(" ", strip_markup(s).lower())


def _zh_value(run: str) -> float | None:
    """Value of a run of Chinese numeral characters (optionally with 点 decimals)."""
    whole, _, frac = run.partition("点")
    if not any(c in _ZH_DIGIT or c in "十拾" for c in whole):
        return None  # "千万", "亿" alone: not a number
    if all(c in _ZH_DIGIT for c in whole):
        value = int("".join(str(_ZH_DIGIT[c]) for c in whole))  # "二〇二〇" → 2020, "三" → 3
    else:
        total, section, number = 0, 0, 0
        for c in whole:
            if c in _ZH_DIGIT:
                number = _ZH_DIGIT[c]
            elif c in _ZH_SMALL:
                section += (number or (1 if c in "十拾" else 0)) * _ZH_SMALL[c]  # "十二" = 12
                number = 0
            elif c == "亿":
                total = (total + section + number) * _ZH_BIG[c]
                section = number = 0
            else:  # 万
                total += (section + number) * _ZH_BIG[c]
                section = number = 0
        value = total + section + number
    if frac:
        return float(f"{value}.{''.join(str(_ZH_DIGIT[c]) for c in frac)}")
    return float(value)


def _num_text(t: str) -> float | None:
    """Value of one side of a fraction: digits, Chinese numerals, or a bare 百/千/万 ("百分之")."""
    if t and t[0].isdigit():
        return float(t)
    v = _zh_value(t)
    return v if v is not None else _ZH_SMALL.get(t) or _ZH_BIG.get(t)


def _en_value(text: str) -> tuple[float, int] | None:
    """(value, length consumed) of the longest valid English number prefix of ``text``."""
    total = current = 0
    last = None
    best = None
    for m in _EN_TOKEN.finditer(text):
        w = m.group()
        if w in ("a", "an") and last is None:
            current, last = 1, "a"
            continue
        if w == "and":
            if last in ("hundred", "scale"):
                continue
            break
        kind, v = _EN[w]
        if last not in _EN_NEXT[kind]:
            break
        if kind in ("unit", "teen", "tens"):
            current += v
        elif kind == "hundred":
            current = (current or 1) * 100
        elif kind == "dozen":
            current = (current or 1) * 12
        else:
            total += (current or 1) * v
            current = 0
        last = kind
        best = (float(total + current), m.end())
    return best


def _candidates(t: str) -> list[tuple[int, int, float, str | None]]:
    """Non-overlapping numbers in ``t`` as (start, end, value, fixed kind), left to right."""
    found: list[tuple[int, int, float, str | None]] = []
    for m in _DIGITS.finditer(t):
        try:
            v = float(m.group().replace(",", "").replace(" ", ""))
        except ValueError:
            continue
        end = m.end()
        mult = _DIGIT_MULT.match(t, end)
        if mult:
            c = mult.group(1) or mult.group(2)
            v *= _ZH_BIG.get(c) or _ZH_SMALL[c]
            end = mult.end()
        found.append((m.start(), end, v, None))
    for m in _FRACTION.finditer(t):
        den, num = _num_text(m.group("den")), _num_text(m.group("num"))
        if den and num is not None:
            found.append((m.start(), m.end(), num / den, "ratio"))
    masked = _ZH_NOT_NUMBER.sub(lambda m: " " * len(m.group()), t)
    for m in _ZH_RUN.finditer(masked):
        v = _zh_value(m.group())
        if v is not None:
            found.append((m.start(), m.end(), v, None))
    for m in _EN_SEQ.finditer(t):
        got = _en_value(m.group())
        if got:
            found.append((m.start(), m.start() + got[1], got[0], None))
    found = [c for c in found if math.isfinite(c[2])]
    if not found and not HEDGE.search(t):
        found = [(m.start(), m.end(), 0.0, None) for m in _ZERO_WORDS.finditer(t)]
    found.sort(key=lambda c: (c[0], c[0] - c[1]))
    out, pos = [], -1
    for c in found:
        if c[0] >= pos:
            out.append(c)
            pos = c[1]
    return out


def parse_number(s) -> float | None:
    """The first number in ``s`` as a float, or ``None``. See the module docstring."""
    try:
        cands = _candidates(_prep(s))
    except (ValueError, OverflowError, RecursionError):  # pragma: no cover - defensive
        return None
    return cands[0][2] if cands else None


def _unit_at(t: str, pos: int) -> tuple[str, float, str] | None:
    for key, factor, kind, rx in _UNIT_RES:
        if rx.match(t, pos):
            return key, factor, kind
    return None


def find_quantity(s) -> Quantity | None:
    """The first number with a unit (else the first number) in ``s``, or ``None``."""
    try:
        t = _prep(s)
        cands = _candidates(t)
    except (ValueError, OverflowError, RecursionError):  # pragma: no cover - defensive
        return None
    for _start, end, value, fixed in cands:
        if fixed == "ratio":
            return Quantity(value, "fraction", 1.0, "ratio")
        unit = _unit_at(t, end)
        if unit:
            return Quantity(value, unit[0], unit[1], unit[2])
    if not cands:
        return None
    return Quantity(cands[0][2], None, 1.0, None)


def parse_quantity(s) -> tuple[float, str | None] | None:
    """``(value in SI units, kind)`` — m² for areas, m for lengths, 1 for ratios — or ``None``.

    "约1.5平方公里" → (1.5e6, "area"); "150 ha" → (1.5e6, "area"); "12%" → (0.12, "ratio");
    "42" → (42.0, None)."""
    q = find_quantity(s)
    return None if q is None else (q.si, q.kind)
