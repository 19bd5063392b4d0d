"""The one exception of :mod:`geovl.geo`: bad input, reported to the user without a traceback."""

from ..errors import GeoVLError


class MeasureError(GeoVLError, ValueError):
    """A user-facing measurement error; the message names the file and what is wrong."""
