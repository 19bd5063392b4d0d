"""The :class:`Cube` interface shared by every reader, windows, and wavelength lookup.

A cube is ``bands × rows × cols``. Readers never load the whole cube: :meth:`Cube.read` reads
a rasterio :class:`~rasterio.windows.Window` ``(col_off, row_off, width, height)`` (the one window
type, :mod:`geovl.imagery.tiles`; ``window.toslices()`` is ``(rows, cols)``) for some bands, so a cube larger than memory is
processed in chunks::

    with open_cube("scene.hdr") as cube:
        for w in iter_windows(cube, rows=256):
            block = cube.read_float(window=w)      # (bands, w.height, w.width) float32

``read`` returns the stored values exactly (native dtype, host byte order). ``read_float``
returns float32 reflectance: the no-data value (ENVI ``data ignore value`` / GeoTIFF nodata)
becomes NaN and a reflectance scale factor (ENVI ``reflectance scale factor``) is divided out.

Wavelengths are kept in nanometres whatever the file says (µm headers are converted).
``band_index(2200)`` (nm) or ``band_index(2.2, unit="um")`` returns the nearest band; a
wavelength more than one band width outside the sensor's range is an error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from rasterio.windows import Window  # noqa: F401  (col_off, row_off, width, height): the one window type

from ..imagery.tiles import TilingError, strips
from . import SpectralError

UNIT_ALIASES = {
    "nm": "nm",
    "nanometer": "nm",
    "nanometers": "nm",
    "nanometre": "nm",
    "nanometres": "nm",
    "um": "um",
    "µm": "um",
    "μm": "um",
    "micrometer": "um",
    "micrometers": "um",
    "micrometre": "um",
    "micrometres": "um",
    "micron": "um",
    "microns": "um",
}


def to_nm(values, unit: str, where: str = "") -> np.ndarray:
    """Wavelength values in ``unit`` (nm, µm/micrometers/...) → float64 nanometres."""
    u = UNIT_ALIASES.get(str(unit).strip().lower())
    if u is None:
        raise SpectralError(f"{where}unknown wavelength units {unit!r} (use nanometers or micrometers)")
    arr = np.asarray(values, dtype=np.float64)
    return arr * 1000.0 if u == "um" else arr


def parse_wavelength(text: str | float) -> float:
    """``"2200"``, ``"2200nm"``, ``"2.2um"``, ``"2.2µm"`` → nm. A bare number below 30 is read as µm."""
    if isinstance(text, (int, float)):
        v = float(text)
        return v * 1000.0 if v < 30 else v
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Zµμ]*)\s*", str(text))
    if not m:
        raise SpectralError(f"not a wavelength: {text!r} (examples: 2200, 2200nm, 2.2um)")
    v, unit = float(m.group(1)), m.group(2)
    if unit:
        return float(to_nm(v, unit))
    return v * 1000.0 if v < 30 else v


def parse_wavelengths(text: str) -> list[float]:
    return [parse_wavelength(t) for t in str(text).split(",") if t.strip()]


@dataclass
class Cube:
    """Metadata and read interface of an on-disk cube (subclasses implement :meth:`_read`)."""

    path: Path
    bands: int
    rows: int
    cols: int
    dtype: np.dtype
    wavelengths: np.ndarray | None = None  # nm, strictly increasing
    fwhm: np.ndarray | None = None  # nm
    good_bands: np.ndarray | None = None  # bool; False = bad band (e.g. water vapour), ENVI ``bbl``
    nodata: float | None = None
    scale: float | None = None  # reflectance = stored value / scale
    crs: str | None = None  # WKT or "EPSG:xxxx"
    transform: tuple | None = None  # affine (a, b, c, d, e, f)
    band_names: list[str] = field(default_factory=list)
    fmt: str = ""

    def __post_init__(self):
        self.path = Path(self.path)
        self.dtype = np.dtype(self.dtype)
        if self.good_bands is None:
            self.good_bands = np.ones(self.bands, bool)
        self.good_bands = np.asarray(self.good_bands, bool)
        if self.good_bands.shape != (self.bands,):
            raise SpectralError(f"{self.path}: bad-band list has {self.good_bands.size} entries for {self.bands} bands")
        if self.wavelengths is not None:
            wl = np.asarray(self.wavelengths, np.float64)
            if wl.shape != (self.bands,):
                raise SpectralError(f"{self.path}: {wl.size} wavelengths for {self.bands} bands")
            if not np.all(np.isfinite(wl)):
                raise SpectralError(f"{self.path}: wavelengths contain non-numbers")
            if wl.size > 1 and not np.all(np.diff(wl) > 0):
                i = int(np.argmin(np.diff(wl) > 0))
                raise SpectralError(
                    f"{self.path}: wavelengths are not strictly increasing (band {i + 1}: {wl[i]:g} nm, "
                    f"band {i + 2}: {wl[i + 1]:g} nm); sort the bands first"
                )
            self.wavelengths = wl
        if self.fwhm is not None:
            fw = np.asarray(self.fwhm, np.float64)
            if fw.shape != (self.bands,):
                raise SpectralError(f"{self.path}: {fw.size} fwhm values for {self.bands} bands")
            self.fwhm = fw

    # -- shape ------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.bands, self.rows, self.cols)

    def full_window(self) -> Window:
        return Window(0, 0, self.cols, self.rows)

    # -- reading ----------------------------------------------------------
    def _band_list(self, bands) -> np.ndarray:
        if bands is None:
            return np.arange(self.bands)
        b = np.atleast_1d(np.asarray(bands, dtype=np.int64))
        if b.size and (b.min() < 0 or b.max() >= self.bands):
            raise SpectralError(f"{self.path}: band index out of range 0..{self.bands - 1}: {b.tolist()}")
        return b

    def _check_window(self, window: Window | None) -> Window:
        w = window or self.full_window()
        if (
            w.row_off < 0
            or w.col_off < 0
            or w.height < 0
            or w.width < 0
            or w.row_off + w.height > self.rows
            or w.col_off + w.width > self.cols
        ):
            raise SpectralError(f"{self.path}: window {w} outside the {self.rows}×{self.cols} cube")
        return w

    def read(self, bands: Sequence[int] | None = None, window: Window | None = None) -> np.ndarray:
        """Stored values ``(len(bands), height, width)`` in native dtype (host byte order)."""
        return self._read(self._band_list(bands), self._check_window(window))

    def read_float(self, bands: Sequence[int] | None = None, window: Window | None = None) -> np.ndarray:
        """float32 reflectance: nodata → NaN, divided by the reflectance scale factor."""
        raw = self.read(bands, window)
        out = raw.astype(np.float32)
        if self.nodata is not None and not np.isnan(self.nodata):
            nd = np.array(self.nodata, dtype=raw.dtype) if raw.dtype.kind == "f" else self.nodata
            out[raw == nd] = np.nan
        if self.scale:
            out /= np.float32(self.scale)
        return out

    def _read(self, bands: np.ndarray, window: Window) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- wavelengths ------------------------------------------------------
    def require_wavelengths(self) -> np.ndarray:
        if self.wavelengths is None:
            raise SpectralError(
                f"{self.path}: no wavelength information (ENVI: add `wavelength = {{...}}` and `wavelength units` "
                'to the header; GeoTIFF: band tags `wavelength`; .npy: a sidecar JSON with "wavelength")'
            )
        return self.wavelengths

    def band_index(self, wavelength: float, unit: str = "nm", good_only: bool = False) -> int:
        """Index of the band nearest to ``wavelength`` (``unit`` nm or um). ``good_only`` skips bad bands."""
        wl = self.require_wavelengths()
        target = float(to_nm(wavelength, unit, f"{self.path}: "))
        lo, hi = self.range_nm()
        if not (lo <= target <= hi):
            raise SpectralError(f"{self.path}: {target:g} nm is outside this sensor's range {wl[0]:g}–{wl[-1]:g} nm")
        cand = np.flatnonzero(self.good_bands) if good_only else np.arange(self.bands)
        if cand.size == 0:
            raise SpectralError(f"{self.path}: every band is marked bad")
        return int(cand[np.argmin(np.abs(wl[cand] - target))])

    def band_indices(self, wavelengths: Sequence[float], unit: str = "nm", good_only: bool = False) -> list[int]:
        return [self.band_index(w, unit, good_only) for w in wavelengths]

    def range_nm(self) -> tuple[float, float]:
        """Wavelengths covered: first/last centre widened by half a band width (FWHM, else spacing)."""
        wl = self.require_wavelengths()
        if self.fwhm is not None:
            return float(wl[0] - self.fwhm[0] / 2), float(wl[-1] + self.fwhm[-1] / 2)
        if wl.size > 1:
            return float(wl[0] - (wl[1] - wl[0]) / 2), float(wl[-1] + (wl[-1] - wl[-2]) / 2)
        return float(wl[0]), float(wl[0])

    def georef(self) -> dict:
        out: dict = {}
        if self.crs:
            out["crs"] = self.crs
        if self.transform is not None:
            out["transform"] = [float(v) for v in self.transform]
        return out


def iter_windows(cube: Cube, rows: int = 256, cols: int | None = None) -> Iterator[Window]:
    """Windows covering the cube in row strips of ``rows`` (and column blocks of ``cols`` if given)."""
    try:
        yield from strips(cube.cols, cube.rows, rows, cols)
    except TilingError as e:
        raise SpectralError(str(e)) from None


def rows_for_budget(cube: Cube, budget_bytes: int = 256 * 2**20, bands: int | None = None) -> int:
    """Rows per window so that one float32 window of ``bands`` bands fits in ``budget_bytes``."""
    nb = bands or cube.bands
    per_row = max(1, nb * cube.cols * 4)
    return max(1, min(cube.rows, budget_bytes // per_row))


class ArrayCube(Cube):
    """An in-memory cube over a ``(bands, rows, cols)`` array (tests, synthesis, small scenes)."""

    def _read(self, bands: np.ndarray, window: Window) -> np.ndarray:
        rs, cs = window.toslices()
        return np.ascontiguousarray(self._data[bands, rs, cs])


def array_cube(data: np.ndarray, wavelengths=None, path: str = "<array>", **meta) -> ArrayCube:
    """Wrap an array as a :class:`Cube` (``meta``: fwhm, good_bands, nodata, scale, crs, transform)."""
    if data.ndim != 3:
        raise SpectralError(f"a cube array must be (bands, rows, cols), got shape {data.shape}")
    b, r, c = data.shape
    cube = ArrayCube(
        path=Path(path), bands=b, rows=r, cols=c, dtype=data.dtype, wavelengths=wavelengths, fmt="array", **meta
    )
    cube._data = data
    return cube
