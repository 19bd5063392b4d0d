"""The "after" date of a scene: realistic land-use changes with exact change ground truth.

Changes applied to a copy of the "before" layout (:func:`make_after`):

- **new buildings** (0–3, drawn by the caller so that the total stays within ``max_buildings``)
  on cropland, or on bare / built-up land when no cropland has room — cropland → building;
- **cropland expansion** (in 85 % of the scenes that have cropland and >= 4 % forest or bare
  land): a blob of 5–12 % of the image (at most half of the source class) growing from the
  cropland edge into forest or bare land — forest/bare → cropland. Cropland grows in about a
  third of all scenes;
- **forest loss** (in half of the scenes with bare land and >= 6 % forest): a blob of 3–7 % (at
  most half of the forest) is cleared — forest → bare land.

No change adds a class that was absent or removes one that was present, so the presence
answers stay balanced on the "after" images too.

The change ground truth is computed from the two class maps (:func:`change_truth`), never from
what was intended, so it is exact by construction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .classes import BARE, BUILDING, BUILTUP, BY_ID, CROPLAND, FOREST, N_IDS
from .layout import Building, Layout, blob_pixels, place_buildings

MAX_NEW_BUILDINGS = 3
P_EXPANSION = 0.85
P_FOREST_LOSS = 0.5


@dataclass
class After:
    layout: Layout
    new_buildings: list[Building]
    illumination: float  # small radiometric difference between the dates


def _next_to(mask: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` 4-adjacent to a pixel of ``other``."""
    near = np.zeros_like(other)
    near[1:] |= other[:-1]
    near[:-1] |= other[1:]
    near[:, 1:] |= other[:, :-1]
    near[:, :-1] |= other[:, 1:]
    return mask & near


def _blob(
    rng: np.random.Generator, cls: np.ndarray, source: np.ndarray, share: float, grow_from: np.ndarray | None
) -> np.ndarray:
    size = cls.shape[0]
    starts = _next_to(source, grow_from) if grow_from is not None else source
    if not starts.any():
        starts = source
    idx = np.flatnonzero(starts)
    y, x = divmod(int(idx[int(rng.integers(0, idx.size))]), size)
    return blob_pixels(rng, source, round(share * size * size), (y + 0.5, x + 0.5), 0.25)


def make_after(rng: np.random.Generator, before: Layout, n_new: int) -> After:
    """The later date: ``n_new`` new buildings (fewer if no room) plus land-cover changes."""
    cls = before.classes.copy()
    size = cls.shape[0]
    n_px = size * size
    new = place_buildings(rng, cls, n_new, (CROPLAND,))
    if len(new) < n_new:
        new += place_buildings(rng, cls, n_new - len(new), (BARE, BUILTUP))

    # Changes never add a class that was absent nor remove one that was present (each takes at
    # most half of its source class), so presence answers keep their balance on both dates.
    crop = cls == CROPLAND
    if crop.any() and rng.random() < P_EXPANSION:
        options = [c for c in (FOREST, BARE) if (cls == c).sum() >= 0.04 * n_px]
        if options:
            source = cls == options[int(rng.integers(0, len(options)))]
            share = min(rng.uniform(0.05, 0.12), 0.5 * source.sum() / n_px)
            cls[_blob(rng, cls, source, share, crop)] = CROPLAND

    forest = cls == FOREST
    if (cls == BARE).any() and forest.sum() >= 0.06 * n_px and rng.random() < P_FOREST_LOSS:
        share = min(rng.uniform(0.03, 0.07), 0.5 * forest.sum() / n_px)
        cls[_blob(rng, cls, forest, share, None)] = BARE

    illumination = float(rng.uniform(0.96, 1.04))
    return After(Layout(cls, list(before.buildings) + new), new, illumination)


def change_truth(before: np.ndarray, after: np.ndarray, n_new_buildings: int) -> dict:
    """Exact change ground truth from the two class maps (pixel counts)."""
    changed = before != after
    pairs = before[changed].astype(np.int64) * N_IDS + after[changed].astype(np.int64)
    counts = np.bincount(pairs, minlength=N_IDS * N_IDS)
    transitions = {
        f"{BY_ID[int(p) // N_IDS].key}->{BY_ID[int(p) % N_IDS].key}": int(counts[p]) for p in np.flatnonzero(counts)
    }
    crop_b, crop_a = before == CROPLAND, after == CROPLAND
    return {
        "transitions": transitions,  # "from->to": pixels
        "changed_pixels": int(changed.sum()),
        "new_buildings": int(n_new_buildings),
        "new_building_pixels": int(((after == BUILDING) & (before != BUILDING)).sum()),
        "cropland_gain_pixels": int((crop_a & ~crop_b).sum()),
        "cropland_loss_pixels": int((crop_b & ~crop_a).sum()),
        "cropland_net_pixels": int(crop_a.sum()) - int(crop_b.sum()),
        "forest_loss_pixels": int(((before == FOREST) & (after != FOREST)).sum()),
    }
