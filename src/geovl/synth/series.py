"""One synthetic place on N dates (a time series, ``geovl data synth --dates N``) with exact change truth.

The first date is an ordinary synthetic county scene (:func:`.layout.make_layout`, redrawn until it has
cropland); each later date copies the previous class map and applies the changes planned for that
interval (interval ``k`` runs from date ``k-1`` to date ``k``):

- **buildings on cropland** (in :data:`P_OCCUPY` of the places): 1–2 new buildings
  (:func:`.layout.place_buildings`, cropland only) in a first interval drawn at random, then again in
  each later growing interval with probability 1/2 — cropland → building;
- **built-up sprawl**: a blob of 2–5 % of the image grows from the built-up land (or anywhere on the
  cropland when there is none) into cropland — cropland → built-up land;
- **forest loss** (in :data:`P_FOREST_LOSS` of the places with >= 6 % forest): one blob of 3–7 % (at
  most half of the forest) is cleared in one interval drawn at random — forest → bare land.

Built-up land grows in every interval in about half of the places; in the others, one or more
"quiet" intervals see no building and no sprawl. Nothing ever becomes cropland, so the cropland lost
between the first and the last date is also the net decrease.

The truth (:func:`series_truth`) is computed from the class maps alone, never from the plan: the
first date with buildings on what was cropland at the first date, the cropland pixels lost, the
intervals in which the forest shrank, the built-up pixels per date. Dates are ISO ``YYYY-MM-DD``,
one to two years apart, in one season (the same month and day every year), first year 2015–2019.

A series is a pure function of ``(seed, index, size, max_buildings, n_dates)``; its random stream is
separate from the two-date scenes', so ``--dates`` leaves those untouched.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .change import _blob
from .classes import BARE, BUILDING, BUILTUP, CROPLAND, FOREST
from .layout import Layout, make_layout, place_buildings
from .render import Textures, make_textures, render
from .scene import date_truth, scene_id

MIN_DATES, MAX_DATES = 2, 12
FIRST_YEARS = (2015, 2019)  # the first date's year is drawn in this range (inclusive)
MIN_CROPLAND = 0.15  # the first date's cropland share (the layout is redrawn below it)
MAX_LAYOUT_DRAWS = 40
P_GROW_EVERY = 0.5
P_OCCUPY = 0.85
P_FOREST_LOSS = 0.9
SPRAWL_SHARE = (0.02, 0.05)
FOREST_LOSS_SHARE = (0.03, 0.07)


@dataclass
class Series:
    id: str
    index: int
    dates: list[str]  # ISO YYYY-MM-DD, increasing
    layouts: list[Layout]
    textures: Textures
    rgb: list[np.ndarray]  # per date (H, W, 3) uint8
    reflectance: list[np.ndarray]  # per date (4, H, W) uint16
    truth: dict


def draw_dates(rng: np.random.Generator, n: int) -> list[str]:
    """``n`` ISO dates one or two years apart, same month and day (one season)."""
    year = int(rng.integers(FIRST_YEARS[0], FIRST_YEARS[1] + 1))
    month, day = int(rng.integers(4, 10)), int(rng.integers(1, 29))
    years = [year]
    for _ in range(n - 1):
        years.append(years[-1] + int(rng.integers(1, 3)))
    return [f"{y:04d}-{month:02d}-{day:02d}" for y in years]


def _plan(rng: np.random.Generator, n: int, has_forest: bool) -> dict:
    """Which interval (1..n-1) gets which change."""
    intervals = list(range(1, n))
    quiet: set[int] = set()
    if rng.random() >= P_GROW_EVERY:
        quiet.add(intervals[int(rng.integers(0, len(intervals)))])
        quiet |= {k for k in intervals if rng.random() < 0.2}
    active = [k for k in intervals if k not in quiet]
    occupied: set[int] = set()
    if active and rng.random() < P_OCCUPY:
        first = active[int(rng.integers(0, len(active)))]
        occupied = {first} | {k for k in active if k > first and rng.random() < 0.5}
    sprawl = {k for k in active if k not in occupied or rng.random() < 0.3}
    forest = int(rng.integers(1, n)) if has_forest and rng.random() < P_FOREST_LOSS else None
    return {"quiet": sorted(quiet), "occupied": sorted(occupied), "sprawl": sorted(sprawl), "forest_loss": forest}


def make_series(seed: int, index: int, size: int, max_buildings: int, n_dates: int) -> Series:
    if not MIN_DATES <= n_dates <= MAX_DATES:
        raise ValueError(f"a time series has {MIN_DATES}..{MAX_DATES} dates, got {n_dates}")
    rng = np.random.default_rng([seed, index, 2])
    dates = draw_dates(rng, n_dates)
    textures = make_textures(rng, size)
    for _ in range(MAX_LAYOUT_DRAWS):
        first = make_layout(rng, size, max_buildings)
        if (first.classes == CROPLAND).mean() >= MIN_CROPLAND:
            break
    n_px = size * size
    plan = _plan(rng, n_dates, (first.classes == FOREST).sum() >= 0.06 * n_px)
    layouts = [first]
    cls, buildings = first.classes.copy(), list(first.buildings)
    for k in range(1, n_dates):
        if k in plan["occupied"]:
            buildings += place_buildings(rng, cls, int(rng.integers(1, 3)), (CROPLAND,))
        crop = cls == CROPLAND
        if k in plan["sprawl"] and crop.any():
            built = (cls == BUILTUP) | (cls == BUILDING)
            share = min(rng.uniform(*SPRAWL_SHARE), 0.5 * crop.sum() / n_px)
            cls[_blob(rng, cls, crop, share, built if built.any() else None)] = BUILTUP
        forest = cls == FOREST
        if k == plan["forest_loss"] and forest.any():
            share = min(rng.uniform(*FOREST_LOSS_SHARE), 0.5 * forest.sum() / n_px)
            cls[_blob(rng, cls, forest, share, None)] = BARE
        layouts.append(Layout(cls.copy(), list(buildings)))
    rgb, refl = [], []
    for layout in layouts:
        image, bands = render(layout, textures, float(rng.uniform(0.96, 1.04)))
        rgb.append(image)
        refl.append(bands)
    truth = series_truth([la.classes for la in layouts], dates) | {
        "per_date": [date_truth(la) for la in layouts],
        "plan": plan,
    }
    return Series(scene_id(index), index, dates, layouts, textures, rgb, refl, truth)


def series_truth(class_maps: list[np.ndarray], dates: list[str]) -> dict:
    """Exact truth of a time series from its class maps (pixel counts), see the module doc."""
    first = class_maps[0]
    was_crop = first == CROPLAND
    occupied = [int(((c == BUILDING) & was_crop).sum()) for c in class_maps]
    first_k = next((k for k, px in enumerate(occupied) if px > 0), None)
    crop = [int((c == CROPLAND).sum()) for c in class_maps]
    last = class_maps[-1]
    forest = [int((c == FOREST).sum()) for c in class_maps]
    builtup = [int(((c == BUILTUP) | (c == BUILDING)).sum()) for c in class_maps]
    years = [int(d[:4]) for d in dates]
    return {
        "dates": list(dates),
        "occupation": {
            "pixels": occupied,  # building pixels on first-date cropland, per date
            "first_index": first_k,
            "first_date": None if first_k is None else dates[first_k],
            "first_year": None if first_k is None else years[first_k],
        },
        "cropland": {
            "pixels": crop,
            "lost_pixels": int((was_crop & (last != CROPLAND)).sum()),
            "gained_pixels": int(((last == CROPLAND) & ~was_crop).sum()),
        },
        "forest": {
            "pixels": forest,
            "loss_intervals": [k for k in range(1, len(dates)) if forest[k] < forest[k - 1]],  # k: date k-1 → k
        },
        "builtup": {
            "pixels": builtup,
            "grew_every_interval": all(builtup[k] > builtup[k - 1] for k in range(1, len(dates))),
        },
    }
