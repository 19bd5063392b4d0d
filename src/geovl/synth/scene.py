"""One synthetic scene on two dates: layouts, rendered images and the exact ground truth.

A scene is a pure function of ``(seed, index, size, max_buildings)``: scene ``i`` is the same
whatever the number of scenes generated with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .boxes import water_bodies
from .change import MAX_NEW_BUILDINGS, After, change_truth, make_after
from .classes import BUILDING, BUILTUP, CLASSES, URBAN_THRESHOLD
from .layout import Layout, make_layout
from .render import Textures, make_textures, render


@dataclass
class Scene:
    id: str
    index: int
    before: Layout
    after: After
    textures: Textures
    rgb: dict[str, np.ndarray]  # date -> (H, W, 3) uint8
    reflectance: dict[str, np.ndarray]  # date -> (4, H, W) uint16
    truth: dict  # {"before": {...}, "after": {...}, "change": {...}}

    def layout(self, date: str) -> Layout:
        return self.before if date == "before" else self.after.layout


def scene_id(index: int) -> str:
    return f"s{index:05d}"


def date_truth(layout: Layout) -> dict:
    """Exact per-date ground truth: class pixel counts, buildings, built-up share."""
    counts = np.bincount(layout.classes.ravel(), minlength=max(c.id for c in CLASSES) + 1)
    class_pixels = {c.key: int(counts[c.id]) for c in CLASSES}
    builtup = int(counts[BUILTUP] + counts[BUILDING])
    share = builtup / layout.classes.size
    return {
        "class_pixels": class_pixels,
        "buildings": {"count": len(layout.buildings), "boxes": [b.box() for b in layout.buildings]},
        "water_bodies": water_bodies(layout.classes),
        "builtup_pixels": builtup,
        "builtup_share": round(share, 6),
        "rural_urban": "urban" if share >= URBAN_THRESHOLD else "rural",
    }


def make_scene(seed: int, index: int, size: int, max_buildings: int) -> Scene:
    rng = np.random.default_rng([seed, index])
    # Draw the number of new buildings first so that before + new <= max_buildings while the
    # new-building count stays uniform over 0..MAX_NEW_BUILDINGS.
    n_new = int(rng.integers(0, min(MAX_NEW_BUILDINGS, max_buildings) + 1))
    textures = make_textures(rng, size)
    before = make_layout(rng, size, max_buildings - n_new)
    after = make_after(rng, before, n_new)
    rgb, refl = {}, {}
    rgb["before"], refl["before"] = render(before, textures)
    rgb["after"], refl["after"] = render(after.layout, textures, after.illumination)
    truth = {
        "before": date_truth(before),
        "after": date_truth(after.layout),
        "change": change_truth(before.classes, after.layout.classes, len(after.new_buildings))
        | {"new_building_boxes": [b.box() for b in after.new_buildings]},
    }
    return Scene(scene_id(index), index, before, after, textures, rgb, refl, truth)
