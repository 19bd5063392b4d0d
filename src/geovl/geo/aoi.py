"""Area of interest: a GeoJSON Polygon/MultiPolygon (bare geometry, Feature or FeatureCollection)
turned into a pixel mask of the raster grid.

The AOI's CRS is, in order: ``aoi_crs`` (``--aoi-crs``); the file's ``crs`` member (old-style
GeoJSON as written by QGIS, e.g. ``urn:ogc:def:crs:EPSG::32650``) — both only as authority codes,
WKT or PROJ strings (:mod:`geovl.geo.crs`: URLs, ``/vsi*`` paths and files are never read); EPSG:4326 when every coordinate
is a plausible longitude/latitude and the raster CRS is projected (RFC 7946 GeoJSON is always
WGS 84); else the raster's CRS. A different CRS is reprojected with
``rasterio.warp.transform_geom``. A pixel is inside when its centre is inside the polygon
(``rasterio.features.geometry_mask``, ``all_touched=False``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import MeasureError


@dataclass
class AOI:
    mask: np.ndarray | None  # (H, W) bool, True inside; None when measured window by window (see :meth:`window_mask`)
    path: str
    crs: str  # CRS the file was read in
    crs_how: str  # "argument", "file", "lon/lat coordinates", "raster"
    geometries: int
    partly_outside: bool
    shapes: list = field(default_factory=list, repr=False)  # geometries in the raster CRS
    transform: object = None
    pixels: int | None = None
    area_m2: float | None = None

    def window_mask(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        """The AOI mask of rows r0:r1, columns c0:c1 (pixel centre inside), made for that window only."""
        if self.mask is not None:
            return self.mask[r0:r1, c0:c1]
        from affine import Affine
        from rasterio.features import geometry_mask

        return geometry_mask(
            self.shapes,
            out_shape=(r1 - r0, c1 - c0),
            transform=self.transform @ Affine.translation(c0, r0),
            invert=True,
            all_touched=False,
        )

    def to_json(self) -> dict:
        px = self.pixels if self.pixels is not None else int(self.mask.sum())
        return {
            "path": self.path,
            "crs": self.crs,
            "crs_from": self.crs_how,
            "geometries": self.geometries,
            "pixels": px,
            "partly_outside_raster": self.partly_outside,
        }


def _geometries(doc, path) -> list[dict]:
    t = doc.get("type") if isinstance(doc, dict) else None
    if t == "FeatureCollection":
        feats = doc.get("features")
        if not isinstance(feats, list):
            raise MeasureError(f'{path}: FeatureCollection without a "features" list')
        out = []
        for f in feats:
            out += _geometries(f, path)
        return out
    if t == "Feature":
        g = doc.get("geometry")
        return [] if g is None else _geometries(g, path)
    if t == "GeometryCollection":
        return [g for sub in doc.get("geometries", []) for g in _geometries(sub, path)]
    if t in ("Polygon", "MultiPolygon"):
        if not isinstance(doc.get("coordinates"), list) or not doc["coordinates"]:
            raise MeasureError(f"{path}: {t} without coordinates")
        return [doc]
    raise MeasureError(f"{path}: AOI geometries must be Polygon or MultiPolygon, found {t!r}")


def _coords(geom) -> np.ndarray:
    def walk(c):
        if c and isinstance(c[0], (int, float)):
            yield c[:2]
        else:
            for x in c:
                yield from walk(x)

    pts = list(walk(geom["coordinates"]))
    try:
        arr = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
    except (ValueError, TypeError):
        raise MeasureError("AOI coordinates are not numbers") from None
    return arr


def _crs_member(doc):
    crs = doc.get("crs") if isinstance(doc, dict) else None
    if isinstance(crs, dict):
        name = (crs.get("properties") or {}).get("name")
        if isinstance(name, str) and name:
            return name
    return None


VECTOR_SUFFIXES = (
    ".shp",
    ".shx",
    ".dbf",
    ".gpkg",
    ".kml",
    ".kmz",
    ".gml",
    ".fgb",
    ".tab",
    ".mif",
    ".zip",
    ".gdb",
    ".sqlite",
)


def _vector_doc(p: Path) -> dict:
    """A non-GeoJSON vector file (shapefile, GeoPackage, KML…) as a GeoJSON FeatureCollection (with an
    old-style ``crs`` member from the file's CRS) through fiona when it is installed."""
    try:
        import fiona
    except ImportError:
        raise MeasureError(
            f"{p}: not GeoJSON, and no vector library (fiona) is installed to read it — convert it first, "
            f"e.g. ogr2ogr -f GeoJSON -t_srs EPSG:4326 aoi.geojson {p.name} / 非 GeoJSON 范围文件：请先用 ogr2ogr 转为 GeoJSON"
        ) from None
    with fiona.open(p) as src:
        feats = [
            {"type": "Feature", "properties": {}, "geometry": dict(f["geometry"].__geo_interface__)}
            for f in src
            if f["geometry"] is not None
        ]
        crs = src.crs.to_string() if src.crs else None
    return {"type": "FeatureCollection", "features": feats} | (
        {"crs": {"type": "name", "properties": {"name": crs}}} if crs else {}
    )


def _read_doc(p: Path) -> dict:
    if not p.is_file():
        raise MeasureError(f"{p}: AOI file not found")
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise MeasureError(f"{p}: cannot read the AOI file ({e})") from None
    is_json = raw.lstrip()[:1] in (b"{", b"[")
    if not is_json and (p.suffix.lower() in VECTOR_SUFFIXES or b"\x00" in raw[:1024]):
        try:
            return _vector_doc(p)
        except MeasureError:
            raise
        except Exception as e:  # noqa: BLE001 — OGR errors of the vector library
            raise MeasureError(f"{p}: not a readable vector file ({e})") from None
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MeasureError(
            f"{p}: not a readable GeoJSON file ({e}); other vector formats: convert with "
            f"ogr2ogr -f GeoJSON aoi.geojson {p.name}"
        ) from None


def load_aoi(
    path, raster_crs, transform, shape, aoi_crs: str | None = None, raster_name: str = "raster", with_mask: bool = True
) -> AOI:
    """The AOI on a raster grid. ``with_mask=False``: no (H, W) mask is made (windowed measuring uses
    :meth:`AOI.window_mask`); the pixel count is then taken by the caller."""
    from rasterio.features import geometry_mask
    from rasterio.warp import transform_geom

    from .crs import CRSInputError, no_network, parse_user_crs

    p = Path(path)
    doc = _read_doc(p)
    geoms = _geometries(doc, p)
    if not geoms:
        raise MeasureError(f"{p}: no Polygon/MultiPolygon geometry in the AOI")
    pts = np.concatenate([_coords(g) for g in geoms])
    if not np.isfinite(pts).all():
        raise MeasureError(f"{p}: AOI coordinates must be finite numbers")

    name, how = aoi_crs, "argument"
    if name is None and (name := _crs_member(doc)) is not None:
        how = "file"
    if name is None:
        lonlat = bool((np.abs(pts[:, 0]) <= 180).all() and (np.abs(pts[:, 1]) <= 90).all())
        if raster_crs is not None and not raster_crs.is_geographic and lonlat:
            name, how = "EPSG:4326", "lon/lat coordinates"
        else:
            how = "raster"
    src_crs = None
    if name is not None:
        try:
            src_crs = parse_user_crs(name, "AOI CRS" if how == "argument" else "the AOI's crs member")
        except CRSInputError as e:  # a URL, path or unknown code: refused before GDAL reads anything
            raise CRSInputError(f"{p}: {e}") from None
    if src_crs is not None and src_crs != raster_crs:
        if raster_crs is None:
            raise MeasureError(f"{p}: the AOI is in {name} but {raster_name} has no CRS to reproject it to")
        try:
            with no_network():
                geoms = [transform_geom(src_crs, raster_crs, g) for g in geoms]
        except Exception as e:  # noqa: BLE001 — PROJ errors
            raise MeasureError(f"{p}: cannot reproject the AOI from {name} to the raster CRS ({e})") from None
    crs_text = src_crs.to_string() if src_crs is not None else (raster_crs.to_string() if raster_crs else "raster grid")
    if not with_mask:
        return AOI(None, str(p), crs_text, how, len(geoms), _partly_outside(geoms, transform, shape), geoms, transform)
    try:
        inside = geometry_mask(geoms, out_shape=shape, transform=transform, invert=True, all_touched=False)
    except Exception as e:  # noqa: BLE001 — invalid geometry
        raise MeasureError(f"{p}: invalid AOI geometry ({e})") from None
    if not inside.any():
        raise MeasureError(f"{p}: the AOI does not cover any pixel centre of {raster_name} (outside the raster?)")
    return AOI(
        inside,
        str(p),
        crs_text,
        how,
        len(geoms),
        _partly_outside(geoms, transform, shape),
        geoms,
        transform,
        int(inside.sum()),
    )


def _partly_outside(geoms, transform, shape) -> bool:
    pts = np.concatenate([_coords(g) for g in geoms])
    inv = ~transform
    cols = inv.a * pts[:, 0] + inv.b * pts[:, 1] + inv.c
    rows = inv.d * pts[:, 0] + inv.e * pts[:, 1] + inv.f
    h, w = shape
    eps = 1e-6
    return bool((cols < -eps).any() or (rows < -eps).any() or (cols > w + eps).any() or (rows > h + eps).any())
