"""Area units as :mod:`geovl.geo` prints them, the WGS84 ellipsoid and the published accuracy figures.

The units themselves (exact relations 1 km² = 100 公顷 = 1500 亩 = 1 000 000 m², :func:`convert`,
:func:`all_units`, :func:`units_array`) and :func:`round_half_up` are :mod:`geovl.units`, the one
table; they are re-exported here for the measurement code.

How numbers are printed everywhere (text tables and the model context): m² 0 decimals, km² 4,
公顷 2, 亩 1, shares in % with 1 decimal (:data:`DECIMALS`).
"""

from __future__ import annotations

from ..units import (  # noqa: F401  (re-exported: the one units table)
    AREA_UNITS,
    HA_PER_KM2,
    M2_PER_HA,
    M2_PER_KM2,
    M2_PER_MU,
    MU_PER_HA,
    MU_PER_KM2,
    all_units,
    convert,
    round_half_up,
    units_array,
)

# unit key -> (m² per unit, zh name, en name, decimals when printed)
PRINT_DECIMALS = {"m2": 0, "km2": 4, "ha": 2, "mu": 1}
UNITS = {k: (u.m2, u.zh, u.en, PRINT_DECIMALS[k]) for k, u in AREA_UNITS.items()}
UNIT_KEYS = tuple(UNITS)
DECIMALS = dict(PRINT_DECIMALS) | {"share": 1}

# WGS 84 ellipsoid (EPSG:7030): semi-major axis and inverse flattening.
WGS84_A = 6_378_137.0
WGS84_INV_F = 298.257223563


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
    "dynamicworld": {
        "en": "Dynamic World V1: 72% overall accuracy globally (independent, 2020), 66% against LUCAS in Europe",
        "zh": "Dynamic World V1：全球总体精度72%（独立评估，2020年），欧洲LUCAS样本66%",
        "sources": ["venter2022"],
    },
    "worldcover": {
        "en": "ESA WorldCover: producer validation 74.4% (2020) / 76.7% (2021); independent 65% globally, 71% against LUCAS",
        "zh": "ESA WorldCover：官方验证总体精度74.4%（2020）/76.7%（2021）；独立评估全球65%、LUCAS样本71%",
        "sources": ["worldcover", "venter2022"],
    },
    "generic": {
        "en": "published 10 m land-cover maps are 65-80% accurate overall (Dynamic World 72%, WorldCover 65-77%, Esri 75%)",
        "zh": "已发布的10米土地覆盖产品总体精度约65%-80%（Dynamic World 72%，WorldCover 65%-77%，Esri 75%）",
        "sources": ["venter2022", "worldcover"],
    },
}
# Class-level reliability of 10 m maps (Venter et al. 2022), keyed by a shared "accuracy key".
CLASS_ACCURACY = {
    "water": 92,
    "built": 83,
    "trees": 81,
    "crops": 78,
    "bare": 57,
    "flooded_vegetation": 53,
    "shrub": 47,
    "grass": 34,
}
CLASS_ACCURACY_NAMES = {  # key -> (en, zh)
    "water": ("water", "水体"),
    "built": ("built", "建设用地"),
    "trees": ("trees", "林地"),
    "crops": ("crops", "耕地"),
    "bare": ("bare", "裸地"),
    "flooded_vegetation": ("flooded vegetation", "水淹植被"),
    "shrub": ("shrub", "灌木"),
    "grass": ("grass", "草地"),
}
