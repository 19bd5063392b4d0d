"""Sensor band tables and resampling of 1 nm spectra to band centres and widths.

- ``gf5b``: GF-5B AHSI-like, 330 bands 400–2500 nm: 150 VNIR bands evenly 400–1000 nm
  (≈4 nm apart, FWHM 5 nm) and 180 SWIR bands evenly 1008.3–2500 nm (≈8.3 nm apart, FWHM 10 nm).
- ``aviris``: AVIRIS-classic-like, 224 bands evenly 365–2497 nm (≈9.6 nm apart, FWHM 10 nm).

Both are idealised tables (evenly spaced centres, one FWHM per spectrometer), close to the
published specifications; real products ship their own per-band centres and FWHMs, which
:func:`from_cube` uses. Bands inside the atmospheric water-vapour windows
(:data:`WATER_VAPOUR`, nm) are kept but marked bad (``good = False``; ENVI ``bbl``), so band
numbering stays the sensor's; renderings, band depth and SAM skip them.

Resampling (:func:`resample`) integrates each spectrum against a Gaussian spectral response
of the band's FWHM (σ = FWHM / 2.3548) on the 1 nm grid. NaN samples are left out and the
weights renormalised; a band with less than half of its response measured becomes NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import SpectralError

WATER_VAPOUR = ((1340.0, 1450.0), (1790.0, 1960.0))
FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))
SENSORS = ("gf5b", "aviris")


@dataclass
class Sensor:
    name: str
    centres: np.ndarray  # nm
    fwhm: np.ndarray  # nm
    good: np.ndarray  # bool
    pixel_size_m: float = 30.0

    @property
    def bands(self) -> int:
        return int(self.centres.size)

    def describe(self) -> dict:
        return {
            "name": self.name,
            "bands": self.bands,
            "range_nm": [float(self.centres[0]), float(self.centres[-1])],
            "bad_bands": int((~self.good).sum()),
            "water_vapour_nm": [list(w) for w in WATER_VAPOUR],
            "pixel_size_m": self.pixel_size_m,
        }


def water_vapour_mask(centres: np.ndarray) -> np.ndarray:
    """True for good bands (outside the water-vapour windows)."""
    bad = np.zeros(centres.shape, bool)
    for lo, hi in WATER_VAPOUR:
        bad |= (centres >= lo) & (centres <= hi)
    return ~bad


def gf5b() -> Sensor:
    vnir = np.linspace(400.0, 1000.0, 150)
    swir = np.linspace(1000.0 + 1500.0 / 180, 2500.0, 180)
    c = np.concatenate([vnir, swir])
    fw = np.concatenate([np.full(150, 5.0), np.full(180, 10.0)])
    return Sensor("gf5b", c, fw, water_vapour_mask(c), 30.0)


def aviris() -> Sensor:
    c = np.linspace(365.0, 2497.0, 224)
    return Sensor("aviris", c, np.full(224, 10.0), water_vapour_mask(c), 20.0)


def get_sensor(name: str) -> Sensor:
    table = {"gf5b": gf5b, "gf-5b": gf5b, "aviris": aviris}
    if name.lower() not in table:
        raise SpectralError(f"unknown sensor {name!r}: choose from {', '.join(SENSORS)}")
    return table[name.lower()]()


def from_cube(cube) -> Sensor:
    """The band table of an opened cube (FWHM defaults to the band spacing when the file has none)."""
    wl = cube.require_wavelengths()
    if cube.fwhm is not None:
        fw = cube.fwhm
    elif wl.size > 1:
        fw = np.gradient(wl)
    else:
        fw = np.array([10.0])
    return Sensor(cube.path.name, wl.copy(), np.asarray(fw, float).copy(), cube.good_bands.copy())


def srf_matrix(grid: np.ndarray, centres: np.ndarray, fwhm: np.ndarray) -> np.ndarray:
    """(bands, len(grid)) Gaussian response weights (unnormalised, peak 1)."""
    sigma = np.maximum(np.asarray(fwhm, float), 1e-6) * FWHM_TO_SIGMA
    return np.exp(-0.5 * ((grid[None, :] - centres[:, None]) / sigma[:, None]) ** 2)


def resample(spectra: np.ndarray, grid: np.ndarray, centres, fwhm, min_coverage: float = 0.5) -> np.ndarray:
    """Spectra ``(K, L)`` on ``grid`` (nm, regular) → ``(K, bands)`` band values (NaN-aware, see module doc)."""
    spectra = np.atleast_2d(np.asarray(spectra, np.float64))
    grid = np.asarray(grid, np.float64)
    centres = np.asarray(centres, np.float64)
    fwhm = np.broadcast_to(np.asarray(fwhm, np.float64), centres.shape)
    if spectra.shape[1] != grid.size:
        raise SpectralError(f"spectra have {spectra.shape[1]} samples but the grid has {grid.size}")
    step = float(np.median(np.diff(grid))) if grid.size > 1 else 1.0
    W = srf_matrix(grid, centres, fwhm)  # (B, L)
    ideal = fwhm * FWHM_TO_SIGMA * np.sqrt(2 * np.pi) / step  # sum of weights on an infinite grid
    ok = np.isfinite(spectra)
    vals = np.where(ok, spectra, 0.0)
    num = vals @ W.T  # (K, B)
    den = ok.astype(np.float64) @ W.T
    out = num / np.maximum(den, 1e-12)
    out[den < min_coverage * ideal[None, :]] = np.nan
    return out
