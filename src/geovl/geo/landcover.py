"""Class rasters for measurement: read a supplied categorical GeoTIFF, or derive classes from a
multi-band image with :mod:`.indices`; align two dates onto one grid.

A single-band input is always a class raster; a multi-band input is reflectance (classes derived).
Nodata of a class raster = the raster's own nodata value plus the class table's nodata codes.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field

import numpy as np

from .errors import MeasureError
from .indices import IndexRules, classify

SENTINEL = -2_147_483_647  # int32 fill for reprojected nodata


@dataclass
class Grid:
    """One raster read into memory, with a rasterio CRS (or None) and an Affine transform."""

    data: np.ndarray  # (bands, H, W)
    crs: object  # rasterio.crs.CRS | None
    transform: object  # affine.Affine
    nodata: float | None
    name: str  # file name used in messages
    band_names: list[str] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, int]:
        return self.data.shape[1], self.data.shape[2]

    @property
    def count(self) -> int:
        return self.data.shape[0]


@dataclass
class ClassMap:
    codes: np.ndarray  # (H, W) integer codes
    valid: np.ndarray  # (H, W) bool
    crs: object
    transform: object
    name: str  # the file the classes come from
    source: str  # "supplied" or "derived"
    image: str | None = None  # the reflectance image (derived), or the IMAGE given with --classes
    band_count: int | None = None  # of the reflectance image
    notes: list[dict] = field(default_factory=list)
    rules: IndexRules | None = None  # the rules (with this raster's bands) of derived classes

    @property
    def shape(self) -> tuple[int, int]:
        return self.codes.shape


def read_grid(src, name: str | None = None) -> Grid:
    """A path (GeoTIFF or any GDAL raster) or a :class:`geovl.imagery.geotiff.Raster`."""
    from affine import Affine
    from rasterio.crs import CRS

    from ..imagery.geotiff import Raster

    if isinstance(src, Raster):
        crs = CRS.from_user_input(src.crs) if src.crs else None
        t = Affine(*src.transform) if src.transform is not None else Affine.identity()
        return Grid(np.asarray(src.data), crs, t, src.nodata, name or "<raster>", list(src.band_names))
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

    path = os.fspath(src)
    if not os.path.isfile(path):
        raise MeasureError(f"{path}: file not found")
    from ..imagery.decode import TIFF_MAGICS, WHOLE_RASTER_MAX_DECODED_BYTES, ImageError, check_size, read_header

    with open(path, "rb") as f:
        tiff = f.read(4) in TIFF_MAGICS
    if tiff:  # every band (and page/overview) is read below: refuse band bombs from the header first
        try:
            check_size(read_header(path), 2**62, WHOLE_RASTER_MAX_DECODED_BYTES, path)
        except ImageError as e:
            raise MeasureError(e.detail) from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as ds:
                return Grid(ds.read(), ds.crs if ds.crs else None, ds.transform, ds.nodata, name or path,
                            [d or "" for d in ds.descriptions])
    except RasterioIOError as e:
        raise MeasureError(f"{path}: not a readable raster ({e})") from None


def supplied_classes(grid: Grid) -> ClassMap:
    if grid.count != 1:
        raise MeasureError(f"{grid.name}: a class raster has one band, this one has {grid.count}")
    band = grid.data[0]
    valid = np.ones(band.shape, bool)
    if np.issubdtype(band.dtype, np.floating):
        valid &= np.isfinite(band)
    if grid.nodata is not None and not np.isnan(grid.nodata):
        valid &= band != grid.nodata
    if np.issubdtype(band.dtype, np.floating):
        vals = band[valid]
        if vals.size and not np.array_equal(vals, np.round(vals)):
            raise MeasureError(f"{grid.name}: a class raster holds integer class codes; this one has fractional values")
        codes = np.where(valid, band, 0).astype(np.int64)
    elif np.issubdtype(band.dtype, np.integer):
        codes = band
    else:
        raise MeasureError(f"{grid.name}: unsupported data type {band.dtype} for a class raster")
    return ClassMap(codes, valid, grid.crs, grid.transform, grid.name, "supplied")


def derived_classes(grid: Grid, rules: IndexRules) -> ClassMap:
    if grid.count < 4:
        raise MeasureError(f"{grid.name}: {grid.count} band(s) — deriving classes needs blue, green, red and NIR bands; "
                           "pass --classes CLASSES.tif for a land-cover map")
    rules = rules.for_raster(grid.count, grid.band_names)
    try:
        codes = classify(grid.data, grid.nodata, rules)
    except MeasureError as e:
        raise MeasureError(f"{grid.name}: {e}") from None
    return ClassMap(codes, codes != 0, grid.crs, grid.transform, grid.name, "derived", grid.name, grid.count, rules=rules)


def load_date(image=None, classes=None, rules: IndexRules | None = None) -> ClassMap:
    """The class map of one date: ``classes`` if given, else ``image`` (single band = classes,
    multi-band = reflectance -> derived classes)."""
    if image is None and classes is None:
        raise MeasureError("nothing to measure: give an image or a class raster")
    img = read_grid(image) if image is not None else None
    if classes is not None:
        cm = supplied_classes(read_grid(classes))
        if img is not None:
            cm.image, cm.band_count = img.name, img.count
            if not same_grid(img, cm):
                cm.notes.append({"en": f"{img.name} and {cm.name} are on different grids; areas come from {cm.name}",
                                 "zh": f"{img.name} 与 {cm.name} 网格不同；面积按 {cm.name} 计算"})
        return cm
    if img.count == 1:
        return supplied_classes(img)
    return derived_classes(img, rules or IndexRules())


def same_grid(a, b) -> bool:
    if a.shape != b.shape:
        return False
    if (a.crs is None) != (b.crs is None) or (a.crs is not None and a.crs != b.crs):
        return False
    return a.transform.almost_equals(b.transform, precision=1e-9 * max(1.0, abs(a.transform.a)))


def reproject_onto(cm: ClassMap, target: ClassMap) -> ClassMap:
    """``cm`` resampled (nearest neighbour) onto the grid of ``target``; both need a CRS."""
    from rasterio.warp import Resampling, reproject

    for m in (cm, target):
        if m.crs is None:
            raise MeasureError(f"{m.name}: has no CRS, and the two dates are on different grids "
                               f"({cm.name} vs {target.name}); cannot align them")
    if cm.valid.any() and (cm.codes[cm.valid].min() <= SENTINEL or cm.codes[cm.valid].max() > np.iinfo(np.int32).max):
        raise MeasureError(f"{cm.name}: class codes outside the int32 range cannot be reprojected")
    src = np.where(cm.valid, cm.codes, SENTINEL).astype(np.int32)
    dst = np.full(target.shape, SENTINEL, np.int32)
    reproject(src, dst, src_transform=cm.transform, src_crs=cm.crs, src_nodata=SENTINEL,
              dst_transform=target.transform, dst_crs=target.crs, dst_nodata=SENTINEL, resampling=Resampling.nearest)
    valid = dst != SENTINEL
    out = ClassMap(np.where(valid, dst, 0), valid, target.crs, target.transform, cm.name, cm.source, cm.image,
                   cm.band_count, list(cm.notes), cm.rules)
    out.notes.append({
        "en": f"{cm.name} is on a different grid and was reprojected onto the grid of {target.name} "
              "(rasterio.warp.reproject, nearest neighbour); areas of both dates are measured on that grid",
        "zh": f"{cm.name} 与 {target.name} 网格不同，已用最近邻法（rasterio.warp.reproject）重投影到后者网格；两期面积均在该网格上量算",
    })
    return out
