"""Multi-band rasters (GeoTIFF) in and out, with CRS and transform kept, and RGB rendering.

A small rasterio wrapper: :func:`read_raster` returns a :class:`Raster` (bands-first array plus
georeferencing); :func:`write_raster` writes one; :func:`render_rgb` turns any band stack into
8-bit RGB with a per-band percentile stretch (8-bit data is passed through unchanged).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Raster:
    data: np.ndarray  # (bands, height, width)
    crs: str | None = None  # WKT or "EPSG:xxxx"
    transform: tuple | None = None  # affine (a, b, c, d, e, f)
    nodata: float | None = None
    band_names: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        return self.data.shape[0]

    @property
    def height(self) -> int:
        return self.data.shape[1]

    @property
    def width(self) -> int:
        return self.data.shape[2]

    def georef(self) -> dict:
        """JSON-serialisable georeferencing for sample metadata (empty when not georeferenced)."""
        out: dict = {}
        if self.crs:
            out["crs"] = self.crs
        if self.transform is not None:
            out["transform"] = [float(v) for v in self.transform]
            out["pixel_size"] = [abs(float(self.transform[0])), abs(float(self.transform[4]))]
        if out:
            out["bands"] = self.count
            out["dtype"] = str(self.data.dtype)
            if self.band_names:
                out["band_names"] = list(self.band_names)
            if self.nodata is not None:
                out["nodata"] = float(self.nodata)
        return out


def read_raster(path: str | os.PathLike) -> Raster:
    import rasterio

    with rasterio.open(path) as src:
        data = src.read()
        crs = src.crs.to_string() if src.crs else None
        t = src.transform
        has_geo = src.crs is not None or not t.is_identity
        transform = (t.a, t.b, t.c, t.d, t.e, t.f) if has_geo else None
        names = [d or "" for d in src.descriptions]
        return Raster(data, crs, transform, src.nodata, names if any(names) else [])


def write_raster(path: str | os.PathLike, raster: Raster, compress: str | None = "deflate") -> None:
    import rasterio
    from rasterio.transform import Affine

    kw = dict(
        driver="GTiff",
        width=raster.width,
        height=raster.height,
        count=raster.count,
        dtype=raster.data.dtype.name,
    )
    if raster.crs:
        kw["crs"] = raster.crs
    if raster.transform is not None:
        kw["transform"] = Affine(*raster.transform)
    if raster.nodata is not None:
        kw["nodata"] = raster.nodata
    if compress:
        kw["compress"] = compress
    with rasterio.open(path, "w", **kw) as dst:
        dst.write(raster.data)
        for i, name in enumerate(raster.band_names, 1):
            dst.set_band_description(i, name)


def stretch_to_uint8(band: np.ndarray, lo_pct: float = 2.0, hi_pct: float = 98.0, nodata=None) -> np.ndarray:
    """Per-band percentile stretch to 0..255 (nodata and NaN map to 0)."""
    b = band.astype(np.float64)
    valid = np.isfinite(b)
    if nodata is not None:
        valid &= b != nodata
    if not valid.any():
        return np.zeros(band.shape, np.uint8)
    lo, hi = np.percentile(b[valid], [lo_pct, hi_pct])
    if hi <= lo:
        hi = lo + 1.0
    out = np.clip((b - lo) / (hi - lo), 0.0, 1.0) * 255.0
    out[~valid] = 0
    return np.round(out).astype(np.uint8)


def render_rgb(
    raster: Raster, bands: tuple[int, int, int] | None = None, lo_pct: float = 2.0, hi_pct: float = 98.0
) -> np.ndarray:
    """(H, W, 3) uint8. ``bands`` are 0-based indices; default: first three bands (or grey)."""
    n = raster.count
    if bands is None:
        bands = (0, 1, 2) if n >= 3 else (0, 0, 0)
    if max(bands) >= n:
        raise ValueError(f"band index {max(bands)} out of range for a {n}-band raster")
    chans = []
    for b in bands:
        arr = raster.data[b]
        if arr.dtype == np.uint8:
            chans.append(arr)
        else:
            chans.append(stretch_to_uint8(arr, lo_pct, hi_pct, raster.nodata))
    return np.ascontiguousarray(np.stack(chans, axis=-1))


# Band roles for composites: recognised in band descriptions ("B4 red", "NIR", "B08"), else the
# default order blue, green, red, nir[, swir] (Sentinel-2 10 m stacks, geovl synth GeoTIFFs).
DEFAULT_BAND_ORDER = ("blue", "green", "red", "nir", "swir")
_ROLE_WORDS = {
    "blue": ("blue", "b2", "b02"),
    "green": ("green", "b3", "b03"),
    "red": ("red", "b4", "b04"),
    "nir": ("nir", "near infrared", "near-infrared", "b8", "b08"),
    "swir": ("swir", "swir1", "b11"),
}
COMPOSITES = {"true": ("red", "green", "blue"), "false-nir": ("nir", "red", "green")}


def band_roles(raster: Raster, order: tuple[str, ...] | None = None, default: bool = True) -> dict[str, int]:
    """{role: 0-based band index}. ``order`` (e.g. ("blue", "green", "red", "nir")) names the bands
    in file order; without it roles come from the band descriptions, then (``default``)
    :data:`DEFAULT_BAND_ORDER`."""
    if order:
        return {name: i for i, name in enumerate(order) if i < raster.count and name in _ROLE_WORDS}
    roles: dict[str, int] = {}
    for i, desc in enumerate(raster.band_names):
        words = desc.lower().replace("_", " ").split()
        if "edge" in words:  # red-edge bands are not "red"
            continue
        for role, keys in _ROLE_WORDS.items():
            if role not in roles and any(k in words or k == desc.lower().strip() for k in keys):
                roles[role] = i
                break
    if not roles and default:
        roles = {name: i for i, name in enumerate(DEFAULT_BAND_ORDER) if i < raster.count}
    return roles


def render_composite(
    raster: Raster,
    composite: str = "true",
    order: tuple[str, ...] | None = None,
    lo_pct: float = 2.0,
    hi_pct: float = 98.0,
) -> np.ndarray:
    """(H, W, 3) uint8 of a named composite with a per-band percentile stretch: ``true`` (red,
    green, blue) or ``false-nir`` (NIR, red, green: vegetation shows red)."""
    if composite not in COMPOSITES:
        raise ValueError(f"unknown composite {composite!r}; choose from {', '.join(COMPOSITES)}")
    roles = band_roles(raster, order)
    missing = [r for r in COMPOSITES[composite] if r not in roles]
    if missing:
        raise ValueError(
            f"{composite} composite needs band(s) {', '.join(missing)}; the raster has {raster.count} band(s)"
        )
    return render_rgb(raster, tuple(roles[r] for r in COMPOSITES[composite]), lo_pct, hi_pct)
