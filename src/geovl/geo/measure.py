"""Measure land-cover areas on georeferenced rasters: one date, or two dates with change.

Python API (used by ``geovl measure`` and meant for ``geovl ask`` / ``geovl map``)::

    from geovl.geo.measure import measure_raster
    m = measure_raster("after.tif", classes="after_classes.tif", before_classes="before_classes.tif",
                       class_table="synth", aoi="aoi.geojson")
    m.current.get("cropland").km2        # area of a class (by key, code, en or zh name)
    m.change.net_m2()                    # {code: after - before m²}
    m.gain_loss("cropland")              # {"gain_m2": …, "loss_m2": …, "net_m2": …}
    m.to_json(); m.context_text("zh"); m.geojson(wgs84=True)

Inputs are paths or :class:`geovl.imagery.geotiff.Raster` objects. How pixel areas are computed:
:mod:`.geodesy`; class rasters and derived classes: :mod:`.landcover` / :mod:`.indices`;
AOI: :mod:`.aoi`; change: :mod:`.change`; text forms: :mod:`.report`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import report
from .aoi import AOI, load_aoi
from .change import Change, change_matrix, find_patches, patches_geojson
from .errors import MeasureError
from .geodesy import PixelAreas, pixel_areas
from .indices import IndexRules
from .landcover import (
    MAX_CLASSES,
    ClassMap,
    ClassSource,
    bounded_cache,
    continuous_error,
    load_date,
    open_date,
    raster_pixels,
    reproject_onto,
    same_grid,
)
from .tables import ClassTable, auto_table, load_table
from .units import all_units

FULL_MAPS_MAX_PIXELS = 12_000_000  # two dates: whole-grid class maps (for change patches) are kept up to this size
FULL_MAPS_ONE_DATE_MAX_PIXELS = 4_000_000  # one date: class maps kept (Measurement.maps) up to this size
WHOLE_ARRAY_MAX_PIXELS = 50_000_000  # in-memory inputs and two dates on different grids are measured as whole arrays
_NONE = np.iinfo(np.int64).min  # "not valid" in the per-window code keys


@dataclass
class ClassArea:
    code: int
    key: str
    en: str
    zh: str
    pixels: int
    m2: float
    share: float  # of the date's valid (measured) area

    @property
    def km2(self) -> float:
        return all_units(self.m2)["km2"]

    @property
    def ha(self) -> float:
        return all_units(self.m2)["ha"]

    @property
    def mu(self) -> float:
        return all_units(self.m2)["mu"]

    def to_json(self) -> dict:
        return {
            "code": self.code,
            "key": self.key,
            "en": self.en,
            "zh": self.zh,
            "pixels": self.pixels,
            **all_units(self.m2),
            "share": self.share,
        }


@dataclass
class DateMeasure:
    label: str  # "image" (one date), "before", "after"
    classes_path: str
    image_path: str | None
    source: str  # "supplied" / "derived"
    valid_pixels: int
    nodata_pixels: int  # inside the AOI (or the whole grid)
    valid_m2: float
    classes: list[ClassArea]

    def get(self, name) -> ClassArea | None:
        """A class by code, key, English or Chinese name (None when unknown)."""
        for c in self.classes:
            if name in (c.code, c.key, c.en, c.zh) or str(name) == str(c.code):
                return c
        return None

    def to_json(self) -> dict:
        return {
            "label": self.label,
            "classes_path": self.classes_path,
            "image_path": self.image_path,
            "source": self.source,
            "valid_pixels": self.valid_pixels,
            "nodata_pixels": self.nodata_pixels,
            "valid_area": all_units(self.valid_m2),
            "classes": [c.to_json() for c in self.classes],
        }


@dataclass
class Measurement:
    current: DateMeasure  # the single date, or the later date
    before: DateMeasure | None
    change: Change | None
    table: ClassTable
    areas: PixelAreas
    crs: object  # rasterio CRS or None
    transform: object  # Affine
    shape: tuple[int, int]
    aoi: AOI | None = None
    rules: IndexRules | None = None
    notes: list[dict] = field(default_factory=list)
    maps: dict = field(default_factory=dict, repr=False)  # label -> ClassMap on the measured grid (small grids only)
    sources: dict = field(default_factory=dict, repr=False)  # label -> ClassSource (windowed measuring)

    # -- figures ---------------------------------------------------------------------------
    def codes(self) -> list[int]:
        return [c.code for c in self.current.classes]

    def gain_loss(self, name) -> dict | None:
        """Gain (other → class), loss (class → other) and net area of a class between the dates."""
        if self.change is None:
            return None
        info = self.current.get(name)
        if info is None:
            return None
        i = self.change.codes.index(info.code)
        m = self.change.m2
        gain = float(m[:, i].sum() - m[i, i])
        loss = float(m[i, :].sum() - m[i, i])
        px = self.change.pixels
        return {
            "code": info.code,
            "key": info.key,
            "en": info.en,
            "zh": info.zh,
            "gain_pixels": int(px[:, i].sum() - px[i, i]),
            "loss_pixels": int(px[i, :].sum() - px[i, i]),
            "gain_m2": gain,
            "loss_m2": loss,
            "net_m2": gain - loss,
            "before_m2": float(m[i, :].sum()),
            "after_m2": float(m[:, i].sum()),
        }

    def geojson(self, wgs84: bool = False) -> dict | None:
        if self.change is None:
            return None
        if wgs84 and self.crs is None:
            raise MeasureError("EPSG:4326 GeoJSON needs a raster with a CRS")
        return patches_geojson(self.change, self.table, self.crs, wgs84)

    # -- output ----------------------------------------------------------------------------
    def crs_text(self) -> str | None:
        if self.crs is None:
            return None
        epsg = self.crs.to_epsg()
        return f"EPSG:{epsg}" if epsg else self.crs.to_wkt()

    def to_json(self) -> dict:
        return report.to_json(self)

    def context_text(self, lang: str = "zh") -> str:
        return report.context_text(self, lang)

    def text(self, top: int = 10) -> str:
        return report.text_table(self, top)

    def write_class_rasters(self, out_dir) -> list[str]:
        """Write derived class maps (``<label>_classes_derived.tif``, uint8, nodata 0) for inspection in a GIS."""
        from pathlib import Path

        from ..imagery.geotiff import Raster, write_raster

        written = []
        for label, src in self.sources.items():
            if src.source == "derived":
                path = Path(out_dir) / f"{label}_classes_derived.tif"
                _write_derived(src, path, self.crs, self.transform)
                written.append(str(path))
        for label, cm in self.maps.items():
            if cm.source != "derived" or label in self.sources:
                continue
            t = self.transform
            path = Path(out_dir) / f"{label}_classes_derived.tif"
            data = np.where(cm.valid, cm.codes, 0).astype(np.uint8)[None]
            write_raster(
                path,
                Raster(
                    data,
                    self.crs.to_wkt() if self.crs else None,
                    (t.a, t.b, t.c, t.d, t.e, t.f),
                    0,
                    ["derived land-cover class"],
                ),
            )
            written.append(str(path))
        return written


def _index(cm: ClassMap, valid: np.ndarray, codes: list[int]) -> np.ndarray:
    """(H, W) int64 index of each valid pixel's code in ``codes``; −1 elsewhere."""
    idx = np.full(cm.shape, -1, np.int64)
    idx[valid] = np.searchsorted(np.asarray(codes, dtype=np.int64), cm.codes[valid].astype(np.int64))
    return idx


