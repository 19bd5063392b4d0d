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
from .landcover import ClassMap, load_date, reproject_onto, same_grid
from .tables import ClassTable, auto_table, load_table
from .units import all_units


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
        return {"code": self.code, "key": self.key, "en": self.en, "zh": self.zh, "pixels": self.pixels,
                **all_units(self.m2), "share": self.share}


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
        return {"label": self.label, "classes_path": self.classes_path, "image_path": self.image_path, "source": self.source,
                "valid_pixels": self.valid_pixels, "nodata_pixels": self.nodata_pixels,
                "valid_area": all_units(self.valid_m2), "classes": [c.to_json() for c in self.classes]}


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
    maps: dict = field(default_factory=dict, repr=False)  # label -> ClassMap on the measured grid

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
        return {"code": info.code, "key": info.key, "en": info.en, "zh": info.zh,
                "gain_pixels": int(px[:, i].sum() - px[i, i]), "loss_pixels": int(px[i, :].sum() - px[i, i]),
                "gain_m2": gain, "loss_m2": loss, "net_m2": gain - loss,
                "before_m2": float(m[i, :].sum()), "after_m2": float(m[:, i].sum())}

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
        for label, cm in self.maps.items():
            if cm.source != "derived":
                continue
            t = self.transform
            path = Path(out_dir) / f"{label}_classes_derived.tif"
            data = np.where(cm.valid, cm.codes, 0).astype(np.uint8)[None]
            write_raster(path, Raster(data, self.crs.to_wkt() if self.crs else None, (t.a, t.b, t.c, t.d, t.e, t.f), 0,
                                      ["derived land-cover class"]))
            written.append(str(path))
        return written


def _index(cm: ClassMap, valid: np.ndarray, codes: list[int]) -> np.ndarray:
    """(H, W) int64 index of each valid pixel's code in ``codes``; −1 elsewhere."""
    idx = np.full(cm.shape, -1, np.int64)
    idx[valid] = np.searchsorted(np.asarray(codes, dtype=np.int64), cm.codes[valid].astype(np.int64))
    return idx


def _date(label: str, cm: ClassMap, valid: np.ndarray, region: np.ndarray, idx: np.ndarray, codes: list[int],
          table: ClassTable, areas: PixelAreas) -> DateMeasure:
    k = len(codes)
    pixels = np.bincount(idx[idx >= 0], minlength=k)
    m2 = areas.sums(idx, k)
    total = float(m2.sum())
    classes = []
    for i, code in enumerate(codes):
        info = table.info(code)
        classes.append(ClassArea(code, info.key, info.en, info.zh, int(pixels[i]), float(m2[i]),
                                 float(m2[i] / total) if total else 0.0))
    return DateMeasure(label, cm.name, cm.image, cm.source, int(valid.sum()), int((region & ~valid).sum()), total, classes)


def measure_raster(image=None, classes=None, before=None, before_classes=None, class_table=None, aoi=None,
                   aoi_crs: str | None = None, pixel_size=None, rules: IndexRules | None = None, area: str = "auto",
                   patches: bool = True, top: int | None = None, min_patch_pixels: int = 1,
                   progress: bool = False) -> Measurement:
    """Measure class areas of ``image`` (or ``classes``), and change from ``before``/``before_classes``.

    ``class_table``: a :class:`ClassTable`, a built-in name or a JSON path (default: auto for supplied
    class rasters, the derived table for derived classes). ``aoi``: a GeoJSON path. ``area``:
    auto / planar / ellipsoidal (:mod:`.geodesy`). ``top``/``min_patch_pixels`` limit the patches.
    """
    two = before is not None or before_classes is not None
    with _stages(progress, (3 + int(patches)) if two else 2) as step:
        step("read")
        after_cm = load_date(image, classes, rules)
        before_cm = load_date(before, before_classes, rules) if two else None
        return _measure(after_cm, before_cm, class_table, aoi, aoi_crs, pixel_size, area, patches, top,
                        min_patch_pixels, step)


def _measure(after_cm, before_cm, class_table, aoi, aoi_crs, pixel_size, area, patches, top, min_patch_pixels,
             step) -> Measurement:
    two = before_cm is not None
    notes: list[dict] = list(after_cm.notes)
    if before_cm is not None:
        _check_pair(before_cm, after_cm)
        if before_cm.rules and after_cm.rules and before_cm.rules.bands != after_cm.rules.bands:
            notes.append({"en": f"band roles differ between the dates: before {before_cm.rules.bands}, after {after_cm.rules.bands}",
                          "zh": f"两期波段对应不同：前 {before_cm.rules.bands}，后 {after_cm.rules.bands}"})
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
        if aoi_obj.partly_outside:
            notes.append({"en": "part of the AOI lies outside the raster; only the overlap is measured",
                          "zh": "AOI 有部分位于影像范围之外，仅量算重叠部分"})
        valids = [v & region for v in valids]
        for m, v in zip(maps, valids):
            if not v.any():
                raise MeasureError(f"{aoi}: every pixel of {m.name} inside the AOI is nodata — nothing to measure")

    present = set()
    for m, v in zip(maps, valids):
        present |= {int(c) for c in np.unique(m.codes[v])}
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
            change.patches, change.patches_total = find_patches(idxs[0], idxs[1], codes, areas, after_cm.transform,
                                                                after_cm.crs, top, min_patch_pixels)
        only_one = int(((idxs[0] >= 0) ^ (idxs[1] >= 0)).sum())
        if only_one:
            notes.append({"en": f"{only_one} pixels are valid on one date only and are left out of the change figures",
                          "zh": f"有 {only_one} 个像元仅在一个时相有效，未计入变化统计"})
    step("done")
    return Measurement(dates[-1], dates[0] if two else None, change, table, areas, after_cm.crs, after_cm.transform,
                       after_cm.shape, aoi_obj, after_cm.rules, notes, dict(zip(labels, maps)))


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


def _check_pair(before: ClassMap, after: ClassMap) -> None:
    if before.source != after.source:
        raise MeasureError(f"{before.name} ({before.source} classes) and {after.name} ({after.source} classes): both dates "
                           "must use the same kind of classes — give --classes and --before-classes, or neither")
    if before.band_count and after.band_count and before.band_count != after.band_count:
        raise MeasureError(f"{before.image} has {before.band_count} bands but {after.image} has {after.band_count}: "
                           "the two dates must have the same bands")


def _table(spec, after: ClassMap, before: ClassMap | None) -> ClassTable:
    if isinstance(spec, ClassTable):
        return spec
    if after.source == "derived":
        if spec is not None and str(spec) != "derived":
            raise MeasureError("--class-table applies to supplied class rasters; derived classes use the built-in "
                               "'derived' table")
        return load_table("derived")
    if spec is not None:
        return load_table(spec)
    codes = set()
    for m in (after, before):
        if m is not None:
            codes |= {int(c) for c in np.unique(m.codes[m.valid])}
    return auto_table(codes, after.name)
