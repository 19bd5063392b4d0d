"""A documented rule-based land-cover classifier from spectral indices (no training, no model).

Indices (reflectance ``ρ`` = stored value × ``scale`` + ``offset``, from the raster's scale/offset tags):

- NDVI = (ρNIR − ρred) / (ρNIR + ρred)           vegetation vigour
- NDWI = (ρgreen − ρNIR) / (ρgreen + ρNIR)       McFeeters 1996: open water > 0 (we use > 0.1)
- NDBI = (ρSWIR − ρNIR) / (ρSWIR + ρNIR)         Zha et al. 2003: built-up/bare > 0 (needs a SWIR band)
- redness = (ρred − ρblue) / (ρred + ρblue)      bare soil is red-brown, pavement/concrete grey

Rules, first match wins (class codes of the ``derived`` table in :mod:`.tables`):

1. nodata (0) — any band equal to the raster's nodata, non-finite, or all bands 0
2. water (1) — NDWI ≥ ``water_ndwi`` (0.1: McFeeters' 0 also takes blue/steel roofs, NDWI ≈ 0.05)
3. dense vegetation (2) — NDVI ≥ ``dense_ndvi`` (0.6)
4. sparse vegetation (3) — NDVI ≥ ``veg_ndvi`` (0.25)
5. built-up (4) — redness < ``bare_redness`` (0.2) and, when a SWIR band is configured, NDBI ≥ ``built_ndbi`` (0.0)
6. bare / other (5) — everything else

Limitations (stated in the output): forest and cropland are NOT separated (both reach NDVI 0.6–0.9
in the growing season; separating them needs texture, time series or a trained model) — use a
supplied land-cover map for 耕地/林地 questions; red and orange roofs look like bare soil without a
SWIR band; shadows, turbid or shallow water, snow, clouds and haze are not handled; thresholds
shift with sensor, season and atmospheric correction; the classifier is not validated, so expect
accuracy well below the 65–80 % of published maps.

Configuration: a JSON or YAML file (``--index-rules FILE``) with any of
``{"bands": {"blue": 1, "green": 2, "red": 3, "nir": 4, "swir": 5}, "thresholds": {...}, "offset": 0}``
(1-based band numbers), or ``--bands blue,green,red,nir[,swir]`` (the order of the raster's bands).
Without either, bands are found per raster (:meth:`IndexRules.for_raster`): from the band
descriptions when they name blue, green, red and NIR (``B2``…``B8``, ``B11`` for SWIR), else by
position blue, green, red, nir[, swir].
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import MeasureError

BAND_KEYS = ("blue", "green", "red", "nir", "swir")
REQUIRED = ("blue", "green", "red", "nir")
DEFAULT_THRESHOLDS = {"water_ndwi": 0.1, "dense_ndvi": 0.6, "veg_ndvi": 0.25, "bare_redness": 0.2, "built_ndbi": 0.0}
WATER, DENSE, SPARSE, BUILT, BARE = 1, 2, 3, 4, 5


@dataclass
class IndexRules:
    bands: dict[str, int] = field(default_factory=lambda: {"blue": 1, "green": 2, "red": 3, "nir": 4})
    thresholds: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_THRESHOLDS))
    offset: float = 0.0  # added to stored values before the ratios (e.g. -1000 for S2 L2A after 2022-01-25)
    explicit: bool = False  # bands given by a rules file or --bands (else chosen per raster: see for_raster)

    def to_json(self) -> dict:
        return {
            "bands": dict(self.bands),
            "thresholds": dict(self.thresholds),
            "offset": self.offset,
            "bands_from": "configured" if self.explicit else "band descriptions or default order",
        }

    def for_raster(self, count: int, band_names=()) -> IndexRules:
        """The rules with the bands of a raster: configured bands as they are; otherwise the roles
        named in the band descriptions (``B4 red``, ``NIR``, ``B11``…) when blue, green, red and NIR
        are all named, else the default order blue, green, red, nir and SWIR as band 5 when present."""
        if self.explicit:
            return self
        from ..imagery.geotiff import Raster, band_roles

        roles = band_roles(Raster(np.zeros((count, 1, 1), np.uint8), band_names=list(band_names or [])))
        if not all(k in roles for k in REQUIRED):
            roles = {k: i for i, k in enumerate(BAND_KEYS) if i < count}
        bands = {k: roles[k] + 1 for k in BAND_KEYS if k in roles}
        return IndexRules(bands, dict(self.thresholds), self.offset, False)


def parse_band_order(spec: str) -> dict[str, int]:
    """``"blue,green,red,nir,swir"`` -> {name: 1-based band}; other names (e.g. ``x``) skip a band."""
    names = [s.strip().lower() for s in spec.split(",")]
    bands = {n: i + 1 for i, n in enumerate(names) if n in BAND_KEYS}
    missing = [k for k in REQUIRED if k not in bands]
    if missing or len([n for n in names if n in BAND_KEYS]) != len(bands):
        raise MeasureError(
            f"--bands {spec!r}: need each of {', '.join(REQUIRED)} once (optional swir; other names skip a band)"
        )
    return bands


def load_rules(path=None, band_order: str | None = None) -> IndexRules:
    rules = IndexRules()
    if path is not None:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
            doc = json.loads(text) if p.suffix.lower() == ".json" else __import__("yaml").safe_load(text)
        except FileNotFoundError:
            raise MeasureError(f"{p}: index rules file not found") from None
        except Exception as e:  # noqa: BLE001 — JSON/YAML syntax errors
            raise MeasureError(f"{p}: not a readable JSON/YAML rules file ({e})") from None
        if not isinstance(doc, dict) or set(doc) - {"bands", "thresholds", "offset"}:
            raise MeasureError(f"{p}: rules must be a mapping with keys bands, thresholds, offset")
        bands = doc.get("bands", {})
        if not isinstance(bands, dict) or any(
            k not in BAND_KEYS or not isinstance(v, int) or v < 1 for k, v in bands.items()
        ):
            raise MeasureError(f'{p}: "bands" maps {", ".join(BAND_KEYS)} to 1-based band numbers')
        rules.bands.update(bands)
        rules.explicit = rules.explicit or bool(bands)
        th = doc.get("thresholds", {})
        if not isinstance(th, dict) or any(
            k not in DEFAULT_THRESHOLDS or not isinstance(v, (int, float)) for k, v in th.items()
        ):
            raise MeasureError(f'{p}: "thresholds" may set {", ".join(DEFAULT_THRESHOLDS)} (numbers)')
        rules.thresholds.update({k: float(v) for k, v in th.items()})
        if not isinstance(doc.get("offset", 0.0), (int, float)):
            raise MeasureError(f'{p}: "offset" must be a number')
        rules.offset = float(doc.get("offset", 0.0))
    if band_order:
        rules.bands = parse_band_order(band_order)
        rules.explicit = True
    return rules


def _ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    s = a + b
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(s != 0, (a - b) / np.where(s != 0, s, 1.0), 0.0)


def compute_indices(data: np.ndarray, rules: IndexRules, scales=(), offsets=()) -> dict[str, np.ndarray]:
    """NDVI, NDWI, redness (and NDBI with a SWIR band) of a (bands, H, W) array. ``scales``/``offsets``:
    the raster's per-band scale/offset tags (GDAL metadata; e.g. Landsat C2 SR 2.75e-5 and −0.2):
    reflectance = (stored + rules.offset) × scale + offset, so an offset tag changes every ratio."""
    n = data.shape[0]
    need = max(rules.bands.values())
    if need > n:
        raise MeasureError(
            f"band {need} ({', '.join(k for k, v in rules.bands.items() if v == need)}) "
            f"is configured but the raster has only {n} band(s)"
        )
    b = {}
    for k, v in rules.bands.items():
        x = data[v - 1].astype(np.float64) + rules.offset
        sc = float(scales[v - 1]) if len(scales) >= v and scales[v - 1] is not None else 1.0
        of = float(offsets[v - 1]) if len(offsets) >= v and offsets[v - 1] is not None else 0.0
        if sc != 1.0 or of != 0.0:
            x = x * sc + of
        b[k] = x
    out = {
        "ndvi": _ratio(b["nir"], b["red"]),
        "ndwi": _ratio(b["green"], b["nir"]),
        "redness": _ratio(b["red"], b["blue"]),
    }
    if "swir" in b:
        out["ndbi"] = _ratio(b["swir"], b["nir"])
    return out


def valid_mask(data: np.ndarray, nodata, rules: IndexRules) -> np.ndarray:
    used = data[[v - 1 for v in rules.bands.values()]]
    ok = np.ones(data.shape[1:], bool)
    if np.issubdtype(used.dtype, np.floating):
        ok &= np.isfinite(used).all(axis=0)
    if nodata is not None and np.isfinite(nodata):
        ok &= (used != nodata).all(axis=0)
    ok &= (used != 0).any(axis=0)
    return ok


def classify(data: np.ndarray, nodata, rules: IndexRules | None = None, scales=(), offsets=()) -> np.ndarray:
    """(H, W) uint8 class map (codes of the ``derived`` table) from a (bands, H, W) reflectance array."""
    rules = rules or IndexRules()
    missing = [k for k in REQUIRED if k not in rules.bands]
    if missing:
        raise MeasureError(f"index rules: band(s) {', '.join(missing)} not configured")
    th = rules.thresholds
    ix = compute_indices(data, rules, scales, offsets)
    built = ix["redness"] < th["bare_redness"]
    if "ndbi" in ix:
        built &= ix["ndbi"] >= th["built_ndbi"]
    out = np.select(
        [ix["ndwi"] >= th["water_ndwi"], ix["ndvi"] >= th["dense_ndvi"], ix["ndvi"] >= th["veg_ndvi"], built],
        [WATER, DENSE, SPARSE, BUILT],
        default=BARE,
    ).astype(np.uint8)
    out[~valid_mask(data, nodata, rules)] = 0
    return out


LIMITATIONS = {
    "en": "Classes derived from spectral-index thresholds (NDVI, NDWI, redness, NDBI with SWIR), not from a trained or validated "
    "map: forest and cropland are not separated (both are 'vegetation'); red/orange roofs can be taken for bare soil "
    "without SWIR; shadows, turbid water, clouds, haze and snow are not handled; thresholds depend on sensor and season. "
    "Expect accuracy well below published maps; use a supplied land-cover map for cropland/forest figures.",
    "zh": "地类由光谱指数阈值（NDVI、NDWI、红度指数，含短波红外时用NDBI）推导，并非经训练或验证的分类图：不区分林地与耕地（均归为植被）；"
    "无短波红外时红色/橙色屋顶可能被误判为裸地；未处理阴影、浑浊水体、云、霾和积雪；阈值随传感器与季节而变。"
    "精度应明显低于已发布的土地覆盖产品；耕地、林地面积请使用提供的土地覆盖分类图。",
}
