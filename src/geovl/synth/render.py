"""Rendering a class map to an RGB image and to 4-band surface reflectance.

Each pixel gets a *material* (four crop varieties, forest, water, built-up ground, road, bare soil,
four roof kinds) with a display colour and a reflectance spectrum (blue, green, red, NIR; x 10000
like Sentinel-2 L2A). Both are multiplied by the same texture factor (crop rows and field margins,
forest canopy, soil and pavement mottling, roof ridges, building shadows), so the PNG and the
GeoTIFF show the same scene and NDVI/NDWI behave as on real data: NIR is high for vegetation and
low for water.

:class:`Textures` are drawn once per scene and shared by its "before" and "after" images, so
unchanged land looks the same on both dates and only real changes differ.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .classes import BARE, BUILDING, BUILTUP, CROPLAND, FOREST, N_IDS, REFLECTANCE_SCALE, ROAD, WATER
from .layout import Layout, grid, smooth_noise

# material index -> (name, RGB colour, reflectance x 10000 in B2 blue, B3 green, B4 red, B8 NIR)
MATERIALS = [
    ("crop_green", (62, 120, 45), (300, 600, 350, 3800)),
    ("crop_light_green", (110, 155, 60), (420, 780, 520, 3200)),
    ("crop_yellow_green", (160, 165, 70), (520, 860, 780, 2700)),
    ("crop_ripe_yellow", (195, 172, 90), (650, 950, 1150, 2300)),
    ("forest", (32, 72, 38), (230, 430, 240, 2900)),
    ("water", (38, 78, 128), (620, 560, 330, 160)),
    ("builtup", (176, 171, 162), (1350, 1400, 1450, 1750)),
    ("road", (88, 88, 92), (850, 880, 920, 1050)),
    ("bare", (156, 121, 86), (950, 1250, 1650, 2150)),
    ("roof_red", (178, 58, 46), (700, 720, 1650, 1900)),
    ("roof_blue_steel", (70, 105, 160), (1200, 1100, 800, 1000)),
    ("roof_orange", (206, 122, 58), (800, 1150, 1850, 2150)),
    ("roof_white", (224, 224, 218), (2600, 2650, 2700, 2900)),
]
N_CROPS = 4
ROOF0 = 9
MAT_RGB = np.array([m[1] for m in MATERIALS], np.float32)
MAT_REFL = np.array([m[2] for m in MATERIALS], np.float32)

CLASS_MATERIAL = np.zeros(N_IDS, np.int64)  # CROPLAND/BUILDING are filled per pixel
CLASS_MATERIAL[[FOREST, WATER, BUILTUP, ROAD, BARE]] = [4, 5, 6, 7, 8]
# amplitude of the "mottle" texture per class (multiplicative, +-)
MOTTLE = np.zeros(N_IDS, np.float32)
MOTTLE[[WATER, BUILTUP, ROAD, BARE]] = [0.05, 0.08, 0.03, 0.14]
SHADOW_FACTOR = 0.55
RIDGE_FACTOR = 0.86


@dataclass
class Textures:
    shade: np.ndarray  # low-frequency illumination / moisture variation, ~0.94..1.06
    canopy: np.ndarray  # forest crowns, ~0.65..1.35
    mottle: np.ndarray  # medium-frequency noise in [-1, 1]
    crop_variety: np.ndarray  # crop material (0..N_CROPS-1) of the field parcel under each pixel
    crop_rows: np.ndarray  # row pattern and darker field margins for cropland


def make_textures(rng: np.random.Generator, size: int) -> Textures:
    yy, xx = grid(size)
    shade = 0.94 + 0.12 * smooth_noise(rng, size, 4)
    crowns = max(4, size // 5)  # ~5 px crowns
    canopy = 0.65 + 0.5 * smooth_noise(rng, size, crowns) + 0.2 * smooth_noise(rng, size, max(2, size // 24))
    mottle = 2.0 * smooth_noise(rng, size, max(3, size // 10)) - 1.0
    # field parcels: a jittered grid of rectangles, each with a crop variety and a row direction
    cw, ch = rng.uniform(0.12, 0.25, 2) * size
    ox, oy = rng.uniform(0.0, 1.0, 2) * np.array([cw, ch])
    col = np.floor((xx + ox) / cw).astype(np.int64)
    row = np.floor((yy + oy) / ch).astype(np.int64)
    n_rows, n_cols = int(row.max()) + 1, int(col.max()) + 1
    variety = rng.integers(0, N_CROPS, (n_rows, n_cols))[row, col].astype(np.int64)
    vertical = rng.integers(0, 2, (n_rows, n_cols)).astype(bool)[row, col]
    period = max(3.0, size / 56.0)
    rows = 1.0 + 0.08 * np.sin(2.0 * np.pi * np.where(vertical, xx, yy) / period)
    margin = max(1.0, size / 224.0)
    edge = ((xx + ox) % cw < margin) | ((yy + oy) % ch < margin)
    rows = np.where(edge, 0.8, rows).astype(np.float32)
    return Textures(shade.astype(np.float32), canopy.astype(np.float32), mottle.astype(np.float32), variety, rows)


def render(layout: Layout, tex: Textures, illumination: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8 (H, W, 3), reflectance uint16 (4, H, W)) of a layout."""
    cls = layout.classes
    mat = CLASS_MATERIAL[cls]
    crop = cls == CROPLAND
    mat[crop] = tex.crop_variety[crop]
    factor = tex.shade * (1.0 + MOTTLE[cls] * tex.mottle)
    factor = np.where(crop, factor * tex.crop_rows, factor)
    factor = np.where(cls == FOREST, factor * tex.canopy, factor)
    shadow = np.zeros(cls.shape, bool)
    for b in layout.buildings:
        mat[b.y0 : b.y1, b.x0 : b.x1] = ROOF0 + b.roof
        # gable roof: the half away from the sun (south or east) is darker
        if b.x1 - b.x0 >= b.y1 - b.y0:
            factor[(b.y0 + b.y1) // 2 : b.y1, b.x0 : b.x1] *= RIDGE_FACTOR
        else:
            factor[b.y0 : b.y1, (b.x0 + b.x1) // 2 : b.x1] *= RIDGE_FACTOR
        d = b.shadow
        shadow[b.y0 + d : b.y1 + d, b.x0 + d : b.x1 + d] = True
    shadow &= cls != BUILDING
    factor = np.where(shadow, factor * SHADOW_FACTOR, factor) * np.float32(illumination)
    f = factor[..., None]
    rgb = np.clip(np.rint(MAT_RGB[mat] * f), 0, 255).astype(np.uint8)
    refl = np.clip(np.rint(MAT_REFL[mat] * f), 1, REFLECTANCE_SCALE).astype(np.uint16)
    return rgb, np.ascontiguousarray(refl.transpose(2, 0, 1))


def png_bytes(rgb: np.ndarray) -> bytes:
    """Deterministic PNG encoding of an (H, W, 3) uint8 array."""
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()