def _date(
    label: str,
    cm: ClassMap,
    valid: np.ndarray,
    region: np.ndarray,
    idx: np.ndarray,
    codes: list[int],
    table: ClassTable,
    areas: PixelAreas,
) -> DateMeasure:
    k = len(codes)
    pixels = np.bincount(idx[idx >= 0], minlength=k)
    m2 = areas.sums(idx, k)
    total, classes = _class_areas(codes, table, pixels, m2)
    return DateMeasure(
        label, cm.name, cm.image, cm.source, int(valid.sum()), int((region & ~valid).sum()), total, classes
    )


def _class_areas(codes: list[int], table: ClassTable, pixels, m2) -> tuple[float, list[ClassArea]]:
    """(total m², one ClassArea per code) from per-code pixel counts and areas (same order as ``codes``)."""
    total = float(m2.sum())
    classes = []
    for i, code in enumerate(codes):
        info = table.info(code)
        classes.append(
            ClassArea(
                code, info.key, info.en, info.zh, int(pixels[i]), float(m2[i]), float(m2[i] / total) if total else 0.0
            )
        )
    return total, classes


def measure_raster(
    image=None,
    classes=None,
    before=None,
    before_classes=None,
    class_table=None,
    aoi=None,
    aoi_crs: str | None = None,
    pixel_size=None,
    rules: IndexRules | None = None,
    area: str = "auto",
    patches: bool = True,
    top: int | None = None,
    min_patch_pixels: int = 1,
    progress: bool = False,
    window: tuple[int, int] | None = None,
) -> Measurement:
    """Measure class areas of ``image`` (or ``classes``), and change from ``before``/``before_classes``.

    ``class_table``: a :class:`ClassTable`, a built-in name or a JSON path (default: auto for supplied
    class rasters, the derived table for derived classes). ``aoi``: a GeoJSON path. ``area``:
    auto / planar / ellipsoidal (:mod:`.geodesy`). ``top``/``min_patch_pixels`` limit the patches.

    Files on one grid are read window by window (``window`` = (rows, cols); default: full-width strips
    of about :data:`~.landcover.WINDOW_BYTES`), so memory stays bounded for any scene size; counts and
    areas accumulate per window. In-memory rasters and two dates on different grids (reprojected) are
    measured as whole arrays, up to :data:`WHOLE_ARRAY_MAX_PIXELS`.
    """
    two = before is not None or before_classes is not None
    with _stages(progress, (3 + int(patches)) if two else 2) as step:
        step("read")
        from ..imagery.geotiff import Raster

        inputs = [x for x in (image, classes, before, before_classes) if x is not None]
        if not any(isinstance(x, Raster) for x in inputs):
            after_src = open_date(image, classes, rules, class_table)
            before_src = open_date(before, before_classes, rules, class_table) if two else None
            if before_src is None or same_grid(before_src, after_src):
                try:
                    with bounded_cache():
                        return _measure_windowed(
                            after_src,
                            before_src,
                            class_table,
                            aoi,
                            aoi_crs,
                            pixel_size,
                            area,
                            patches,
                            top,
                            min_patch_pixels,
                            step,
                            window,
                        )
                finally:
                    for s_ in (after_src, before_src):
                        if s_ is not None:
                            s_.close()
        _whole_array_limit(inputs)
        after_cm = load_date(image, classes, rules, class_table)
        before_cm = load_date(before, before_classes, rules, class_table) if two else None
        return _measure(
            after_cm, before_cm, class_table, aoi, aoi_crs, pixel_size, area, patches, top, min_patch_pixels, step
        )


