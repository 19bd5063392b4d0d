"""Synthetic hyperspectral alteration scenes with exact ground truth (the physics; files and Q/A
are written by :mod:`geovl.spectral.synth_write`).

A scene is ``size × size`` pixels. With probability :data:`P_ALTERED` it contains an alteration
zone: the *main* mineral (one of :data:`geovl.spectral.library.ALTERATION`) as an elliptical
zone with a pure core (abundance 1) fading outwards, plus 0–2 smaller secondary zones of other
alteration minerals (peak abundance 0.3–0.6) on its flanks. Where alteration abundances sum above
1 they are scaled to 1. The rest of each pixel is background — green vegetation, dry grass and
silica (chalcedony) in proportions from smooth random fields.

Reflectance = linear mixture of the endmember spectra (USGS splib07, VNIR of SWIR-only records
extended flat; see :mod:`geovl.spectral.library`) resampled to the sensor's bands, × a smooth
illumination factor (0.8–1.2; SAM is insensitive to it), + Gaussian noise (σ = ``noise``
reflectance). Water-vapour bands are attenuated to 10 % with 4× noise and flagged bad.
Stored as int16 reflectance × 10000.

Ground truth, computed from the abundances (never from the noisy cube):

- mineral map: class ``1 + m`` of the alteration mineral with the largest abundance where that
  abundance ≥ :data:`ALTERED_THRESHOLD`, else 0 (background);
- alteration (yes/no): any pixel's total alteration abundance ≥ :data:`ALTERED_THRESHOLD`;
- main mineral: the alteration mineral with the largest abundance summed over the scene
  (``none`` without alteration);
- mineralisation probability map: ``p(x) = 1 − exp(−K_PIXEL · Σ_m w_m a_m(x))``;
- scene mineralisation probability: ``1 − exp(−K_SCENE · mean_x Σ_m w_m a_m(x))``, rounded half
  up to 2 decimals. ``w_m`` (:data:`COPPER_WEIGHT`) scores how strongly each mineral points to
  porphyry/epithermal copper: sericite (muscovite) halo 1.0, jarosite (oxidised sulphides) 0.9,
  alunite (advanced argillic lithocap) 0.8, kaolinite (argillic) 0.6, chlorite (propylitic) 0.5,
  calcite and buddingtonite (distal / hot-spring) 0.3. A teaching device, not a deposit model.

Deterministic: scene ``i`` of seed ``s`` uses ``numpy.random.default_rng([s, i])``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..units import round_half_up
from .library import ALTERATION, BACKGROUND, load_usgs
from .sensors import Sensor, resample

P_ALTERED = 0.6
ALTERED_THRESHOLD = 0.3
K_PIXEL = 3.0
K_SCENE = 8.0
COPPER_WEIGHT = {
    "muscovite": 1.0,
    "jarosite": 0.9,
    "alunite": 0.8,
    "kaolinite": 0.6,
    "chlorite": 0.5,
    "calcite": 0.3,
    "buddingtonite": 0.3,
}
REFLECTANCE_SCALE = 10000
MINERAL_KEYS = [m.key for m in ALTERATION]
BACKGROUND_KEYS = [m.key for m in BACKGROUND]


@dataclass
class SpectralScene:
    index: int
    abundance: np.ndarray  # (M + G, H, W) float32: alteration minerals then background
    cube: np.ndarray  # (bands, H, W) int16 reflectance × 10000
    mineral_map: np.ndarray  # (H, W) uint8
    probability_map: np.ndarray  # (H, W) float32
    alteration: bool
    main_mineral: str
    probability: float

    @property
    def mineral_pixels(self) -> dict:
        counts = np.bincount(self.mineral_map.ravel(), minlength=len(MINERAL_KEYS) + 1)
        return {"background": int(counts[0])} | {k: int(c) for k, c in zip(MINERAL_KEYS, counts[1:])}


def endmembers(sensor: Sensor, path=None) -> np.ndarray:
    """(M + G, bands) reflectance of the alteration and background endmembers on the sensor's bands."""
    lib = load_usgs(path)
    rules = [m.rule for m in ALTERATION + BACKGROUND]
    sub = lib.subset(rules)
    E = resample(sub.filled(), sub.wavelengths, sensor.centres, sensor.fwhm)
    return E


def smooth_field(rng: np.random.Generator, size: int, scale_px: float) -> np.ndarray:
    """Gaussian-filtered white noise (periodic, via FFT), normalised to mean 0 / std 1."""
    white = rng.standard_normal((size, size))
    f = np.fft.fftfreq(size)
    k2 = f[:, None] ** 2 + f[None, :] ** 2
    field = np.real(np.fft.ifft2(np.fft.fft2(white) * np.exp(-2 * (np.pi * scale_px) ** 2 * k2)))
    return (field - field.mean()) / (field.std() + 1e-12)


