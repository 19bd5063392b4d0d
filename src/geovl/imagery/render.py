"""The ONE way a raster becomes the 8-bit RGB image a model sees (convert, infer, eval, ask, map,
the API and the web app all come here, through :func:`geovl.imagery.decode.load_image`).

Every raster format GDAL reads (GeoTIFF/COG, JPEG2000, VRT, ENVI, 16-bit PNG, …) is opened with
rasterio and rendered by :func:`render_dataset`; only plain 8-bit PNG/JPEG/WebP/GIF/BMP stay with
Pillow (kept as stored). The rules:

**Bands shown as R, G, B** (:func:`render_spec`), first rule that applies:

1. ``rgb_bands`` (0-based) from the preprocessing config or ``--bands 3,2,1`` (1-based on the
   command line);
2. a band order (``--bands blue,green,red,nir`` or the config's ``band_order``): true colour;
3. band descriptions naming red, green and blue ("B4 red", "B04", "Red", …): true colour;
4. the colour interpretation GDAL reports (red, green, blue): those bands;
5. 4 or more bands: the order blue, green, red, nir[, swir] (Sentinel-2 10 m stacks, synth);
6. 3 bands: bands 1–3; 1–2 bands: grey (band 1).

**Values**: each band's scale/offset tags are applied (``value × scale + offset``). **Valid pixels**:
GDAL's dataset mask (the nodata tag, an internal mask or alpha band) and NaN; and, *untagged fill*,
when a raster has neither a nodata tag nor a mask, a pixel whose rendered bands are all exactly 0
is fill (the zero border of a reprojected scene), not data. **Stretch**: each band between its
``lo``/``hi`` percentiles (default 2–98) of the valid pixels only; 8-bit bands pass unchanged.
Invalid pixels are drawn black. **Size**: rasters over :data:`MAX_RENDER_PIXELS` are read
decimated (``out_shape``: GDAL uses overviews) — a raster is never read whole at full size
beyond that.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import GeoVLError

MAX_RENDER_PIXELS = 4096 * 4096  # renderings larger than this are read decimated
DEFAULT_STRETCH = (2.0, 98.0)
GDAL_CACHE_MB = 64  # GDAL's block cache while rendering (its default, 5 % of RAM, held ~1 GB on a 12000² read)


class RenderError(GeoVLError, ValueError):
    """A render setting does not fit the raster (message names the setting)."""


@dataclass(frozen=True)
class RenderSettings:
    """How rasters are rendered: saved in the preprocessing config so training and serving agree."""

    rgb_bands: tuple[int, int, int] | None = None  # 0-based
    band_order: tuple[str, ...] | None = None  # names of the file's bands in order
    stretch: tuple[float, float] = DEFAULT_STRETCH

    @classmethod
    def from_preprocess(cls, pre, bands=None) -> "RenderSettings":
        """The settings of a :class:`~geovl.models.preprocess.PreprocessConfig` (None: defaults);
        a ``--bands`` option (``bands``) applies only when the config fixes no bands itself."""
        rgb = order = None
        stretch = DEFAULT_STRETCH
        if pre is not None:
            rgb = tuple(int(b) for b in pre.rgb_bands) if pre.rgb_bands else None
            order = tuple(pre.band_order) if getattr(pre, "band_order", None) else None
            stretch = tuple(float(v) for v in pre.stretch)
        if bands is not None and rgb is None and order is None:
            opt = parse_bands(bands)
            rgb, order = opt.rgb_bands, opt.band_order
        return cls(rgb, order, stretch)

    def to_json(self) -> dict:
        return {
            "rgb_bands": list(self.rgb_bands) if self.rgb_bands else None,
            "band_order": list(self.band_order) if self.band_order else None,
            "stretch": list(self.stretch),
        }


def parse_bands(spec) -> RenderSettings:
    """``--bands``: ``"3,2,1"`` (1-based band numbers shown as R, G, B) or ``"blue,green,red,nir"``
    (the names of the file's bands in order)."""
    if spec is None:
        return RenderSettings()
    if isinstance(spec, RenderSettings):
        return spec
    items = [
        s.strip().lower() for s in (spec if isinstance(spec, (list, tuple)) else str(spec).split(",")) if str(s).strip()
    ]
    if not items:
        raise RenderError(
            f"--bands: give 1-based band numbers (3,2,1) or band names in file order (blue,green,red,nir); got {spec!r}"
        )
    if all(s.isdigit() for s in items):
        nums = [int(s) for s in items]
        if len(nums) != 3 or min(nums) < 1:
            raise RenderError(
                f"--bands {spec!r}: give three 1-based band numbers shown as red, green, blue (e.g. 3,2,1)"
            )
        return RenderSettings(rgb_bands=tuple(n - 1 for n in nums))
    if any(s.isdigit() for s in items):
        raise RenderError(f"--bands {spec!r}: use either band numbers or band names, not both")
    return RenderSettings(band_order=tuple(items))


@dataclass(frozen=True)
class RenderSpec:
    bands: tuple[int, int, int]  # 0-based band indices shown as R, G, B
    lo: float = 2.0
    hi: float = 98.0
    how: str = "bands 1-3"

    def to_json(self) -> dict:
        return asdict(self) | {"bands": list(self.bands)}

    def describe(self) -> str:
        """Human-readable: ``R,G,B = bands 3,2,1 (true colour …)``."""
        return f"R,G,B = bands {','.join(str(b + 1) for b in self.bands)} ({self.how})"


def render_spec(count: int, band_names=(), settings: RenderSettings | None = None, colorinterp=()) -> RenderSpec:
    """Which bands and stretch render a ``count``-band raster (rules in the module docstring)."""
    from .geotiff import DEFAULT_BAND_ORDER, Raster, band_roles

    s = settings or RenderSettings()
    lo, hi = (float(v) for v in s.stretch)
    if s.rgb_bands:
        bands = tuple(int(b) for b in s.rgb_bands)
        if len(bands) != 3 or min(bands) < 0 or max(bands) >= count:
            raise RenderError(
                f"rgb_bands {list(bands)} (0-based; --bands {','.join(str(b + 1) for b in bands)}) "
                f"but the raster has {count} band(s)"
            )
        return RenderSpec(bands, lo, hi, "bands chosen by --bands / the preprocessing config")
    probe = Raster(np.empty((count, 0, 0), np.uint8), band_names=[d or "" for d in band_names])
    if s.band_order:
        roles = band_roles(probe, s.band_order)
        if not all(k in roles for k in ("red", "green", "blue")):
            raise RenderError(
                f"--bands {','.join(s.band_order)}: true colour needs bands named red, green and blue "
                f"within the raster's {count} band(s)"
            )
        return RenderSpec(
            (roles["red"], roles["green"], roles["blue"]), lo, hi, "true colour from the band order given"
        )
    roles = band_roles(probe, default=False)
    if all(k in roles for k in ("red", "green", "blue")):
        return RenderSpec((roles["red"], roles["green"], roles["blue"]), lo, hi, "true colour from band descriptions")
    ci = [str(getattr(c, "name", c)).lower() for c in colorinterp]
    if all(c in ci for c in ("red", "green", "blue")):
        return RenderSpec((ci.index("red"), ci.index("green"), ci.index("blue")), lo, hi, "colour interpretation")
    if count >= 4:
        roles = band_roles(probe, DEFAULT_BAND_ORDER)
        return RenderSpec(
            (roles["red"], roles["green"], roles["blue"]), lo, hi, "true colour, assumed band order blue,green,red,nir"
        )
    if count >= 3:
        return RenderSpec((0, 1, 2), lo, hi, "bands 1-3")
    return RenderSpec((0, 0, 0), lo, hi, "grey (band 1)")


def spec_for_dataset(ds, settings: RenderSettings | None = None) -> RenderSpec:
    return render_spec(ds.count, ds.descriptions, settings, ds.colorinterp)


def decimated_shape(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """(H, W) no larger than ``max_pixels`` keeping the aspect ratio (unchanged when it fits)."""
    if width * height <= max_pixels:
        return height, width
    f = math.sqrt(max_pixels / (width * height))
    return max(1, int(height * f)), max(1, int(width * f))


def _untagged(ds) -> bool:
    """No nodata tag and no mask/alpha: the untagged-fill rule applies."""
    from rasterio.enums import MaskFlags

    if ds.nodata is not None:
        return False
    return all(flags == [MaskFlags.all_valid] for flags in ds.mask_flag_enums)


def read_rgb(
    ds, spec: RenderSpec, window=None, out_shape: tuple[int, int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(rgb (H, W, 3) uint8, valid (H, W) bool)`` of an open rasterio dataset, windowed
    (``window``: a rasterio ``Window`` or ``(col_off, row_off, width, height)``) and/or decimated (``out_shape=(H, W)``), by the
    rules of the module docstring."""
    from rasterio.windows import Window

    from .geotiff import stretch_to_uint8

    win = window if window is None or isinstance(window, Window) else Window(*window)
    shape = tuple(out_shape) if out_shape else None
    valid = ds.dataset_mask(window=win, out_shape=shape) > 0
    untagged = _untagged(ds)
    nonzero = np.zeros(valid.shape, bool) if untagged else None
    idx = sorted(set(spec.bands))
    data = ds.read([b + 1 for b in idx], window=win, out_shape=(len(idx), *shape) if shape else None)  # native dtype
    raw: dict[int, np.ndarray] = {}
    for k, b in enumerate(idx):  # float copies one band at a time: memory ~ a few bands of the output size
        band = data[k]
        if np.issubdtype(band.dtype, np.floating):
            valid &= np.isfinite(band)
        if untagged:
            nonzero |= band != 0
        raw[b] = band
    if untagged:
        valid &= nonzero
    rgb = np.empty((*valid.shape, 3), np.uint8)
    for i, b in enumerate(spec.bands):
        band = raw[b]
        scale = ds.scales[b] if ds.scales and ds.scales[b] is not None else 1.0
        offset = ds.offsets[b] if ds.offsets and ds.offsets[b] is not None else 0.0
        scaled = scale != 1.0 or offset != 0.0
        if band.dtype == np.uint8 and not scaled:
            rgb[..., i] = band  # 8-bit data pass unchanged
            continue
        f = band.astype(np.float64)
        if scaled:
            f = f * scale + offset
        f[~valid] = np.nan  # out of the percentiles, like nodata
        rgb[..., i] = stretch_to_uint8(f, spec.lo, spec.hi, None if scaled else ds.nodata)
        del f
    rgb[~valid] = 0
    return rgb, valid


@dataclass
class Rendered:
    rgb: np.ndarray  # (H, W, 3) uint8
    valid_fraction: float
    spec: RenderSpec
    source_size: tuple[int, int]  # (width, height) of the raster

    def info(self) -> dict:
        return {
            "render": self.spec.to_json(),
            "band_order": self.spec.describe(),
            "valid_fraction": round(self.valid_fraction, 6),
            "source_size": list(self.source_size),
        }


def render_dataset(ds, settings: RenderSettings | None = None, max_pixels: int = MAX_RENDER_PIXELS) -> Rendered:
    """Render an open rasterio dataset (decimated beyond ``max_pixels``)."""
    spec = spec_for_dataset(ds, settings)
    h, w = decimated_shape(ds.width, ds.height, max_pixels)
    rgb, valid = read_rgb(ds, spec, out_shape=(h, w) if (h, w) != (ds.height, ds.width) else None)
    return Rendered(rgb, float(valid.mean()) if valid.size else 0.0, spec, (ds.width, ds.height))