def _measure(
    after_cm, before_cm, class_table, aoi, aoi_crs, pixel_size, area, patches, top, min_patch_pixels, step
) -> Measurement:
    two = before_cm is not None
    notes: list[dict] = list(after_cm.notes)
    if before_cm is not None:
        _check_pair(before_cm, after_cm)
        if before_cm.rules and after_cm.rules and before_cm.rules.bands != after_cm.rules.bands:
            notes.append(
                {
                    "en": f"band roles differ between the dates: before {before_cm.rules.bands}, after {after_cm.rules.bands}",
                    "zh": f"两期波段对应不同：前 {before_cm.rules.bands}，后 {after_cm.rules.bands}",
                }
            )
        if not same_grid(before_cm, after_cm):
            before_cm = reproject_onto(before_cm, after_cm)
        notes += before_cm.notes

    table = _table(class_table, after_cm, before_cm)
    notes += [{"en": n, "zh": n} for n in table.notes]
    maps = [m for m in (before_cm, after_cm) if m is not None]
    valids = []
    for m in maps:
        v = m.valid & ~np.isin(m.codes, np.asarray(table.nodata, dtype=np.int64)) if table.nodata else m.valid
        if not v.any():
            raise MeasureError(f"{m.name}: every pixel is nodata — nothing to measure")
        valids.append(v)

    step("areas")
    areas = pixel_areas(after_cm.crs, after_cm.transform, after_cm.shape, pixel_size, area, after_cm.name)
    notes += areas.notes
    region = np.ones(after_cm.shape, bool)
    aoi_obj = None
    if aoi is not None:
        aoi_obj = load_aoi(aoi, after_cm.crs, after_cm.transform, after_cm.shape, aoi_crs, after_cm.name)
        region = aoi_obj.mask
        if areas.constant is not None:
            aoi_obj.area_m2 = areas.total(region)
        else:  # NaN-safe: off-projection pixels (no ground area) may lie in the AOI as nodata
            aoi_obj.area_m2 = float(
                np.nansum(np.broadcast_to(areas.window(0, region.shape[0], 0, region.shape[1]), region.shape)[region])
            )
        if aoi_obj.partly_outside:
            notes.append(
                {
                    "en": "part of the AOI lies outside the raster; only the overlap is measured",
                    "zh": "AOI 有部分位于影像范围之外，仅量算重叠部分",
                }
            )
        valids = [v & region for v in valids]
        for m, v in zip(maps, valids):
            if not v.any():
                raise MeasureError(f"{aoi}: every pixel of {m.name} inside the AOI is nodata — nothing to measure")

    present = set()
    for m, v in zip(maps, valids):
        present |= {int(c) for c in np.unique(m.codes[v])}
        if m.source == "supplied" and len(present) > MAX_CLASSES:
            raise continuous_error(m.name, f"more than {MAX_CLASSES} distinct values")
    codes = sorted(present | set(table.classes))
    idxs = [_index(m, v, codes) for m, v in zip(maps, valids)]
    labels = ["before", "after"] if two else ["image"]
    dates = [_date(lab, m, v, region, ix, codes, table, areas) for lab, m, v, ix in zip(labels, maps, valids, idxs)]

    change = None
    if two:
        step("change")
        change = change_matrix(idxs[0], idxs[1], codes, areas)
        if patches:
            step("patches")
            change.patches, change.patches_total = find_patches(
                idxs[0], idxs[1], codes, areas, after_cm.transform, after_cm.crs, top, min_patch_pixels
            )
        only_one = int(((idxs[0] >= 0) ^ (idxs[1] >= 0)).sum())
        if only_one:
            notes.append(
                {
                    "en": f"{only_one} pixels are valid on one date only and are left out of the change figures",
                    "zh": f"有 {only_one} 个像元仅在一个时相有效，未计入变化统计",
                }
            )
    step("done")
    return Measurement(
        dates[-1],
        dates[0] if two else None,
        change,
        table,
        areas,
        after_cm.crs,
        after_cm.transform,
        after_cm.shape,
        aoi_obj,
        after_cm.rules,
        notes,
        dict(zip(labels, maps)),
    )


