"""Class rasters for measurement: read a supplied categorical GeoTIFF, or derive classes from a
multi-band image with :mod:`.indices`; align two dates onto one grid.

A single-band input is always a class raster; a multi-band input is reflectance (classes derived).
Nodata of a class raster = the raster's own nodata value plus the class table's nodata codes.
"""

from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
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
    scales: tuple = ()
    offsets: tuple = ()

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
    with open_measured(path) as ds:
        return Grid(
            ds.read(),
            ds.crs if ds.crs else None,
            ds.transform,
            ds.nodata,
            name or path,
            [d or "" for d in ds.descriptions],
            tuple(ds.scales),
            tuple(ds.offsets),
        )


@contextmanager
def open_measured(path: str):
    """``rasterio.open(path)`` as measuring reads it: no not-georeferenced warnings, GCP-only rasters
    refused ("warp it first"), unreadable files a :class:`MeasureError` naming the file."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as ds:
                if (err := gcp_only_error(path, ds)) is not None:
                    raise err
                yield ds
    except RasterioIOError as e:
        raise MeasureError(f"{path}: not a readable raster ({e})") from None


def supplied_classes(grid: Grid, class_table=None) -> ClassMap:
    if grid.count != 1:
        raise MeasureError(f"{grid.name}: a class raster has one band, this one has {grid.count}")
    band = grid.data[0]
    if np.issubdtype(band.dtype, np.floating) and class_table is None:
        raise continuous_error(grid.name, f"{band.dtype} values and no class table")
    valid = np.ones(band.shape, bool)
    if np.issubdtype(band.dtype, np.floating):
        valid &= np.isfinite(band)
    if grid.nodata is not None and not np.isnan(grid.nodata):
        valid &= band != grid.nodata
    if np.issubdtype(band.dtype, np.floating):
        vals = band[valid]
        if vals.size and not np.array_equal(vals, np.round(vals)):
            raise continuous_error(grid.name, "fractional values in a class raster")
        codes = np.where(valid, band, 0).astype(np.int64)
    elif np.issubdtype(band.dtype, np.integer):
        codes = band
    else:
        raise MeasureError(f"{grid.name}: unsupported data type {band.dtype} for a class raster")
    return ClassMap(codes, valid, grid.crs, grid.transform, grid.name, "supplied")


def derived_classes(grid: Grid, rules: IndexRules) -> ClassMap:
    if grid.count < 4:
        raise MeasureError(
            f"{grid.name}: {grid.count} band(s) — deriving classes needs blue, green, red and NIR bands; "
            "pass --classes CLASSES.tif for a land-cover map"
        )
    rules = rules.for_raster(grid.count, grid.band_names)
    try:
        codes = classify(grid.data, grid.nodata, rules, grid.scales, grid.offsets)
    except MeasureError as e:
        raise MeasureError(f"{grid.name}: {e}") from None
    return ClassMap(
        codes, codes != 0, grid.crs, grid.transform, grid.name, "derived", grid.name, grid.count, rules=rules
    )


def load_date(image=None, classes=None, rules: IndexRules | None = None, class_table=None) -> ClassMap:
    """The class map of one date: ``classes`` if given, else ``image`` (single band = classes,
    multi-band = reflectance -> derived classes)."""
    if image is None and classes is None:
        raise MeasureError("nothing to measure: give an image or a class raster")
    img = read_grid(image) if image is not None else None
    if classes is not None:
        cm = supplied_classes(read_grid(classes), class_table)
        if img is not None:
            cm.image, cm.band_count = img.name, img.count
            if not same_grid(img, cm):
                cm.notes.append(
                    {
                        "en": f"{img.name} and {cm.name} are on different grids; areas come from {cm.name}",
                        "zh": f"{img.name} 与 {cm.name} 网格不同；面积按 {cm.name} 计算",
                    }
                )
        return cm
    if img.count == 1:
        return supplied_classes(img, class_table)
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
            raise MeasureError(
                f"{m.name}: has no CRS, and the two dates are on different grids "
                f"({cm.name} vs {target.name}); cannot align them"
            )
    if cm.valid.any() and (cm.codes[cm.valid].min() <= SENTINEL or cm.codes[cm.valid].max() > np.iinfo(np.int32).max):
        raise MeasureError(f"{cm.name}: class codes outside the int32 range cannot be reprojected")
    src = np.where(cm.valid, cm.codes, SENTINEL).astype(np.int32)
    dst = np.full(target.shape, SENTINEL, np.int32)
    reproject(
        src,
        dst,
        src_transform=cm.transform,
        src_crs=cm.crs,
        src_nodata=SENTINEL,
        dst_transform=target.transform,
        dst_crs=target.crs,
        dst_nodata=SENTINEL,
        resampling=Resampling.nearest,
    )
    valid = dst != SENTINEL
    out = ClassMap(
        np.where(valid, dst, 0),
        valid,
        target.crs,
        target.transform,
        cm.name,
        cm.source,
        cm.image,
        cm.band_count,
        list(cm.notes),
        cm.rules,
    )
    out.notes.append(
        {
            "en": f"{cm.name} is on a different grid and was reprojected onto the grid of {target.name} "
            "(rasterio.warp.reproject, nearest neighbour); areas of both dates are measured on that grid",
            "zh": f"{cm.name} 与 {target.name} 网格不同，已用最近邻法（rasterio.warp.reproject）重投影到后者网格；两期面积均在该网格上量算",
        }
    )
    return out


# -- windowed reading (bounded memory for any scene size) -----------------------------------------

MAX_CLASSES = 256  # distinct codes a class raster may hold (WorldCover 11, CORINE 44, NLCD 20, uint8 maps ≤ 256)
GDAL_CACHE_BYTES = 128 * 1024**2  # GDAL block cache while reading windows (GDAL's default: 5 % of RAM)


def bounded_cache():
    """A ``rasterio.Env`` with GDAL's block cache capped at :data:`GDAL_CACHE_BYTES`."""
    import rasterio

    return rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES)


