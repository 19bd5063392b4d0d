"""Procedural layout of one synthetic county scene: the exact class map and the building list.

Everything is drawn with vectorised numpy on a ``size x size`` grid from one ``numpy`` Generator,
so a scene is a pure function of its seed. Construction (see :func:`make_layout`):

1. Draw which land covers are present: cropland, forest, bare land, water, built-up land (each in
   about half of the scenes) and roads (half of the scenes).
2. Cropland / forest / bare land fill the image as a Voronoi partition with noisy borders.
3. Water: a meandering river band or one or two ponds.
4. Built-up land: a noisy blob taking an exact share of the non-water pixels — a town (32–55 % of
   the image, "urban") or, in a few scenes, a village patch (4–8 %, "rural").
5. Roads: one or two straight bands crossing the image (over water they are bridges).
6. Buildings: 0..max rectangles (side 8.5–12 % of the image, so ~19–27 px at 224 px) placed on
   cropland, bare or built-up land, each surrounded by a free margin wider than its shadow, so
   every building is its own connected blob in the class map and can be counted.

A class chosen to be present always covers at least :data:`MIN_SHARE` of the image (the layout is
redrawn otherwise), so presence is visible, not a few stray pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .classes import BARE, BUILDING, BUILTUP, CROPLAND, FOREST, ROAD, WATER

MIN_SHARE = {CROPLAND: 0.03, FOREST: 0.03, BARE: 0.03, WATER: 0.03, BUILTUP: 0.03, ROAD: 0.008}
MAX_ATTEMPTS = 40
BUILDING_SIDE = (0.085, 0.12)  # building side as a fraction of the image size
N_ROOFS = 4  # roof materials (see render.py)


@dataclass
class Building:
    x0: int
    y0: int
    x1: int  # exclusive
    y1: int  # exclusive
    roof: int  # roof material 0..N_ROOFS-1
    shadow: int  # shadow offset (px) towards the south-east

    def box(self) -> list[int]:
        """[x0, y0, x1, y1] in pixels, x1/y1 exclusive."""
        return [self.x0, self.y0, self.x1, self.y1]

    @property
    def pixels(self) -> int:
        return (self.x1 - self.x0) * (self.y1 - self.y0)


@dataclass
class Layout:
    classes: np.ndarray  # (size, size) uint8 class ids
    buildings: list[Building] = field(default_factory=list)

    @property
    def size(self) -> int:
        return self.classes.shape[0]


# -- noise and geometry helpers ---------------------------------------------------------------


def upsample(low: np.ndarray, size: int) -> np.ndarray:
    """Smooth (smooth-step bilinear) upsampling of a square grid to ``size x size`` float32."""
    n = low.shape[0]
    coords = np.linspace(0.0, n - 1.0, size)
    i0 = np.minimum(np.floor(coords).astype(np.int64), n - 2)
    t = coords - i0
    t = (t * t * (3.0 - 2.0 * t)).astype(np.float32)
    low = low.astype(np.float32)
    rows = low[i0] * (1.0 - t)[:, None] + low[i0 + 1] * t[:, None]
    return (rows[:, i0] * (1.0 - t)[None, :] + rows[:, i0 + 1] * t[None, :]).astype(np.float32)


def smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Value noise in [0, 1] with about ``cells`` features across the image."""
    return upsample(rng.random((max(cells, 1) + 1, max(cells, 1) + 1)), size)


def grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (yy, xx), float32."""
    c = np.arange(size, dtype=np.float32) + 0.5
    return np.meshgrid(c, c, indexing="ij")


def blob_pixels(
    rng: np.random.Generator, candidates: np.ndarray, k: int, seed_yx: tuple[float, float], roughness: float = 0.3
) -> np.ndarray:
    """Boolean mask of the ``k`` candidate pixels nearest (noisy distance) to ``seed_yx``."""
    size = candidates.shape[0]
    yy, xx = grid(size)
    g = np.hypot(yy - seed_yx[0], xx - seed_yx[1]) / size + roughness * smooth_noise(rng, size, 5)
    idx = np.flatnonzero(candidates)
    k = int(min(max(k, 0), idx.size))
    out = np.zeros(size * size, bool)
    if k:
        order = np.argsort(g.ravel()[idx], kind="stable")[:k]
        out[idx[order]] = True
    return out.reshape(size, size)


def _band(
    size: int,
    theta: float,
    offset: float,
    width: float,
    amp: float = 0.0,
    wavelength: float = 1.0,
    phase: float = 0.0,
    bank: np.ndarray | None = None,
) -> np.ndarray:
    """A (possibly meandering) band across the image at angle ``theta`` through the centre + offset."""
    yy, xx = grid(size)
    c = size / 2.0
    u = (xx - c) * np.cos(theta) + (yy - c) * np.sin(theta)
    v = -(xx - c) * np.sin(theta) + (yy - c) * np.cos(theta)
    centre = offset + amp * np.sin(2.0 * np.pi * u / wavelength + phase)
    half = width / 2.0 + (bank if bank is not None else 0.0)
    return np.abs(v - centre) < half


# -- land cover -------------------------------------------------------------------------------


def _draw_presence(rng: np.random.Generator) -> dict[int, bool]:
    # Non-empty subsets of {cropland, forest, bare, water, builtup} other than {water} alone:
    # each class is present in ~half of the scenes (15 or 16 of 30 subsets).
    while True:
        flags = {c: bool(rng.random() < 0.5) for c in (CROPLAND, FOREST, BARE, WATER, BUILTUP)}
        if any(flags[c] for c in (CROPLAND, FOREST, BARE, BUILTUP)):
            break
    flags[ROAD] = bool(rng.random() < 0.5)
    return flags


def _water(rng: np.random.Generator, size: int) -> np.ndarray:
    if rng.random() < 0.5:  # river
        width = rng.uniform(0.06, 0.11) * size
        bank = (smooth_noise(rng, size, 6) - 0.5) * 0.4 * width
        return _band(
            size,
            theta=rng.uniform(0.0, np.pi),
            offset=rng.uniform(-0.28, 0.28) * size,
            width=width,
            amp=rng.uniform(0.03, 0.12) * size,
            wavelength=rng.uniform(0.6, 1.4) * size,
            phase=rng.uniform(0.0, 2.0 * np.pi),
            bank=bank,
        )
    yy, xx = grid(size)
    mask = np.zeros((size, size), bool)
    for _ in range(int(rng.integers(1, 3))):
        cy, cx = rng.uniform(0.2, 0.8, 2) * size
        ry, rx = rng.uniform(0.08, 0.17, 2) * size
        a = rng.uniform(0.0, np.pi)
        dy, dx = yy - cy, xx - cx
        u = dx * np.cos(a) + dy * np.sin(a)
        v = -dx * np.sin(a) + dy * np.cos(a)
        mask |= (u / rx) ** 2 + (v / ry) ** 2 + 0.6 * (smooth_noise(rng, size, 5) - 0.5) < 1.0
    return mask


def _land_cover(rng: np.random.Generator, size: int) -> tuple[np.ndarray, dict[int, bool]]:
    flags = _draw_presence(rng)
    land = [c for c in (CROPLAND, FOREST, BARE) if flags[c]]
    yy, xx = grid(size)
    if land:
        m = len(land) + int(rng.integers(0, 3))
        owners = np.array(land + [land[int(i)] for i in rng.integers(0, len(land), m - len(land))], np.uint8)
        pts = rng.random((m, 2)) * size
        d = np.stack([np.hypot(yy - py, xx - px) + 0.35 * size * smooth_noise(rng, size, 3) for py, px in pts])
        cls = owners[d.argmin(axis=0)]
    else:
        cls = np.full((size, size), BUILTUP, np.uint8)
    if flags[WATER]:
        cls[_water(rng, size)] = WATER
    if flags[BUILTUP] and land:
        urban = rng.random() < 0.85
        share = rng.uniform(0.32, 0.55) if urban else rng.uniform(0.04, 0.08)
        centre = tuple(rng.uniform(0.2, 0.8, 2) * size)
        cls[blob_pixels(rng, cls != WATER, round(share * size * size), centre, 0.35)] = BUILTUP
    if flags[ROAD]:
        for _ in range(1 + int(rng.random() < 0.3)):
            width = max(2.0, rng.uniform(0.018, 0.03) * size)
            cls[_band(size, rng.uniform(0.0, np.pi), rng.uniform(-0.35, 0.35) * size, width)] = ROAD
    return cls, flags


def _acceptable(cls: np.ndarray, flags: dict[int, bool]) -> bool:
    n = cls.size
    counts = np.bincount(cls.ravel(), minlength=BUILDING + 3)
    return all(counts[c] >= MIN_SHARE[c] * n for c, on in flags.items() if on)


# -- buildings --------------------------------------------------------------------------------


def place_buildings(rng: np.random.Generator, cls: np.ndarray, n: int, allowed: tuple[int, ...]) -> list[Building]:
    """Place up to ``n`` buildings on ``allowed`` classes, writing BUILDING into ``cls`` in place.

    Each building's box grown by its margin must lie inside the image and on allowed classes only
    (other buildings are not allowed), so buildings never touch and keep a margin from water,
    forest and roads. Positions are drawn uniformly among all valid ones (summed-area table);
    fewer than ``n`` are placed when the land runs out.
    """
    size = cls.shape[0]
    placed: list[Building] = []
    for _ in range(n):
        w, h = (max(5, int(round(rng.uniform(*BUILDING_SIDE) * size))) for _ in range(2))
        shadow = max(1, int(round(0.2 * min(w, h))))
        gap = shadow + max(2, int(round(0.12 * min(w, h))))
        H, W = h + 2 * gap, w + 2 * gap
        if H > size or W > size:
            break
        blocked = ~np.isin(cls, allowed)
        sat = np.zeros((size + 1, size + 1), np.int64)
        sat[1:, 1:] = blocked.cumsum(0).cumsum(1)
        sums = sat[H:, W:] - sat[:-H, W:] - sat[H:, :-W] + sat[:-H, :-W]
        valid = np.flatnonzero(sums == 0)
        if valid.size == 0:
            continue
        ey, ex = divmod(int(valid[int(rng.integers(0, valid.size))]), sums.shape[1])
        b = Building(ex + gap, ey + gap, ex + gap + w, ey + gap + h, int(rng.integers(0, N_ROOFS)), shadow)
        cls[b.y0 : b.y1, b.x0 : b.x1] = BUILDING
        placed.append(b)
    return placed


def make_layout(rng: np.random.Generator, size: int, max_buildings: int) -> Layout:
    """One scene's class map and buildings (see the module doc)."""
    for _ in range(MAX_ATTEMPTS):
        cls, flags = _land_cover(rng, size)
        if _acceptable(cls, flags):
            break
    n = int(rng.integers(0, max_buildings + 1))
    buildings = place_buildings(rng, cls, n, (CROPLAND, BARE, BUILTUP))
    return Layout(cls, buildings)