class _stages:
    """A tqdm bar over the stages of one measurement (stderr; silent unless ``progress``)."""

    def __init__(self, progress: bool, total: int):
        self.progress, self.total, self.bar = progress, total, None

    def __enter__(self):
        if self.progress:
            import sys

            from tqdm import tqdm

            self.bar = tqdm(total=self.total, desc="measure", unit="step", file=sys.stderr)
        return self

    def __call__(self, name: str) -> None:
        if self.bar is not None:
            if self.bar.n or name != "read":
                self.bar.update(1)
            self.bar.set_postfix_str(name)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()
        return False


def _whole_array_limit(inputs) -> None:
    from ..imagery.geotiff import Raster

    for x in inputs:
        px = int(x.height) * int(x.width) if isinstance(x, Raster) else raster_pixels(x)
        if px > WHOLE_ARRAY_MAX_PIXELS:
            name = "<in-memory raster>" if isinstance(x, Raster) else str(x)
            raise MeasureError(
                f"{name}: {px:,} pixels — two dates on different grids (or in-memory rasters) are measured "
                f"as whole arrays, up to {WHOLE_ARRAY_MAX_PIXELS:,} pixels; put both dates on one grid first "
                "(gdalwarp -tr XRES YRES -te XMIN YMIN XMAX YMAX -r near before.tif before_on_grid.tif), "
                "which is measured window by window / 影像过大：请先用 gdalwarp 将两期重采样到同一网格"
            )