WINDOW_BYTES = 8 * 1024**2  # float64 working set of one window, per array (index maths keeps ~15 such arrays)


def gcp_only_error(path, ds) -> MeasureError | None:
    """A raster georeferenced only by ground control points (no geotransform) must be warped first."""
    try:
        gcps, gcp_crs = ds.gcps
    except Exception:  # noqa: BLE001 — drivers without GCP support
        return None
    if ds.crs is None and gcps:
        target = gcp_crs.to_string() if gcp_crs else "EPSG:4326"
        return MeasureError(
            f"{path}: georeferenced only by {len(gcps)} ground control points (GCPs), without a geotransform — "
            f"warp it first, e.g. gdalwarp -t_srs {target} -r near {os.path.basename(str(path))} warped.tif / "
            "该影像仅有地面控制点，请先用 gdalwarp 校正"
        )
    return None


def continuous_error(name, why: str) -> MeasureError:
    return MeasureError(
        f"{name}: {why} — this looks like a continuous raster (DEM, reflectance band, index), not a land-cover "
        "class map; give a class raster with integer codes and its table (--class-table worldcover / "
        "dynamicworld / a JSON table), or a multi-band image to derive classes / 该栅格似为连续值而非地类编码，"
        "请提供整数地类栅格及其分类表"
    )


