"""What kind of question a text asks, from its wording alone (Chinese or English): ``yes_no``,
``count``, ``number`` (areas, lengths, ratios with units), ``choice``, ``date`` or ``open``.

A leaf module (only :mod:`re`): the reward router (:mod:`geovl.rewards.route`) and the converters
(a chat-form record without a ``qtype``, :mod:`geovl.data.adapters.messages`) share it.

Detection, first match wins:

1. a choice between named options — an English yes/no opening with " or " ("Is this rural or
   urban?"), or 还是 → ``choice``
2. yes/no — 是否 / 是不是 / 有没有 / 有无 / 对不对 / 能不能 / a question ending in 吗, or an English
   question opening with an auxiliary (Is there / Are there / Does / Is the / Can / Has ...) → ``yes_no``
3. a date — 哪一年 / 哪年 / 哪个时间段 / 什么时候 / 何时 / which year / what year / which date / which
   interval / which period / a question opening with When → ``date`` (before quantities and counts:
   "哪一年耕地面积最大？" asks for a year)
4. a measured quantity — 面积 / 多大 / 距离 / 多远 / 多长 / 占比 / 公顷 / 平方 / 亩 / area / how large /
   how far / distance / percentage / hectares ... → ``number``
5. a count — 多少 / 几 (not 几乎/几何) / How many / number of → ``count``
6. otherwise ``open``

Yes/no is checked before quantities so "耕地面积是否大于林地面积？" / "Is the forest area larger
than ...?" are yes/no questions, not areas.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["detect_qtype", "is_area_question"]

_EN_AUX = (
    r"is|are|was|were|does|do|did|can|could|has|have|had|will|would|should|shall|may|might|must|"
    r"isn't|aren't|doesn't|don't|didn't|can't|hasn't|haven't"
)
_EN_YES_NO = re.compile(rf"^\s*(?:{_EN_AUX})(?![a-z'])", re.I)
_ZH_YES_NO = re.compile(r"是否|是不是|有没有|有无|对不对|能不能|会不会|可不可以|吗\s*[?？]?\s*$")
_CHOICE_EN = re.compile(r"\bor\b", re.I)
_CHOICE_ZH = re.compile(r"还是")
_NUMBER = re.compile(
    r"面积|多大|距离|多远|多长|多宽|多高|长度|宽度|周长|占比|比例|百分之|百分比|覆盖率|公顷|平方|亩|公里|千米|多少米|几米|"
    r"(?<![a-z])(?:area|areas|how\s+(?:large|big|far|long|wide|tall|high)|distance|length|width|perimeter|"
    r"percentage|percent|proportion|fraction|share|hectares?|acres?|square|km2|km²|m2|m²|kilomet(?:er|re)s?|"
    r"met(?:er|re)s?)(?![a-z])",
    re.I,
)
_DATE = re.compile(
    r"哪一?年|哪个年份|哪一?个?时间段|哪一?个?时段|哪一?个?时期|哪段时间|哪一?天|什么时候|何时|什么时间|"
    r"(?<![a-z])(?:(?:which|what)\s+(?:year|date|day|month|interval|period|time\s+period|time\s+span)s?)(?![a-z])|"
    r"^\s*(?:since\s+)?when(?![a-z])",
    re.I,
)
_COUNT = re.compile(r"多少|几(?!乎|何|率)|(?<![a-z])(?:how\s+many|number\s+of|count)(?![a-z])", re.I)


def detect_qtype(question) -> str:
    """The reward kind for a question text (see the module docstring); ``open`` when nothing matches."""
    if question is None:
        return "open"
    q = unicodedata.normalize("NFKC", question if isinstance(question, str) else str(question)).strip()
    if not q:
        return "open"
    en_yes_no = bool(_EN_YES_NO.match(q))
    if (en_yes_no and _CHOICE_EN.search(q)) or _CHOICE_ZH.search(q):
        return "choice"
    if en_yes_no or _ZH_YES_NO.search(q):
        return "yes_no"
    if _DATE.search(q):
        return "date"
    if _NUMBER.search(q):
        return "number"
    if _COUNT.search(q):
        return "count"
    return "open"


_AREA = re.compile(
    r"面积|多大|公顷|平方|亩|(?<![a-z])(?:area|areas|how\s+(?:large|big)|hectares?|acres?|square|km2|km²|m2|m²)(?![a-z])",
    re.I,
)


def is_area_question(question) -> bool:
    """A measured-quantity question about an area (面积 / 公顷 / 亩 / area / hectares / km² ...)."""
    return bool(question) and bool(_AREA.search(unicodedata.normalize("NFKC", str(question))))
