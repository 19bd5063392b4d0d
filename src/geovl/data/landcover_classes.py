"""The land-cover classes of the geovl county scenes: ids, keys, English/Chinese names, legend colours.

Class ids are what the class-map GeoTIFFs and ``scenes.jsonl`` of ``geovl data synth`` use; ``0`` is
nodata and never appears in a generated scene. Names are given in English and Chinese; ``rgb`` is a
display colour for legends (not the colour a class is rendered with in the images). A neutral, low
module: the generator (:mod:`geovl.synth`) and measurement (:mod:`geovl.geo.tables`) both read it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

NODATA = 0
CROPLAND, FOREST, WATER, BUILTUP, BUILDING, ROAD, BARE = 1, 2, 3, 4, 5, 6, 7


@dataclass(frozen=True)
class LandClass:
    id: int
    key: str  # stable machine name
    en: str  # English name
    zh: str  # Chinese name
    en_phrase: str  # how an English question refers to it ("Is there {en_phrase} in the image?")
    rgb: tuple[int, int, int]  # legend colour
    description: str


CLASSES: tuple[LandClass, ...] = (
    LandClass(
        CROPLAND,
        "cropland",
        "cropland",
        "耕地",
        "cropland",
        (230, 200, 80),
        "field parcels with row texture, several crop greens and yellows",
    ),
    LandClass(FOREST, "forest", "forest", "林地", "forest", (30, 110, 40), "dark green noisy canopy"),
    LandClass(WATER, "water", "water", "水体", "water", (40, 90, 200), "rivers and ponds"),
    LandClass(
        BUILTUP,
        "builtup",
        "built-up land",
        "建设用地",
        "built-up land",
        (190, 190, 190),
        "paved / settled ground of towns and villages (buildings are their own class)",
    ),
    LandClass(
        BUILDING,
        "building",
        "building",
        "建筑",
        "a building",
        (200, 40, 40),
        "roof footprint of one countable building (shadows are not part of it)",
    ),
    LandClass(ROAD, "road", "road", "道路", "a road", (90, 90, 90), "paved roads (bridges over water count as road)"),
    LandClass(BARE, "bare", "bare land", "裸地", "bare land", (160, 120, 80), "bare soil"),
)

BY_ID = {c.id: c for c in CLASSES}
BY_KEY = {c.key: c for c in CLASSES}
N_IDS = max(BY_ID) + 1  # size of lookup tables indexed by class id


def class_table() -> list[dict]:
    """JSON-serialisable class table."""
    return [asdict(c) | {"rgb": list(c.rgb)} for c in CLASSES]
