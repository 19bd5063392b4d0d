"""Land-cover class tables: code -> names (zh/en). Built-in: ESA WorldCover, Google Dynamic World,
the geovl synthetic county table, and the classes of the index-based classifier (:mod:`.indices`).

A class table JSON file (``--class-table FILE``) looks like::

    {"name": "my-map", "nodata": [0, 255],
     "classes": [{"code": 10, "key": "tree", "en": "Tree cover", "zh": "林地", "accuracy_key": "trees"}, …]}

``code`` may also be spelled ``id`` (so the ``classes.json`` written by ``geovl data synth`` loads
as is); ``accuracy_key`` (optional) links a class to the published class-level accuracy in
:data:`.units.CLASS_ACCURACY`. Codes absent from the table are reported as ``class <code>``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .errors import MeasureError


@dataclass(frozen=True)
class ClassInfo:
    code: int
    key: str
    en: str
    zh: str
    accuracy_key: str | None = None

    def name(self, lang: str) -> str:
        return self.zh if lang == "zh" else self.en


@dataclass
class ClassTable:
    name: str
    classes: dict[int, ClassInfo]
    nodata: tuple[int, ...] = ()
    kind: str = "map"  # "map" (a published product), "truth" (exact synthetic), "derived", "custom"
    source: str = "built-in"
    notes: list[str] = field(default_factory=list)

    def info(self, code: int) -> ClassInfo:
        code = int(code)
        if code in self.classes:
            return self.classes[code]
        return ClassInfo(code, f"class_{code}", f"class {code}", f"类别{code}")

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "source": self.source,
            "nodata": list(self.nodata),
            "classes": [
                {"code": c.code, "key": c.key, "en": c.en, "zh": c.zh}
                | ({"accuracy_key": c.accuracy_key} if c.accuracy_key else {})
                for c in self.classes.values()
            ],
        }


def _table(name, kind, rows, nodata=()):
    return ClassTable(name, {r[0]: ClassInfo(*r) for r in rows}, tuple(nodata), kind)


CODE_RANGE = (-(2**31), 2**32 - 1)  # int32 and uint32 class rasters

WORLDCOVER = [  # ESA WorldCover v100/v200 "Map" codes
    (10, "tree", "Tree cover", "林地", "trees"),
    (20, "shrub", "Shrubland", "灌木地", "shrub"),
    (30, "grass", "Grassland", "草地", "grass"),
    (40, "crop", "Cropland", "耕地", "crops"),
    (50, "built", "Built-up", "建设用地", "built"),
    (60, "bare", "Bare / sparse vegetation", "裸地/稀疏植被", "bare"),
    (70, "snow", "Snow and ice", "冰雪", None),
    (80, "water", "Permanent water bodies", "永久水体", "water"),
    (90, "wetland", "Herbaceous wetland", "草本湿地", "flooded_vegetation"),
    (95, "mangroves", "Mangroves", "红树林", None),
    (100, "moss", "Moss and lichen", "苔藓地衣", None),
]
DYNAMIC_WORLD = [  # Google Dynamic World V1 "label" band
    (0, "water", "Water", "水体", "water"),
    (1, "trees", "Trees", "林地", "trees"),
    (2, "grass", "Grass", "草地", "grass"),
    (3, "flooded_vegetation", "Flooded vegetation", "水淹植被", "flooded_vegetation"),
    (4, "crops", "Crops", "耕地", "crops"),
    (5, "shrub_and_scrub", "Shrub and scrub", "灌丛", "shrub"),
    (6, "built", "Built area", "建设用地", "built"),
    (7, "bare", "Bare ground", "裸地", "bare"),
    (8, "snow_and_ice", "Snow and ice", "冰雪", None),
]
# Classes written by the rule-based classifier of :mod:`.indices` (0 = nodata).
DERIVED = [  # what each class holds: see the rules in geovl.geo.indices
    (1, "water", "water", "水体", None),
    (2, "dense_vegetation", "dense vegetation", "茂密植被", None),  # forest or vigorous crops (NDVI >= 0.6)
    (3, "sparse_vegetation", "sparse vegetation", "稀疏植被", None),  # cropland, grass, young or ripening crops
    (4, "built", "built-up", "建设用地", None),
    (5, "bare", "bare / other", "裸地/其他", None),  # bare soil, red roofs without SWIR, other non-vegetated
]


def synth_table() -> ClassTable:
    from ..data.landcover_classes import CLASSES, NODATA

    return ClassTable("synth", {c.id: ClassInfo(c.id, c.key, c.en, c.zh, None) for c in CLASSES}, (NODATA,), "truth")


BUILTIN = {
    "worldcover": lambda: _table("worldcover", "map", WORLDCOVER, (0,)),
    # Dynamic World uses 0 for water: nodata comes only from the raster's own nodata value.
    "dynamicworld": lambda: _table("dynamicworld", "map", DYNAMIC_WORLD, ()),
    "synth": synth_table,
    "derived": lambda: _table("derived", "derived", DERIVED, (0,)),
}


def load_table(spec: str | Path) -> ClassTable:
    """A built-in table name (``worldcover``, ``dynamicworld``, ``synth``, ``derived``) or a JSON file."""
    if str(spec).lower() in BUILTIN:
        return BUILTIN[str(spec).lower()]()
    path = Path(spec)
    if not path.is_file():
        raise MeasureError(f"{path}: class table not found (use a JSON file or one of: {', '.join(BUILTIN)})")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MeasureError(f"{path}: not a readable class table JSON file ({e})") from None
    rows = doc.get("classes") if isinstance(doc, dict) else None
    if not isinstance(rows, list) or not rows:
        raise MeasureError(f'{path}: class table needs a non-empty "classes" list')
    classes: dict[int, ClassInfo] = {}
    for i, r in enumerate(rows):
        code = r.get("code", r.get("id")) if isinstance(r, dict) else None
        if isinstance(code, bool) or not isinstance(code, int):
            raise MeasureError(f'{path}: classes[{i}] needs an integer "code" (or "id")')
        if not CODE_RANGE[0] <= code <= CODE_RANGE[1]:
            raise MeasureError(
                f"{path}: classes[{i}] code {str(code)[:24]}{'…' if len(str(code)) > 24 else ''} is outside "
                f"{CODE_RANGE[0]}..{CODE_RANGE[1]} (class raster values are at most 32-bit integers)"
            )
        if code in classes:
            raise MeasureError(f"{path}: class code {code} appears twice")
        key = str(r.get("key") or r.get("en") or f"class_{code}")
        classes[code] = ClassInfo(
            code, key, str(r.get("en") or key), str(r.get("zh") or r.get("en") or key), r.get("accuracy_key")
        )
    nodata = doc.get("nodata", [])
    nodata = [nodata] if isinstance(nodata, int) else nodata
    if not isinstance(nodata, list) or not all(
        isinstance(v, int) and CODE_RANGE[0] <= v <= CODE_RANGE[1] for v in nodata
    ):
        raise MeasureError(
            f'{path}: "nodata" must be an integer or a list of integers in {CODE_RANGE[0]}..{CODE_RANGE[1]}'
        )
    kind = "truth" if doc.get("generator") == "geovl.data.synth" else str(doc.get("kind", "custom"))
    name = "synth" if kind == "truth" else str(doc.get("name") or path.stem)
    return ClassTable(name, classes, tuple(nodata), kind, str(path))


def find_synth_table(raster_path: str | Path | None) -> Path | None:
    """The ``classes.json`` of a ``geovl data synth`` output that contains ``raster_path``, if any."""
    if raster_path is None or not Path(raster_path).is_file():
        return None
    p = Path(raster_path).resolve().parent
    for d in [p, *list(p.parents)[:3]]:
        f = d / "classes.json"
        if f.is_file():
            try:
                if json.loads(f.read_text(encoding="utf-8")).get("generator") == "geovl.data.synth":
                    return f
            except (OSError, ValueError, AttributeError):
                return None
    return None


def auto_table(codes, raster_path=None) -> ClassTable:
    """Pick a table for a supplied class raster without ``--class-table``: the synth table when the
    raster lies in a ``geovl data synth`` output; WorldCover when every code is a WorldCover code;
    else a generic table (``class <code>``)."""
    found = find_synth_table(raster_path)
    if found is not None:
        t = load_table(found)
        t.notes.append(f"class table auto-detected: {found}")
        return t
    codes = {int(c) for c in codes}
    wc = {r[0] for r in WORLDCOVER}
    if codes and codes <= wc | {0}:
        t = BUILTIN["worldcover"]()
        t.source = "auto-detected (all codes are WorldCover codes)"
        return t
    return ClassTable("generic", {}, (), "custom", "no class table given: classes are named by their codes")


def auto_class_table(class_paths: list[str]):
    """The auto-detected table of uploaded class rasters from their codes alone (WorldCover when every
    code is one, else generic) — never from a ``classes.json`` that happens to lie near the upload."""
    import numpy as np
    import rasterio

    codes: set[int] = set()
    for p in class_paths:
        with rasterio.open(p) as ds:
            band = ds.read(1, masked=True)
        vals = band.compressed()
        codes |= {int(v) for v in np.unique(vals[np.isfinite(vals)] if vals.dtype.kind == "f" else vals)}
    return auto_table(codes, None)  # never looks beside the temporary files for a classes.json
