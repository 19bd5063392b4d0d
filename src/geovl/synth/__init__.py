"""Synthetic Chinese-county scenes: the embedded default data of geovl (``geovl data synth``).

Procedural top-down scenes (cropland, forest, water, built-up land with countable buildings, roads,
bare land) on two dates, with exact class maps, building lists and change ground truth; RGB PNGs,
4-band reflectance GeoTIFFs in a projected CRS, and Chinese/English Q/A written directly as geovl
dataset files. See :mod:`.write` for the output layout, :mod:`.qa` for the tasks and rounding
rules, :mod:`.classes` for the class table. Time series of N dates (``--dates N``): :mod:`.series`
(places and their truth), :mod:`.series_qa` (questions), :mod:`.series_write` (files).
"""

from .classes import BY_ID, BY_KEY, CLASSES, URBAN_THRESHOLD
from .qa import TASKS, UNITS
from .scene import Scene, make_scene
from .series import Series, make_series
from .series_qa import SERIES_TASKS
from .write import SynthError, parse_split, synthesize

__all__ = [
    "BY_ID",
    "BY_KEY",
    "CLASSES",
    "URBAN_THRESHOLD",
    "TASKS",
    "UNITS",
    "Scene",
    "make_scene",
    "SERIES_TASKS",
    "Series",
    "make_series",
    "SynthError",
    "parse_split",
    "synthesize",
]
