"""Tiles over a large raster, and the ONE way raster pixels become the RGB image a model sees.

**Tile grid** (:class:`TileGrid`): square windows of ``tile`` pixels whose top-left corners step by
``stride = tile − overlap``. Along an axis of ``n`` pixels there are ``1 + ceil((n − tile) / stride)``
tiles (1 when ``n ≤ tile``); the last one reaches the raster edge and is clipped there (its image is
padded with black to ``tile × tile``). Tile ``(row, col)`` reads pixels
``[row·stride, row·stride + tile) × [col·stride, col·stride + tile)``.

**Rendering**: :mod:`geovl.imagery.render` — the one set of rules every path uses (band roles,
scale/offset, nodata and untagged fill, percentile stretch over valid pixels; windowed or decimated
reads, never a whole raster at full size). :func:`render_spec` here adds the preprocessing
config and a ``--bands`` option; :func:`image_for_model` is :func:`geovl.imagery.decode.load_image`
with those settings (so ``ask`` sends the very bytes ``data convert`` stores).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from ..imagery.render import MAX_RENDER_PIXELS, RenderError, RenderSettings, RenderSpec, decimated_shape, read_rgb  # noqa: F401
from .errors import MeasureError


@dataclass(frozen=True)
class TileGrid:
    width: int
    height: int
    tile: int = 224
    overlap: int = 32

    def __post_init__(self):
        if self.tile < 16:
            raise MeasureError(f"--tile must be at least 16 pixels, got {self.tile}")
        if not 0 <= self.overlap < self.tile:
            raise MeasureError(f"--overlap must be >= 0 and smaller than --tile ({self.tile}), got {self.overlap}")
        if self.width < 1 or self.height < 1:
            raise MeasureError(f"empty raster ({self.width} x {self.height})")

    @property
    def stride(self) -> int:
        return self.tile - self.overlap

    def _n(self, size: int) -> int:
        return 1 if size <= self.tile else 1 + math.ceil((size - self.tile) / self.stride)

    @property
    def n_cols(self) -> int:
        return self._n(self.width)

    @property
    def n_rows(self) -> int:
        return self._n(self.height)

    @property
    def count(self) -> int:
        return self.n_rows * self.n_cols

    def window(self, row: int, col: int) -> tuple[int, int, int, int]:
        """``(col_off, row_off, width, height)`` of tile ``(row, col)``, clipped to the raster."""
        if not (0 <= row < self.n_rows and 0 <= col < self.n_cols):
            raise IndexError(f"tile ({row}, {col}) outside the {self.n_rows} x {self.n_cols} grid")
        x, y = col * self.stride, row * self.stride
        return x, y, min(self.tile, self.width - x), min(self.tile, self.height - y)

    def __iter__(self):
        for r in range(self.n_rows):
            for c in range(self.n_cols):
                yield r, c

    def out_transform(self, transform):
        """The raster's affine transform scaled to one pixel per tile stride (tile ``(r, c)`` is
        pixel ``(r, c)``, whose top-left corner is the tile's top-left corner)."""
        from affine import Affine

        return transform @ Affine.scale(self.stride)

    def to_json(self) -> dict:
        return {"width": self.width, "height": self.height, "tile": self.tile, "overlap": self.overlap,
                "stride": self.stride, "rows": self.n_rows, "cols": self.n_cols, "tiles": self.count}


def window_polygon(transform, window: tuple[int, int, int, int]) -> dict:
    """GeoJSON Polygon (map coordinates of ``transform``) of a pixel window, ring counter-clockwise."""
    x, y, w, h = window
    ring = [transform @ (px, py) for px, py in ((x, y), (x + w, y), (x + w, y + h), (x, y + h))]
    area2 = sum(a[0] * b[1] - b[0] * a[1] for a, b in zip(ring, ring[1:] + ring[:1]))
    if area2 < 0:  # start at the window's top-left corner either way
        ring = [ring[0]] + ring[:0:-1]
    ring = [[float(a), float(b)] for a, b in ring]
    return {"type": "Polygon", "coordinates": [ring + [ring[0]]]}


# ---------------------------------------------------------------------------------------- rendering

DECIMATED_MAX_PIXELS = 2**32  # whole-scene renders are decimated, so only absurd headers are refused
DECIMATED_MAX_DECODED_BYTES = 2**40


def parse_band_order(spec) -> tuple[str, ...] | None:
    """``"blue,green,red,nir"`` → ("blue", "green", "red", "nir"); None stays None."""
    if spec is None or isinstance(spec, tuple):
        return spec
    items = tuple(s.strip().lower() for s in str(spec).split(",") if s.strip())
    if not items:
        raise MeasureError(f"--bands: give band names in file order, e.g. blue,green,red,nir (got {spec!r})")
    return items


def settings_for(preprocess=None, order=None) -> RenderSettings:
    try:
        return RenderSettings.from_preprocess(preprocess, order)
    except RenderError as e:
        raise MeasureError(str(e)) from None


def render_spec(count: int, band_names=(), preprocess=None, order=None, colorinterp=()) -> RenderSpec:
    """Which bands and stretch render a ``count``-band raster (:func:`geovl.imagery.render.render_spec`)."""
    from ..imagery.render import render_spec as _spec

    try:
        return _spec(count, band_names, settings_for(preprocess, order), colorinterp)
    except RenderError as e:
        raise MeasureError(str(e)) from None


def png_bytes(rgb: np.ndarray, pad_to: int | None = None) -> bytes:
    """PNG of an (H, W, 3) array, padded with black at the right/bottom to ``pad_to`` square."""
    from PIL import Image

    from ..imagery.decode import encode_png

    if pad_to and (rgb.shape[0] < pad_to or rgb.shape[1] < pad_to):
        canvas = np.zeros((max(pad_to, rgb.shape[0]), max(pad_to, rgb.shape[1]), 3), np.uint8)
        canvas[: rgb.shape[0], : rgb.shape[1]] = rgb
        rgb = canvas
    return encode_png(Image.fromarray(np.ascontiguousarray(rgb), mode="RGB"))


def image_for_model(path, preprocess=None, order=None, max_pixels: int = MAX_RENDER_PIXELS) -> tuple[bytes, dict]:
    """``(encoded image, info)`` of an image file as a model sees it: exactly
    :func:`geovl.imagery.decode.load_image` with the model's render settings (rasters decimated
    beyond ``max_pixels``; plain PNG/JPEG/WebP as stored)."""
    from ..imagery.decode import ImageError, load_image

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MeasureError(f"{path}: file not found")
    try:
        img = load_image(path, DECIMATED_MAX_PIXELS, DECIMATED_MAX_DECODED_BYTES, render=settings_for(preprocess, order),
                         render_max_pixels=max_pixels)
    except ImageError as e:
        raise MeasureError(f"{path}: {e}") from None
    info = {"width": img.width, "height": img.height}
    if "render" in img.meta:
        info |= {k: img.meta[k] for k in ("render", "band_order", "valid_fraction", "source_size")}
    else:
        info["render"] = "as stored"
    return img.data, info
