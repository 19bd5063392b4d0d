"""Georeferenced land-cover measurement (``geovl measure``): class areas in m², km², 公顷 and 亩,
two-date change matrices and change patches, AOI clipping — numbers measured on the raster, never
guessed by a model.

Modules: :mod:`.measure` (``measure_raster`` → ``Measurement``, the Python API), :mod:`.geodesy`
(pixel areas: planar, ellipsoidal, geodesic), :mod:`.landcover` (class rasters, supplied or
derived), :mod:`.indices` (the rule-based index classifier), :mod:`.tables` (class tables),
:mod:`.aoi`, :mod:`.change`, :mod:`.report` (JSON, bilingual table, model context), :mod:`.units`.
"""

from .errors import MeasureError

__all__ = ["MeasureError"]
