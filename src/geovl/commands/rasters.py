"""Raster arguments of the geo commands (measure, ask, map, detect): STAC Items among them become local
rasters for the duration of the command."""

from __future__ import annotations

import sys
from contextlib import ExitStack, contextmanager


@contextmanager
def local_rasters(*paths, bands=None):
    """``paths`` with each STAC Item (or catalog folder) replaced by a temporary local raster, removed on
    exit (:func:`geovl.imagery.stac.stac_inputs`; the chosen assets are named on stderr); a bad Item
    is a :class:`~geovl.cli.CLIError`. None and plain paths pass through unchanged."""
    from geovl.cli import CLIError
    from geovl.imagery.stac import StacError, stac_inputs

    with ExitStack() as stack:
        try:
            resolved = stack.enter_context(stac_inputs(*paths, bands=bands, log=_stderr))
        except StacError as e:
            raise CLIError(str(e)) from e
        yield resolved


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)
