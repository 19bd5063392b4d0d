"""Tiles over a large raster, and the ONE way raster pixels become the RGB image a model sees.

**Tile grid** (:class:`TileGrid`): square windows of ``tile`` pixels whose top-left corners step by
``stride = tile − overlap``. Along an axis of ``n`` pixels there are ``1 + ceil((n − tile) / stride)``
tiles (1 when ``n ≤ tile``); the last one reaches the raster edge and is clipped there (its image is
padded with black to ``tile × tile``). Tile ``(row, col)`` reads pixels
``[row·stride, row·stride + tile) × [col·stride, col·stride + tile)``.

**Rendering** (:func:`render_spec`, :func:`read_rgb`, :func:`image_for_model`): three bands, each
stretched between its ``lo``/``hi`` percentiles of the valid pixels (8-bit bands pass unchanged) by
:func:`geovl.imagery.geotiff.render_rgb` — the same function as ``load_image`` and
``render_composite``. Which bands:

1. the preprocessing config's ``rgb_bands`` (and its ``stretch``) when training wrote one;
2. rasters with 4 or more bands (or a ``--bands`` order): true colour (red, green, blue) found by
   :func:`~geovl.imagery.geotiff.band_roles` — band descriptions, else the order blue, green, red,
   nir[, swir] (Sentinel-2 stacks, ``geovl data synth`` GeoTIFFs);
3. otherwise bands 1–3 as R, G, B (grey for 1–2 bands), like ``load_image``.

Nodata pixels (the dataset mask) are left out of the percentiles and drawn black. Reads are
windowed (``window=``) or decimated (``out_shape=``): a raster is never read whole at full size.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass

import numpy as np

from ..imagery.decode import TIFF_MAGICS
from .errors import MeasureError

MAX_RENDER_PIXELS = 4096 * 4096  # whole-image renderings (geovl ask) are decimated beyond this


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
@dataclass(frozen=True)
class RenderSpec:
    bands: tuple[int, int, int]  # 0-based band indices shown as R, G, B
    lo: float = 2.0
    hi: float = 98.0
    how: str = "bands 1-3"

    def to_json(self) -> dict:
        return asdict(self) | {"bands": list(self.bands)}


def parse_band_order(spec) -> tuple[str, ...] | None:
    """``"blue,green,red,nir"`` → ("blue", "green", "red", "nir"); None stays None."""
    if spec is None or isinstance(spec, tuple):
        return spec
    items = tuple(s.strip().lower() for s in str(spec).split(",") if s.strip())
    if not items:
        raise MeasureError(f"--bands: give band names in file order, e.g. blue,green,red,nir (got {spec!r})")
    return items


def render_spec(count: int, band_names=(), preprocess=None, order=None) -> RenderSpec:
    """Which bands and stretch render a ``count``-band raster (rules in the module docstring)."""
    from ..imagery.geotiff import Raster, band_roles

    lo, hi = (float(v) for v in (preprocess.stretch if preprocess is not None else (2.0, 98.0)))
    if preprocess is not None and preprocess.rgb_bands:
        bands = tuple(int(b) for b in preprocess.rgb_bands)
        if len(bands) != 3 or min(bands) < 0 or max(bands) >= count:
            raise MeasureError(f"the model's preprocessing config renders bands {list(bands)} (0-based) "
                               f"but the raster has {count} band(s)")
        return RenderSpec(bands, lo, hi, "preprocessing config rgb_bands")
    order = parse_band_order(order)
    if count >= 4 or order:
        probe = Raster(np.empty((count, 0, 0), np.uint8), band_names=[d or "" for d in band_names])
        roles = band_roles(probe, order)
        if all(k in roles for k in ("red", "green", "blue")):
            return RenderSpec((roles["red"], roles["green"], roles["blue"]), lo, hi, "true colour (red, green, blue)")
        if order:
            raise MeasureError(f"--bands {','.join(order)}: true colour needs bands named red, green and blue")
    if count >= 3:
        return RenderSpec((0, 1, 2), lo, hi, "bands 1-3")
    return RenderSpec((0, 0, 0), lo, hi, "grey (band 1)")


def read_rgb(ds, spec: RenderSpec, window=None, out_shape: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(rgb (H, W, 3) uint8, valid (H, W) bool)`` of an open rasterio dataset, windowed
    (``window=(col_off, row_off, width, height)``) and/or decimated (``out_shape=(H, W)``)."""
    from rasterio.windows import Window

    from ..imagery.geotiff import Raster, render_rgb

    win = Window(*window) if window is not None else None
    idx = sorted({b + 1 for b in spec.bands})
    shape = (len(idx), *out_shape) if out_shape else None
    data = ds.read(idx, window=win, out_shape=shape)
    mask_shape = tuple(out_shape) if out_shape else None
    valid = ds.dataset_mask(window=win, out_shape=mask_shape) > 0
    arr = np.stack([data[idx.index(b + 1)] for b in spec.bands])
    if arr.dtype != np.uint8:
        arr = arr.astype(np.float64)
        arr[:, ~valid] = np.nan  # out of the percentiles, like nodata
    rgb = render_rgb(Raster(arr, nodata=ds.nodata), (0, 1, 2), spec.lo, spec.hi)
    rgb[~valid] = 0
    return rgb, valid


