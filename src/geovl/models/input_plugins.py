"""Vision inputs implemented above the model layer, reached by module name.

The spectral projector (:mod:`geovl.spectral.vision_input`) reads hyperspectral cubes. The
:mod:`geovl.spectral` package sits above :mod:`geovl.models`, :mod:`geovl.inference` and
:mod:`geovl.evaluate` (its VLM maps and comparisons use them), so the model loader, the engine and the
eval driver reach the projector's functions through :func:`spectral` instead of importing the
package (an import would make a package cycle). The module is imported only when a model needs it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

SPECTRAL = "geovl.spectral.vision_input"


def spectral() -> ModuleType:
    """:mod:`geovl.spectral.vision_input` (``load_into``, ``cube_tensor``, ``PROCESSOR_KWARGS``,
    ``sample_cube_paths``, ``SpectralError``, ...)."""
    return importlib.import_module(SPECTRAL)