@dataclass
class ClassSource:
    """One date's classes read window by window: a supplied class raster, or classes derived from a
    multi-band reflectance image (scale/offset tags applied). Same rules as :func:`supplied_classes`
    and :func:`derived_classes`, which read the whole array."""

    path: str
    name: str
    crs: object
    transform: object
    shape: tuple[int, int]
    count: int
    dtype: str
    nodata: float | None
    source: str  # "supplied" / "derived"
    image: str | None = None
    band_count: int | None = None
    rules: IndexRules | None = None
    scales: tuple = ()
    offsets: tuple = ()
    notes: list[dict] = field(default_factory=list)
    block_rows: int = 1
    _ds: object = field(default=None, repr=False)

    def window_rows(self) -> int:
        """Rows per window: one window's float64 arrays stay near :data:`WINDOW_BYTES`; a whole number of
        the file's block rows, so each compressed tile is decoded once."""
        rows = max(1, WINDOW_BYTES // (8 * max(1, self.shape[1])))
        b = max(1, self.block_rows)
        return rows // b * b if b <= rows else rows  # smaller windows: the block cache keeps the tiles

    def read(self, r0: int, r1: int, c0: int, c1: int) -> tuple[np.ndarray, np.ndarray]:
        """(codes int64, valid bool) of rows r0:r1, columns c0:c1."""
        from rasterio.windows import Window

        if self._ds is None:
            import rasterio

            self._ds = rasterio.open(self.path)
        win = Window(c0, r0, c1 - c0, r1 - r0)
        if self.source == "derived":  # only the bands the rules use are read (a 2500-band file reads ≤ 5)
            used = sorted(set(self.rules.bands.values()))
            data = self._ds.read(used, window=win)
            local = IndexRules(
                {k: used.index(v) + 1 for k, v in self.rules.bands.items()},
                self.rules.thresholds,
                self.rules.offset,
                True,
            )
            pick = [(self.scales[v - 1] if len(self.scales) >= v else None) for v in used]
            off = [(self.offsets[v - 1] if len(self.offsets) >= v else None) for v in used]
            codes = classify(data, self.nodata, local, pick, off)
            return codes.astype(np.int64), codes != 0
        data = self._ds.read(window=win)
        band = data[0]
        valid = np.ones(band.shape, bool)
        if np.issubdtype(band.dtype, np.floating):
            valid &= np.isfinite(band)
            if self.nodata is not None and not np.isnan(self.nodata):
                valid &= band != self.nodata
            vals = band[valid]
            if vals.size and not np.array_equal(vals, np.round(vals)):
                raise continuous_error(self.name, "fractional values in a class raster")
            return np.where(valid, band, 0).astype(np.int64), valid
        if self.nodata is not None and not np.isnan(self.nodata):
            valid &= band != self.nodata
        return band.astype(np.int64), valid

    def close(self) -> None:
        if self._ds is not None:
            self._ds.close()
            self._ds = None


def _open_meta(path) -> dict:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MeasureError(f"{path}: file not found")
    with open_measured(path) as ds:
        return {
            "path": path,
            "name": path,
            "crs": ds.crs if ds.crs else None,
            "transform": ds.transform,
            "shape": (ds.height, ds.width),
            "count": ds.count,
            "dtype": ds.dtypes[0],
            "nodata": ds.nodata,
            "band_names": [d or "" for d in ds.descriptions],
            "scales": tuple(ds.scales),
            "offsets": tuple(ds.offsets),
            "block_rows": ds.block_shapes[0][0] if ds.block_shapes else 1,
        }


def raster_pixels(path) -> int:
    """Height × width of a raster file (header only)."""
    h, w = _open_meta(path)["shape"]
    return h * w


def _supplied_source(meta: dict, class_table=None) -> ClassSource:
    if meta["count"] != 1:
        raise MeasureError(f"{meta['name']}: a class raster has one band, this one has {meta['count']}")
    dt = np.dtype(meta["dtype"])
    if np.issubdtype(dt, np.floating) and class_table is None:
        raise continuous_error(meta["name"], f"{dt} values and no class table")
    if not (np.issubdtype(dt, np.floating) or np.issubdtype(dt, np.integer)):
        raise MeasureError(f"{meta['name']}: unsupported data type {dt} for a class raster")
    return ClassSource(
        meta["path"],
        meta["name"],
        meta["crs"],
        meta["transform"],
        meta["shape"],
        1,
        meta["dtype"],
        meta["nodata"],
        "supplied",
        block_rows=meta["block_rows"],
    )


def open_date(image=None, classes=None, rules: IndexRules | None = None, class_table=None) -> ClassSource:
    """The windowed twin of :func:`load_date` (paths only): nothing but headers is read here."""
    if image is None and classes is None:
        raise MeasureError("nothing to measure: give an image or a class raster")
    img = _open_meta(image) if image is not None else None
    if classes is not None:
        src = _supplied_source(_open_meta(classes), class_table)
        if img is not None:
            src.image, src.band_count = img["name"], img["count"]
            if not same_grid(_Meta(img), src):
                src.notes.append(
                    {
                        "en": f"{img['name']} and {src.name} are on different grids; areas come from {src.name}",
                        "zh": f"{img['name']} 与 {src.name} 网格不同；面积按 {src.name} 计算",
                    }
                )
        return src
    if img["count"] == 1:
        return _supplied_source(img, class_table)
    if img["count"] < 4:
        raise MeasureError(
            f"{img['name']}: {img['count']} band(s) — deriving classes needs blue, green, red and NIR bands; "
            "pass --classes CLASSES.tif for a land-cover map"
        )
    r = (rules or IndexRules()).for_raster(img["count"], img["band_names"])
    need = max(r.bands.values())
    if need > img["count"]:
        raise MeasureError(f"{img['name']}: band {need} is configured but the raster has only {img['count']} band(s)")
    return ClassSource(
        img["path"],
        img["name"],
        img["crs"],
        img["transform"],
        img["shape"],
        img["count"],
        img["dtype"],
        img["nodata"],
        "derived",
        img["name"],
        img["count"],
        r,
        img["scales"],
        img["offsets"],
        block_rows=img["block_rows"],
    )


class _Meta:
    def __init__(self, meta: dict):
        self.shape, self.crs, self.transform = meta["shape"], meta["crs"], meta["transform"]