def png_bytes(rgb: np.ndarray, pad_to: int | None = None) -> bytes:
    """PNG of an (H, W, 3) array, padded with black at the right/bottom to ``pad_to`` square."""
    from PIL import Image

    from ..imagery.decode import encode_png

    if pad_to and (rgb.shape[0] < pad_to or rgb.shape[1] < pad_to):
        canvas = np.zeros((max(pad_to, rgb.shape[0]), max(pad_to, rgb.shape[1]), 3), np.uint8)
        canvas[: rgb.shape[0], : rgb.shape[1]] = rgb
        rgb = canvas
    return encode_png(Image.fromarray(np.ascontiguousarray(rgb), mode="RGB"))


def decimated_shape(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """(H, W) no larger than ``max_pixels`` keeping the aspect ratio (unchanged when it fits)."""
    if width * height <= max_pixels:
        return height, width
    f = math.sqrt(max_pixels / (width * height))
    return max(1, int(height * f)), max(1, int(width * f))


def image_for_model(path, preprocess=None, order=None, max_pixels: int = MAX_RENDER_PIXELS) -> tuple[bytes, dict]:
    """``(encoded image, info)`` of an image file as a model sees it: GeoTIFFs (and other rasters)
    rendered by the rules above (decimated beyond ``max_pixels``) to PNG; PNG/JPEG/WebP as stored
    (validated by :func:`geovl.imagery.decode.load_image`)."""
    import rasterio

    from ..imagery.decode import ImageError, load_image

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MeasureError(f"{path}: file not found")
    with open(path, "rb") as f:
        head = f.read(4)
    if head not in TIFF_MAGICS:
        try:
            img = load_image(path)
        except ImageError as e:
            raise MeasureError(f"{path}: {e}") from None
        return img.data, {"width": img.width, "height": img.height, "render": "as stored"}
    try:
        with rasterio.open(path) as ds:
            spec = render_spec(ds.count, ds.descriptions, preprocess, order)
            h, w = decimated_shape(ds.width, ds.height, max_pixels)
            rgb, _ = read_rgb(ds, spec, out_shape=(h, w) if (h, w) != (ds.height, ds.width) else None)
            info = {"width": w, "height": h, "source_size": [ds.width, ds.height], "render": spec.to_json()}
    except MeasureError:
        raise
    except Exception as e:  # noqa: BLE001 - unreadable raster
        raise MeasureError(f"{path}: cannot render the raster ({type(e).__name__}: {e})") from None
    return png_bytes(rgb), info
