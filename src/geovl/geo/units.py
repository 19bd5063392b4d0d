"""Area units, the WGS84 ellipsoid and the published accuracy figures shared by :mod:`geovl.geo`.

Exact relations (China's statutory units): 1 km² = 100 公顷 (ha) = 1500 亩 (mu) = 1 000 000 m²,
so 1 公顷 = 10 000 m² = 15 亩 and 1 亩 = 10000/15 m² = 666.67 m². :func:`convert` works with
:class:`fractions.Fraction` internally, so integer pixel counts times a rational pixel area give
exact unit values (then one float rounding).

How numbers are printed everywhere (text tables and the model context): m² 0 decimals, km² 4,
公顷 2, 亩 1, shares in % with 1 decimal (:data:`DECIMALS`).
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction

import numpy as np

M2_PER_KM2 = Fraction(1_000_000)
M2_PER_HA = Fraction(10_000)
M2_PER_MU = Fraction(10_000, 15)  # 666.666… m²
HA_PER_KM2 = M2_PER_KM2 / M2_PER_HA  # 100
MU_PER_KM2 = M2_PER_KM2 / M2_PER_MU  # 1500
MU_PER_HA = M2_PER_HA / M2_PER_MU  # 15

# unit key -> (m² per unit, zh name, en name, decimals when printed)
UNITS = {
    "m2": (Fraction(1), "平方米", "m²", 0),
    "km2": (M2_PER_KM2, "平方公里", "km²", 4),
    "ha": (M2_PER_HA, "公顷", "ha", 2),
    "mu": (M2_PER_MU, "亩", "mu", 1),
}
UNIT_KEYS = tuple(UNITS)
DECIMALS = {k: v[3] for k, v in UNITS.items()} | {"share": 1}

# WGS 84 ellipsoid (EPSG:7030): semi-major axis and inverse flattening.
WGS84_A = 6_378_137.0
WGS84_INV_F = 298.257223563


def convert(m2, unit: str) -> float:
    """Square metres -> ``unit`` (``m2``, ``km2``, ``ha``, ``mu``), exact for rational inputs."""
    if unit not in UNITS:
        raise KeyError(f"unknown area unit {unit!r}; choose from {', '.join(UNITS)}")
    value = Fraction(m2) if isinstance(m2, (int, Fraction)) else Fraction(float(m2))
    return float(value / UNITS[unit][0])


def all_units(m2) -> dict[str, float]:
    """``{"m2": …, "km2": …, "ha": …, "mu": …}`` for an area in square metres."""
    return {k: convert(m2, k) for k in UNITS}


def round_half_up(value: float, decimals: int) -> Decimal:
    """``value`` rounded half up (away from zero) as written in decimal: 118.05 -> 118.1 (like the
    answers of ``geovl data synth``), not to the nearest binary float."""
    q = Decimal(1).scaleb(-decimals)
    d = Decimal(repr(float(value))).quantize(q, rounding=ROUND_HALF_UP)
    return abs(d) if d == 0 else d  # no "-0.0"


def units_array(m2) -> dict[str, np.ndarray]:
    """Vectorised :func:`all_units` for many areas (float64): ``km2 = m2/1e6``, ``ha = m2/1e4``,
    ``mu = m2·15/1e4`` — identical to the exact conversion whenever ``m2·15`` is a float exactly
    (e.g. integer m² below 6e14), otherwise within one unit in the last place."""
    a = np.asarray(m2, dtype=np.float64)
    return {"m2": a, "km2": a / 1e6, "ha": a / 1e4, "mu": a * 15.0 / 1e4}


def fmt(value: float, unit: str) -> str:
    """A value in ``unit`` printed with the documented number of decimals (``share``: a fraction → %)."""
    if unit == "share":
        return f"{round_half_up(100.0 * value, DECIMALS['share'])}%"
    return f"{round_half_up(value, DECIMALS[unit]):,}"


def fmt_signed(value: float, unit: str) -> str:
    s = fmt(value, unit)
    return s if s.startswith("-") else "+" + s


# ---------------------------------------------------------------------------------------------
# Published accuracy of land-cover maps (research/anchors.md table 12). Overall accuracies in %.
ACCURACY_SOURCES = {
    "venter2022": "Venter et al. 2022, Remote Sensing 14(16):4101 (independent comparison of 10 m global land-cover maps)",
    "worldcover": "ESA WorldCover product validation reports (worldcover2020.esa.int; esa-worldcover.org)",
    "olofsson2014": "Olofsson et al. 2014, Remote Sensing of Environment 148:42-57 (good practice for area estimation)",
}
PRODUCT_ACCURACY = {
    "dynamicworld": {"en": "Dynamic World V1: 72% overall accuracy globally (independent, 2020), 66% against LUCAS in Europe",
                     "zh": "Dynamic World V1：全球总体精度72%（独立评估，2020年），欧洲LUCAS样本66%",
                     "sources": ["venter2022"]},
    "worldcover": {"en": "ESA WorldCover: producer validation 74.4% (2020) / 76.7% (2021); independent 65% globally, 71% against LUCAS",
                   "zh": "ESA WorldCover：官方验证总体精度74.4%（2020）/76.7%（2021）；独立评估全球65%、LUCAS样本71%",
                   "sources": ["worldcover", "venter2022"]},
    "generic": {"en": "published 10 m land-cover maps are 65-80% accurate overall (Dynamic World 72%, WorldCover 65-77%, Esri 75%)",
                "zh": "已发布的10米土地覆盖产品总体精度约65%-80%（Dynamic World 72%，WorldCover 65%-77%，Esri 75%）",
                "sources": ["venter2022", "worldcover"]},
}
# Class-level reliability of 10 m maps (Venter et al. 2022), keyed by a shared "accuracy key".
CLASS_ACCURACY = {
    "water": 92, "built": 83, "trees": 81, "crops": 78, "bare": 57, "flooded_vegetation": 53, "shrub": 47, "grass": 34,
}
CLASS_ACCURACY_NAMES = {  # key -> (en, zh)
    "water": ("water", "水体"), "built": ("built", "建设用地"), "trees": ("trees", "林地"), "crops": ("crops", "耕地"),
    "bare": ("bare", "裸地"), "flooded_vegetation": ("flooded vegetation", "水淹植被"), "shrub": ("shrub", "灌木"),
    "grass": ("grass", "草地"),
}