def _factorize(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(values, index of each element in values) of a 1-D int64 array; values may include absent ones.
    Codes within a span of 65536 (uint8/uint16 maps, derived classes) are indexed by subtraction, others by sorting."""
    real = x != _NONE
    if real.any():
        lo, hi = int(x[real].min()), int(x[real].max())
        if hi - lo < 65536:
            values = np.r_[np.arange(lo, hi + 1, dtype=np.int64), _NONE]
            return values, np.where(real, x - lo, hi - lo + 1)
    return np.unique(x, return_inverse=True)


def _windows(h: int, w: int, rows: int, cols: int):
    for r0 in range(0, h, rows):
        for c0 in range(0, w, cols):
            yield r0, min(h, r0 + rows), c0, min(w, c0 + cols)


def _measure_windowed(
    after: ClassSource,
    before: ClassSource | None,
    class_table,
    aoi,
    aoi_crs,
    pixel_size,
    area,
    patches,
    top,
    min_patch_pixels,
    step,
    window,
) -> Measurement:
    """Class counts, areas and the change matrix accumulated window by window (same figures as :func:`_measure`)."""
    two = before is not None
    notes: list[dict] = list(after.notes)
    if two:
        _check_pair(before, after)
        if before.rules and after.rules and before.rules.bands != after.rules.bands:
            notes.append(
                {
                    "en": f"band roles differ between the dates: before {before.rules.bands}, after {after.rules.bands}",
                    "zh": f"两期波段对应不同：前 {before.rules.bands}，后 {after.rules.bands}",
                }
            )
        notes += before.notes
    srcs = [s for s in (before, after) if s is not None]
    labels = ["before", "after"] if two else ["image"]
    fixed = class_table is not None or after.source == "derived"
    table = _table(class_table, after, before) if fixed else None

    step("areas")
    areas = pixel_areas(after.crs, after.transform, after.shape, pixel_size, area, after.name)
    notes += areas.notes
    aoi_obj = None
    if aoi is not None:
        aoi_obj = load_aoi(aoi, after.crs, after.transform, after.shape, aoi_crs, after.name, with_mask=False)
        if aoi_obj.partly_outside:
            notes.append(
                {
                    "en": "part of the AOI lies outside the raster; only the overlap is measured",
                    "zh": "AOI 有部分位于影像范围之外，仅量算重叠部分",
                }
            )
    h, w = after.shape
    rows, cols = window if window is not None else (min(s.window_rows() for s in srcs), w)
    if rows < 1 or cols < 1:
        raise MeasureError(f"window must be positive (rows, cols), got {window}")
    keep_full = h * w <= (FULL_MAPS_MAX_PIXELS if two else FULL_MAPS_ONE_DATE_MAX_PIXELS)
    full = [(np.zeros((h, w), np.int64), np.zeros((h, w), bool)) for _ in srcs] if keep_full else []
    aoi_full = np.zeros((h, w), bool) if keep_full and aoi_obj is not None else None
    weighted = areas.constant is None
    px_acc: dict[tuple, int] = {}
    m2_acc: dict[tuple, float] = {}
    region_px, region_m2 = 0, 0.0
    seen: set[int] = set()
    for r0, r1, c0, c1 in _windows(h, w, rows, cols):
        reads = [s.read(r0, r1, c0, c1) for s in srcs]
        wts = areas.window(r0, r1, c0, c1)
        wts = np.broadcast_to(wts, (r1 - r0, c1 - c0)) if wts is not None else None
        region = aoi_obj.window_mask(r0, r1, c0, c1) if aoi_obj is not None else None
        if region is None:
            region_px += (r1 - r0) * (c1 - c0)
            region_m2 += float(np.nansum(wts)) if weighted else 0.0
        else:
            region_px += int(region.sum())
            region_m2 += float(np.nansum(wts[region])) if weighted else 0.0
            if aoi_full is not None:
                aoi_full[r0:r1, c0:c1] = region
        sel = None
        keys = []
        for d, (codes, valid) in enumerate(reads):
            if keep_full:
                full[d][0][r0:r1, c0:c1], full[d][1][r0:r1, c0:c1] = codes, valid
            v = valid & region if region is not None else valid
            sel = v if sel is None else sel | v
            keys.append(np.where(v, codes, _NONE))
        if not sel.any():
            continue
        parts = [_factorize(k[sel]) for k in keys]
        sizes = [len(u) for u, _ in parts]
        pair = parts[0][1].astype(np.int64).ravel()
        for u, inv in parts[1:]:
            pair = pair * len(u) + inv.ravel()
        n = int(np.prod(sizes))
        combos = None
        if n > 4 * 1024**2:  # many code pairs: index the pairs that occur
            combos, pair = np.unique(pair, return_inverse=True)
            n = len(combos)
        cnt = np.bincount(pair, minlength=n)
        if weighted:
            ws = wts[sel]
            areas.check_finite(ws)
        sm = np.bincount(pair, weights=ws, minlength=n) if weighted else None
        for j in np.flatnonzero(cnt):
            ix = np.unravel_index(int(combos[j]) if combos is not None else j, sizes)
            key = tuple(int(parts[d][0][ix[d]]) for d in range(len(parts)))
            px_acc[key] = px_acc.get(key, 0) + int(cnt[j])
            if weighted:
                m2_acc[key] = m2_acc.get(key, 0.0) + float(sm[j])
            for d, s in enumerate(srcs):
                if s.source == "supplied" and key[d] != _NONE:
                    seen.add(key[d])
                    if len(seen) > MAX_CLASSES:
                        raise continuous_error(s.name, f"more than {MAX_CLASSES} distinct values")
    if aoi_obj is not None:
        aoi_obj.pixels = region_px
        aoi_obj.area_m2 = float(areas.area_of_counts(np.array([region_px]))[0]) if not weighted else region_m2
        if region_px == 0:
            raise MeasureError(f"{aoi}: the AOI does not cover any pixel centre of {after.name} (outside the raster?)")

    if table is None:
        table = auto_table({c for key in px_acc for c in key if c != _NONE}, after.name)
    notes += [{"en": n, "zh": n} for n in table.notes]
    nod = set(table.nodata)

    def ok(c):
        return c != _NONE and c not in nod

    codes = sorted({c for key in px_acc for c in key if ok(c)} | set(table.classes))
    pos = {c: i for i, c in enumerate(codes)}
    k = len(codes)
    dates = []
    for d, (lab, s) in enumerate(zip(labels, srcs)):
        px = np.zeros(k, np.int64)
        m2 = np.zeros(k, np.float64)
        for key, n in px_acc.items():
            if ok(key[d]):
                px[pos[key[d]]] += n
                if weighted:
                    m2[pos[key[d]]] += m2_acc[key]
        if not weighted:
            m2 = areas.area_of_counts(px)
        valid_px = int(px.sum())
        if valid_px == 0:
            where = " inside the AOI" if aoi_obj is not None else ""
            raise MeasureError(f"{s.name}: every pixel{where} is nodata — nothing to measure")
        total, classes = _class_areas(codes, table, px, m2)
        dates.append(DateMeasure(lab, s.name, s.image, s.source, valid_px, region_px - valid_px, total, classes))

    change = None
    maps = {}
    if keep_full:
        maps = {
            lab: ClassMap(
                c, v, after.crs, after.transform, s.name, s.source, s.image, s.band_count, list(s.notes), s.rules
            )
            for lab, s, (c, v) in zip(labels, srcs, full)
        }
    if two:
        step("change")
        mpx = np.zeros((k, k), np.int64)
        mm2 = np.zeros((k, k), np.float64)
        only_one = 0
        for key, n in px_acc.items():
            a, b = ok(key[0]), ok(key[1])
            if a and b:
                mpx[pos[key[0]], pos[key[1]]] += n
                if weighted:
                    mm2[pos[key[0]], pos[key[1]]] += m2_acc[key]
            elif a or b:
                only_one += n
        if not weighted:
            mm2 = areas.area_of_counts(mpx)
        change = Change(list(codes), mpx, mm2, int(mpx.sum()))
        if patches:
            step("patches")
            if keep_full:
                idxs = []
                for cm in maps.values():
                    v = cm.valid & ~np.isin(cm.codes, np.asarray(sorted(nod), dtype=np.int64)) if nod else cm.valid
                    if aoi_full is not None:
                        v &= aoi_full
                    idxs.append(_index(cm, v, codes))
                change.patches, change.patches_total = find_patches(
                    idxs[0], idxs[1], codes, areas, after.transform, after.crs, top, min_patch_pixels
                )
            else:
                notes.append(
                    {
                        "en": f"change patches (GeoJSON) are not computed above {FULL_MAPS_MAX_PIXELS:,} pixels "
                        f"({h * w:,} here): clip with --aoi or crop the rasters for patches",
                        "zh": f"像元数超过 {FULL_MAPS_MAX_PIXELS:,}（本例 {h * w:,}），未提取变化图斑；请用 --aoi 或裁剪影像",
                    }
                )
        if only_one:
            notes.append(
                {
                    "en": f"{only_one} pixels are valid on one date only and are left out of the change figures",
                    "zh": f"有 {only_one} 个像元仅在一个时相有效，未计入变化统计",
                }
            )
    step("done")
    return Measurement(
        dates[-1],
        dates[0] if two else None,
        change,
        table,
        areas,
        after.crs,
        after.transform,
        after.shape,
        aoi_obj,
        after.rules,
        notes,
        maps,
        dict(zip(labels, srcs)),
    )


def _write_derived(src: ClassSource, path, crs, transform) -> None:
    """A derived class map written window by window (uint8 GeoTIFF, tiled, deflate, nodata 0)."""
    import rasterio
    from rasterio.windows import Window

    h, w = src.shape
    profile = {
        "driver": "GTiff",
        "width": w,
        "height": h,
        "count": 1,
        "dtype": "uint8",
        "nodata": 0,
        "crs": crs,
        "transform": transform,
        "compress": "deflate",
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
    }
    rows = max(256, (src.window_rows() // 256) * 256)
    with bounded_cache(), rasterio.open(path, "w", **profile) as dst:
        for r0, r1, c0, c1 in _windows(h, w, rows, w):
            codes, valid = src.read(r0, r1, c0, c1)
            dst.write(np.where(valid, codes, 0).astype(np.uint8), 1, window=Window(c0, r0, c1 - c0, r1 - r0))
        dst.set_band_description(1, "derived land-cover class")
        src.close()


def _check_pair(before: ClassMap, after: ClassMap) -> None:
    if before.source != after.source:
        raise MeasureError(
            f"{before.name} ({before.source} classes) and {after.name} ({after.source} classes): both dates "
            "must use the same kind of classes — give --classes and --before-classes, or neither"
        )
    if before.band_count and after.band_count and before.band_count != after.band_count:
        raise MeasureError(
            f"{before.image} has {before.band_count} bands but {after.image} has {after.band_count}: "
            "the two dates must have the same bands"
        )


def _table(spec, after: ClassMap, before: ClassMap | None) -> ClassTable:
    if isinstance(spec, ClassTable):
        return spec
    if after.source == "derived":
        if spec is not None and str(spec) != "derived":
            raise MeasureError(
                "--class-table applies to supplied class rasters; derived classes use the built-in 'derived' table"
            )
        return load_table("derived")
    if spec is not None:
        return load_table(spec)
    codes = set()
    for m in (after, before):
        if m is not None:
            codes |= {int(c) for c in np.unique(m.codes[m.valid])}
    return auto_table(codes, after.name)
