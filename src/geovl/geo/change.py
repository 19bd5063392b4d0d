"""Two-date change: the from→to matrix with areas, and change patches as GeoJSON.

A *change patch* is a 4-connected region of pixels that changed with the same from→to pair
(``rasterio.features.shapes`` polygonises them; the polygons are rasterised back with their ids,
which reproduces the components exactly because polygon edges lie on pixel edges, so each patch's
pixel count and area are exact). Only pixels valid on both dates (and inside the AOI) count.

GeoJSON: a FeatureCollection, largest patch first, one Polygon per patch with flat properties
(QGIS attribute table friendly): ``rank, from_code, from_key, from_en, from_zh, to_code, to_key,
to_en, to_zh, label, pixels, area_m2, area_km2, area_ha, area_mu, centroid_x, centroid_y`` (+
``lon, lat`` when the CRS is known). In the raster CRS it carries an old-style ``crs`` member,
which QGIS reads; the EPSG:4326 variant follows RFC 7946 (no ``crs`` member, lon/lat order).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .geodesy import PixelAreas
from .tables import ClassTable
from .units import units_array

CONNECTIVITY = 4


@dataclass
class Patch:
    from_code: int
    to_code: int
    pixels: int
    m2: float
    geometry: dict  # GeoJSON Polygon in the raster CRS
    centroid: tuple[float, float]  # raster CRS
    lonlat: tuple[float, float] | None = None


@dataclass
class Change:
    codes: list[int]  # row/column order of the matrix
    pixels: np.ndarray  # (K, K) int64, rows = from (before), columns = to (after)
    m2: np.ndarray  # (K, K) float64
    common_pixels: int  # valid on both dates
    patches: list[Patch] = field(default_factory=list)
    patches_total: int = 0  # before --top / --min-patch-pixels

    @property
    def changed_pixels(self) -> int:
        return int(self.pixels.sum() - np.trace(self.pixels))

    @property
    def changed_m2(self) -> float:
        return float(self.m2.sum() - np.trace(self.m2))

    def net_m2(self) -> dict[int, float]:
        """After minus before area per class code, over pixels valid on both dates."""
        return {c: float(self.m2[:, i].sum() - self.m2[i, :].sum()) for i, c in enumerate(self.codes)}

    def transitions(self) -> list[tuple[int, int, int, float]]:
        """(from, to, pixels, m²) of every changed pair, largest area first."""
        out = [
            (self.codes[i], self.codes[j], int(self.pixels[i, j]), float(self.m2[i, j]))
            for i, j in zip(*np.nonzero(self.pixels))
            if i != j
        ]
        return sorted(out, key=lambda t: (-t[3], -t[2], t[0], t[1]))


def change_matrix(before_idx: np.ndarray, after_idx: np.ndarray, codes: list[int], areas: PixelAreas) -> Change:
    """``*_idx``: (H, W) index into ``codes`` (−1 = not valid). Pixels valid on both dates only."""
    k = len(codes)
    both = (before_idx >= 0) & (after_idx >= 0)
    pair = np.where(both, before_idx.astype(np.int64) * k + after_idx, -1)
    pixels = np.bincount(pair[both], minlength=k * k).reshape(k, k)
    m2 = areas.sums(pair, k * k).reshape(k, k)
    return Change(list(codes), pixels.astype(np.int64), m2, int(both.sum()))


def find_patches(
    before_idx, after_idx, codes, areas: PixelAreas, transform, crs=None, top=None, min_pixels=1
) -> tuple[list[Patch], int]:
    """Change patches, largest first: (kept patches, number of patches before filtering)."""
    from rasterio.features import rasterize, shapes

    k = len(codes)
    changed = (before_idx >= 0) & (after_idx >= 0) & (before_idx != after_idx)
    if not changed.any():
        return [], 0
    pair = np.where(changed, before_idx * k + after_idx, 0).astype(np.int32)
    polys = list(shapes(pair, mask=changed, connectivity=CONNECTIVITY, transform=transform))
    labels = rasterize(
        ((g, i + 1) for i, (g, _) in enumerate(polys)),
        out_shape=pair.shape,
        transform=transform,
        fill=0,
        dtype="int32",
        all_touched=False,
    )
    n = len(polys)
    lab = labels.astype(np.int64) - 1
    npx = np.bincount(lab[lab >= 0], minlength=n)
    m2 = areas.sums(lab, n)
    rows, cols = np.nonzero(lab >= 0)
    ids = lab[rows, cols]
    cy = np.bincount(ids, weights=rows + 0.5, minlength=n) / np.maximum(npx, 1)
    cx = np.bincount(ids, weights=cols + 0.5, minlength=n) / np.maximum(npx, 1)
    t = transform
    xs, ys = t.a * cx + t.b * cy + t.c, t.d * cx + t.e * cy + t.f
    order = np.lexsort((np.arange(n), -npx, -m2))  # largest area first, then pixels, then scan order
    order = order[npx[order] >= max(1, min_pixels)]
    if top:
        order = order[:top]
    order = order.tolist()
    lonlat = _lonlat(crs, [xs[i] for i in order], [ys[i] for i in order])
    out = []
    for j, i in enumerate(order):
        v = int(polys[i][1])
        out.append(
            Patch(
                codes[v // k],
                codes[v % k],
                int(npx[i]),
                float(m2[i]),
                polys[i][0],
                (float(xs[i]), float(ys[i])),
                lonlat[j] if lonlat else None,
            )
        )
    return out, n


def _lonlat(crs, xs, ys):
    if crs is None or not xs:
        return None
    from rasterio.warp import transform as warp_points

    try:
        lon, lat = warp_points(crs, "EPSG:4326", xs, ys)
    except Exception:  # noqa: BLE001 — no lon/lat for this CRS
        return None
    return [(float(a), float(b)) for a, b in zip(lon, lat)]


def crs_member(crs) -> dict | None:
    epsg = crs.to_epsg() if crs is not None else None
    return {"type": "name", "properties": {"name": f"urn:ogc:def:crs:EPSG::{epsg}"}} if epsg else None


def patches_geojson(change: Change, table: ClassTable, crs=None, wgs84: bool = False) -> dict:
    """FeatureCollection of ``change.patches`` in the raster CRS (or EPSG:4326 when ``wgs84``)."""
    if wgs84:
        from rasterio.warp import transform_geom
    u = units_array([p.m2 for p in change.patches])
    names = {}
    feats = []
    for rank, p in enumerate(change.patches, 1):
        pair = (p.from_code, p.to_code)
        if pair not in names:
            a, b = table.info(p.from_code), table.info(p.to_code)
            names[pair] = {
                "from_code": p.from_code,
                "from_key": a.key,
                "from_en": a.en,
                "from_zh": a.zh,
                "to_code": p.to_code,
                "to_key": b.key,
                "to_en": b.en,
                "to_zh": b.zh,
                "label": f"{a.zh}→{b.zh} {a.en}→{b.en}",
            }
        i = rank - 1
        props = {
            "rank": rank,
            **names[pair],
            "pixels": p.pixels,
            "area_m2": float(u["m2"][i]),
            "area_km2": float(u["km2"][i]),
            "area_ha": float(u["ha"][i]),
            "area_mu": float(u["mu"][i]),
            "centroid_x": p.centroid[0],
            "centroid_y": p.centroid[1],
        }
        if p.lonlat:
            props |= {"lon": p.lonlat[0], "lat": p.lonlat[1]}
        geom = transform_geom(crs, "EPSG:4326", p.geometry) if wgs84 else p.geometry
        feats.append({"type": "Feature", "id": rank, "properties": props, "geometry": geom})
    fc = {"type": "FeatureCollection", "name": "geovl_changes"}
    if not wgs84 and (member := crs_member(crs)) is not None:
        fc["crs"] = member
    fc["geovl"] = {
        "crs": "EPSG:4326" if wgs84 else (crs.to_string() if crs is not None else None),
        "connectivity": CONNECTIVITY,
        "changed_pixels": change.changed_pixels,
        "changed_m2": change.changed_m2,
        "patches_total": change.patches_total,
        "patches_written": len(change.patches),
        "features_m2": float(u["m2"].sum()) if len(change.patches) else 0.0,
    }
    fc["features"] = feats  # geometries hold tuples: json.dumps writes them as arrays
    return fc