def _ellipse_d2(size: int, cy: float, cx: float, ry: float, rx: float, theta: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    dy, dx = yy - cy, xx - cx
    c, s = np.cos(theta), np.sin(theta)
    u, v = c * dx + s * dy, -s * dx + c * dy
    return (u / rx) ** 2 + (v / ry) ** 2


def alteration_abundance(rng: np.random.Generator, size: int, altered: bool) -> np.ndarray:
    """(M, H, W) alteration abundances (see module doc)."""
    M = len(MINERAL_KEYS)
    A = np.zeros((M, size, size))
    if not altered:
        return A
    main = int(rng.integers(M))
    cy, cx = rng.uniform(0.3, 0.7, 2) * size
    ry, rx = rng.uniform(0.15, 0.3, 2) * size
    theta = rng.uniform(0, np.pi)
    A[main] = np.clip(1.6 * np.exp(-_ellipse_d2(size, cy, cx, ry, rx, theta)), 0.0, 1.0)
    others = [m for m in range(M) if m != main]
    for m in rng.choice(others, size=int(rng.integers(0, 3)), replace=False):
        ang = rng.uniform(0, 2 * np.pi)
        dist = rng.uniform(0.8, 1.4)
        sy, sx = cy + dist * ry * np.sin(ang), cx + dist * rx * np.cos(ang)
        r2 = rng.uniform(0.08, 0.18, 2) * size
        a = rng.uniform(0.3, 0.6) * np.exp(-_ellipse_d2(size, sy, sx, r2[0], r2[1], rng.uniform(0, np.pi)))
        A[m] += np.where(a >= 0.02, a, 0.0)
    total = A.sum(axis=0)
    A *= np.where(total > 1.0, 1.0 / np.maximum(total, 1e-12), 1.0)[None]
    return A


def round2(x: float) -> float:
    return float(round_half_up(float(x), 2))


def ground_truth(A: np.ndarray) -> dict:
    """Mineral map, probability maps and scene answers from alteration abundances ``(M, H, W)``."""
    w = np.array([COPPER_WEIGHT[k] for k in MINERAL_KEYS])[:, None, None]
    score = (w * A).sum(axis=0)
    best = A.argmax(axis=0)
    mineral_map = np.where(A.max(axis=0) >= ALTERED_THRESHOLD, best + 1, 0).astype(np.uint8)
    altered = bool((A.sum(axis=0) >= ALTERED_THRESHOLD).any())
    main = MINERAL_KEYS[int(A.sum(axis=(1, 2)).argmax())] if altered else "none"
    return {
        "mineral_map": mineral_map,
        "probability_map": (1.0 - np.exp(-K_PIXEL * score)).astype(np.float32),
        "alteration": altered,
        "main_mineral": main,
        "probability": round2(1.0 - np.exp(-K_SCENE * score.mean())),
    }


def make_scene(seed: int, index: int, size: int, sensor: Sensor, E: np.ndarray, noise: float = 0.004) -> SpectralScene:
    rng = np.random.default_rng([seed, index])
    altered = bool(rng.random() < P_ALTERED)
    A = alteration_abundance(rng, size, altered)
    fields = np.stack([smooth_field(rng, size, size / 6) for _ in BACKGROUND_KEYS])
    wts = np.exp(1.5 * fields)
    wts /= wts.sum(axis=0, keepdims=True)
    Bg = (1.0 - A.sum(axis=0))[None] * wts
    ab = np.concatenate([A, Bg])  # (M + G, H, W), sums to 1
    refl = np.einsum("kb,khw->bhw", E, ab)
    shade = np.clip(1.0 + 0.08 * smooth_field(rng, size, size / 4), 0.8, 1.2)
    refl *= shade[None]
    bad = ~sensor.good
    refl[bad] *= 0.1
    sigma = np.where(bad, 4 * noise, noise)[:, None, None]
    refl += rng.standard_normal(refl.shape) * sigma
    cube = np.clip(np.round(refl * REFLECTANCE_SCALE), 0, 32767).astype(np.int16)
    gt = ground_truth(A)
    return SpectralScene(
        index,
        ab.astype(np.float32),
        cube,
        gt["mineral_map"],
        gt["probability_map"],
        gt["alteration"],
        gt["main_mineral"],
        gt["probability"],
    )
