"""The synthetic county scenes' documented constants; the class table itself is
:mod:`geovl.data.landcover_classes` (re-exported here for the generator's modules).
"""

from __future__ import annotations

from ..data.landcover_classes import (  # noqa: F401 - re-exported for the generator's modules
    BARE,
    BUILDING,
    BUILTUP,
    BY_ID,
    BY_KEY,
    CLASSES,
    CROPLAND,
    FOREST,
    N_IDS,
    NODATA,
    ROAD,
    WATER,
    LandClass,
    class_table,
)

# Classes whose presence is asked (each is present in about half of the scenes by construction).
PRESENCE_KEYS = ("cropland", "forest", "water", "bare", "road")
# Classes whose area is asked / compared.
AREA_KEYS = ("cropland", "forest", "water", "bare", "builtup")

# Rural / urban rule: built-up share = (built-up land + building pixels) / all pixels.
URBAN_THRESHOLD = 0.25

BAND_NAMES = ["B2 blue", "B3 green", "B4 red", "B8 NIR"]
REFLECTANCE_SCALE = 10000  # uint16 = reflectance x 10000, like Sentinel-2 L2A

DEFAULT_CRS = "EPSG:32650"  # WGS 84 / UTM zone 50N (eastern China)
# Upper-left corner of scene 0: about 116.3 E, 36.7 N (a county on the North China Plain).
DEFAULT_ORIGIN = (440_000.0, 4_065_000.0)
DEFAULT_PIXEL_SIZE = 10.0  # metres, like Sentinel-2 10 m bands
SCENES_PER_ROW = 16  # scenes are laid out on a grid of distinct footprints east/south of the origin
