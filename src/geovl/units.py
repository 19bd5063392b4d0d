"""Units of measure and rounding: the one table every part of geovl reads (bottom layer, no geovl imports).

**Areas** (China's statutory units, exact): 1 km² = 100 公顷 (ha) = 1500 亩 (mu) = 1 000 000 m², so
1 公顷 = 10 000 m² = 15 亩 and 1 亩 = 10000/15 m² = 666.67 m². :data:`AREA_UNITS` holds, per unit key,
the square metres per unit as a :class:`fractions.Fraction` and the names people read (Chinese,
English short and long). :func:`convert` works with fractions, so integer pixel counts times a
rational pixel area give exact values (then one float rounding).

**Quantities in text** (:data:`QUANTITY_UNITS`): the unit spellings :mod:`geovl.evaluate.quantities`
recognises in answers (areas from :data:`AREA_UNITS` plus cm² and acres, lengths, percentages), each
with its SI factor, kind and pattern; the order matters (longer spellings first).

**Rounding** (:func:`round_half_up`): half away from zero to a number of decimals, on the value as
written in decimal — exact for ``int``/``Fraction``/``Decimal``, and for a float on its shortest
decimal form (``118.05`` → ``118.1``, not the binary float's ``118.04999…``). How many decimals each
caller prints stays with the caller (measurement tables, synthetic answers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction

__all__ = [
    "AREA_UNITS",
    "AREA_KEYS",
    "AreaUnit",
    "QUANTITY_UNITS",
    "M2_PER_KM2",
    "M2_PER_HA",
    "M2_PER_MU",
    "HA_PER_KM2",
    "MU_PER_KM2",
    "MU_PER_HA",
    "all_units",
    "convert",
    "round_half_up",
    "units_array",
]

M2_PER_KM2 = Fraction(1_000_000)
M2_PER_HA = Fraction(10_000)
M2_PER_MU = Fraction(10_000, 15)  # 666.666… m²
HA_PER_KM2 = M2_PER_KM2 / M2_PER_HA  # 100
MU_PER_KM2 = M2_PER_KM2 / M2_PER_MU  # 1500
MU_PER_HA = M2_PER_HA / M2_PER_MU  # 15


@dataclass(frozen=True)
class AreaUnit:
    key: str
    m2: Fraction  # square metres per unit
    zh: str  # 平方公里, 公顷, 亩 …
    en: str  # short English name: km², ha, mu
    en_long: str  # square kilometres, hectares …


AREA_UNITS: dict[str, AreaUnit] = {
    "m2": AreaUnit("m2", Fraction(1), "平方米", "m²", "square metres"),
    "km2": AreaUnit("km2", M2_PER_KM2, "平方公里", "km²", "square kilometres"),
    "ha": AreaUnit("ha", M2_PER_HA, "公顷", "ha", "hectares"),
    "mu": AreaUnit("mu", M2_PER_MU, "亩", "mu", "mu"),
}
AREA_KEYS = tuple(AREA_UNITS)

# (canonical key, SI units per unit, kind, regex of its spellings) — longer/area spellings first
QUANTITY_UNITS: list[tuple[str, float, str, str]] = [
    ("km2", float(M2_PER_KM2), "area", r"平方公里|平方千米|km2|km\^2|sq\.?\s*km|(?:square|sq\.?)\s+kilomet(?:er|re)s?"),
    ("cm2", 1e-4, "area", r"平方厘米|cm2|cm\^2|square\s+centimet(?:er|re)s?"),
    ("m2", 1.0, "area", r"平方米|m2|m\^2|sq\.?\s*m(?:et(?:er|re)s?)?|(?:square|sq\.?)\s+met(?:er|re)s?"),
    ("ha", float(M2_PER_HA), "area", r"公顷|hectares?|ha"),
    ("mu", float(M2_PER_MU), "area", r"亩|mu"),
    ("acre", 4046.8564224, "area", r"acres?"),
    ("km", 1e3, "length", r"公里|千米|kilomet(?:er|re)s?|km"),
    ("cm", 1e-2, "length", r"厘米|centimet(?:er|re)s?|cm"),
    ("mm", 1e-3, "length", r"毫米|millimet(?:er|re)s?|mm"),
    ("m", 1.0, "length", r"米|met(?:er|re)s?|m"),
    ("%", 1e-2, "ratio", r"%|percent|per\s*cent|pct"),
]


def convert(m2, unit: str) -> float:
    """Square metres -> ``unit`` (``m2``, ``km2``, ``ha``, ``mu``), exact for rational inputs."""
    if unit not in AREA_UNITS:
        raise KeyError(f"unknown area unit {unit!r}; choose from {', '.join(AREA_UNITS)}")
    value = Fraction(m2) if isinstance(m2, (int, Fraction)) else Fraction(float(m2))
    return float(value / AREA_UNITS[unit].m2)


def all_units(m2) -> dict[str, float]:
    """``{"m2": …, "km2": …, "ha": …, "mu": …}`` for an area in square metres."""
    return {k: convert(m2, k) for k in AREA_UNITS}


def units_array(m2):
    """Vectorised :func:`all_units` for many areas (float64): ``km2 = m2/1e6``, ``ha = m2/1e4``,
    ``mu = m2·15/1e4`` — identical to the exact conversion whenever ``m2·15`` is a float exactly
    (e.g. integer m² below 6e14), otherwise within one unit in the last place."""
    import numpy as np

    a = np.asarray(m2, dtype=np.float64)
    return {"m2": a, "km2": a / 1e6, "ha": a / 1e4, "mu": a * 15.0 / 1e4}


def round_half_up(value, decimals: int) -> Decimal:
    """``value`` rounded half away from zero to ``decimals`` places, as a :class:`~decimal.Decimal`
    with exactly that many places (``str()`` gives fixed-point text: ``Fraction(0)``, 3 → ``0.000``).
    ``int``/``Fraction``/``Decimal`` are rounded exactly; a float as written in decimal (its
    ``repr``): 118.05 → 118.1, 12.345 → 12.35. Never ``-0``."""
    if decimals < 0:
        raise ValueError(f"decimals must be >= 0, got {decimals}")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"cannot round {value!r}")
        exact = Fraction(Decimal(repr(value)))
    elif isinstance(value, (int, Fraction, Decimal)):
        exact = Fraction(value)
    else:
        exact = Fraction(Decimal(repr(float(value))))  # numpy scalars and the like
    scaled = abs(exact) * 10**decimals
    q = math.floor(scaled + Fraction(1, 2))
    d = Decimal(q).scaleb(-decimals)
    return -d if exact < 0 and q else d
