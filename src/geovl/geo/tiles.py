"""Tiles over a large raster, and the ONE way raster pixels become the RGB image a model sees.

**Tile grid** (:class:`TileGrid`): :class:`geovl.imagery.tiles.TileGrid` with its clip edge rule —
square windows of ``tile`` pixels whose top-left corners step by ``stride = tile − overlap``; the
last one along each axis is clipped at the raster edge (its image is padded with black to
``tile × tile``). Tile ``(row, col)`` is the rasterio ``Window(col·stride, row·stride, ≤ tile, ≤ tile)``.

**Rendering**: :mod:`geovl.imagery.render` — the one set of rules every path uses (band roles,
scale/offset, nodata and untagged fill, percentile stretch over valid pixels; windowed or decimated
reads, never a whole raster at full size). :func:`render_spec` here adds the preprocessing
config and a ``--bands`` option; :func:`image_for_model` is :func:`geovl.imagery.decode.load_image`
with those settings (so ``ask`` sends the very bytes ``data convert`` stores).
"""

from __future__ import annotations

import os

import numpy as np
from rasterio.windows import Window

from ..imagery.render import MAX_RENDER_PIXELS, RenderError, RenderSettings, RenderSpec, decimated_shape, read_rgb  # noqa: F401
from ..imagery.tiles import TileGrid as _TileGrid
from ..imagery.tiles import TilingError
from .errors import MeasureError


class TileGrid(_TileGrid):
    """:class:`geovl.imagery.tiles.TileGrid` with the clip edge rule; option errors are MeasureErrors."""

    def __post_init__(self):
        try:
            super().__post_init__()
        except TilingError as e:
            raise MeasureError(str(e)) from None


def window_polygon(transform, window) -> dict:
    """GeoJSON Polygon (map coordinates of ``transform``) of a pixel window (a rasterio ``Window`` or
    ``(col_off, row_off, width, height)``), ring counter-clockwise."""
    x, y, w, h = window.flatten() if isinstance(window, Window) else window
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
        img = load_image(
            path,
            DECIMATED_MAX_PIXELS,
            DECIMATED_MAX_DECODED_BYTES,
            render=settings_for(preprocess, order),
            render_max_pixels=max_pixels,
        )
    except ImageError as e:
        raise MeasureError(f"{path}: {e}") from None
    info = {"width": img.width, "height": img.height}
    if "render" in img.meta:
        info |= {k: img.meta[k] for k in ("render", "band_order", "valid_fraction", "source_size")}
    else:
        info["render"] = "as stored"
    return img.data, info
