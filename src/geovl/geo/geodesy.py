"""Ground area of every pixel: planar (projected CRS), geodesic (geographic CRS), or given.

- **Projected CRS** — the pixel is a parallelogram of area ``|a·e − b·d|`` of the affine transform
  (times the square of the CRS's linear unit in metres). That is the *map* (planimetric) area; it
  differs from the area on the ellipsoid by the projection's area scale (UTM: −0.08 % on the
  central meridian to about +0.1 % at the zone edge; Web Mercator: +50 % at 35° N). The ratio is
  measured (:func:`ellipsoid_ratio`) on a grid of at most 64 × 64 blocks of the raster: block
  corners are transformed to longitude/latitude and the block's area on the ellipsoid is taken in
  the equal-area (λ, q) plane. ``area="auto"`` keeps the planar area when the whole-raster ratio
  is within 1 % of one and otherwise uses the ellipsoidal area (per block).
- **Geographic CRS** (degrees) — cell areas on the ellipsoid of the CRS, exactly, per row:
  the area between latitudes φ1, φ2 over a longitude span Δλ is ``a²/2 · Δλ · (q(φ2) − q(φ1))``
  with ``q(φ) = (1−e²)·[sinφ/(1−e²sin²φ) + artanh(e·sinφ)/e]`` (the authalic-latitude function;
  ``q(90°)·2πa²`` is the ellipsoid's surface). Rotated geographic grids use the same plane per
  pixel (quadrilateral in (λ, q)).
- **--pixel-size** — a given ground pixel size in metres (for rasters without a CRS).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
import pyproj

from .errors import MeasureError

AUTO_RATIO_TOLERANCE = 0.01
MAX_BLOCKS = 64


@dataclass(frozen=True)
class Ellipsoid:
    name: str
    a: float  # semi-major axis, metres
    inv_f: float  # inverse flattening (0 for a sphere)

    @property
    def e2(self) -> float:
        f = 1.0 / self.inv_f if self.inv_f else 0.0
        return f * (2.0 - f)

    def q(self, lat_rad: np.ndarray | float) -> np.ndarray:
        """Authalic function q(φ); area between two latitudes = a²/2 · Δλ · Δq."""
        s = np.sin(np.asarray(lat_rad, dtype=np.float64))
        e2 = self.e2
        if e2 == 0.0:
            return 2.0 * s
        e = math.sqrt(e2)
        return (1.0 - e2) * (s / (1.0 - e2 * s * s) + np.arctanh(e * s) / e)

    def zone_area(self, lat1_deg, lat2_deg, dlon_deg) -> np.ndarray:
        """Area in m² of the cell between latitudes ``lat1``/``lat2`` spanning ``dlon`` degrees."""
        dq = np.abs(self.q(np.radians(lat2_deg)) - self.q(np.radians(lat1_deg)))
        return 0.5 * self.a**2 * np.radians(np.abs(dlon_deg)) * dq

    def surface_area(self) -> float:
        return float(self.zone_area(-90.0, 90.0, 360.0))


def _from_pyproj(e: pyproj.crs.Ellipsoid) -> Ellipsoid:
    # PROJ's own parameters (its EPSG database for named ellipsoids); a sphere has inverse flattening 0
    return Ellipsoid(e.name, float(e.semi_major_metre), float(e.inverse_flattening))


WGS84 = _from_pyproj(pyproj.crs.Ellipsoid.from_epsg(7030))  # the WGS 84 ellipsoid: a = 6 378 137 m, 1/f = 298.257223563


def ellipsoid_of(crs) -> Ellipsoid:
    """The ellipsoid of a CRS (rasterio or pyproj CRS, WKT, EPSG code …) as PROJ reads it — for a compound or
    bound CRS the one of its horizontal/source part; WGS 84 when the CRS names none or PROJ cannot read it."""
    try:
        c = pyproj.CRS.from_user_input(crs.to_wkt() if hasattr(crs, "to_wkt") else crs)
    except pyproj.exceptions.CRSError:
        return WGS84
    for part in [c, c.source_crs, *c.sub_crs_list]:
        if part is not None and part.ellipsoid is not None:
            return _from_pyproj(part.ellipsoid)
    return WGS84


@dataclass
class PixelAreas:
    """Ground area of each pixel of one grid. Exactly one of ``constant`` (m², exact fraction),
    ``weights`` (float64 m² of shape (H, 1)), ``blocks`` (ellipsoid/planar ratio per block: the ratio
    array, rows per block, columns per block; × ``planar_m2``) or ``nodes`` (rotated geographic grid:
    ellipsoid, transform, degrees per CRS unit) is set. Nothing of size H × W is ever held: the weights
    of a window are made on demand (:meth:`window`), so areas stream with the raster."""

    method: str  # "planar", "ellipsoidal", "geodesic", "pixel-size"
    shape: tuple[int, int]
    constant: Fraction | None = None
    weights: np.ndarray | None = None
    ratio: float | None = None  # ellipsoid / planar area of the whole raster (projected CRS)
    ellipsoid: str | None = None
    notes: list[dict] = field(default_factory=list)
    blocks: tuple | None = None
    planar_m2: float | None = None
    nodes: tuple | None = None
    projected: tuple | None = None  # (crs, transform): per-pixel ellipsoidal areas (NaN where a pixel has none)

    def window(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray | None:
        """float64 m² of the pixels rows r0:r1, columns c0:c1 (broadcastable to that window); None when constant."""
        if self.constant is not None:
            return None
        if self.weights is not None:
            return self.weights[r0:r1]
        if self.blocks is not None:
            ratio, rows, cols = self.blocks
            rb = np.repeat(np.arange(len(rows)), rows)[r0:r1]
            cb = np.repeat(np.arange(len(cols)), cols)[c0:c1]
            return self.planar_m2 * ratio[np.ix_(rb, cb)]
        if self.projected is not None:
            return _pixel_quads(*self.projected, r0, r1, c0, c1)
        ell, t, to_deg = self.nodes
        cc, rr = np.meshgrid(np.arange(c0, c1 + 1, dtype=np.float64), np.arange(r0, r1 + 1, dtype=np.float64))
        lon = np.radians((t.a * cc + t.b * rr + t.c) * to_deg)
        lat = (t.d * cc + t.e * rr + t.f) * to_deg
        return _quad_area(lon, ell.q(np.radians(lat))) * 0.5 * ell.a**2

    def sums(self, index: np.ndarray, n: int, origin: tuple[int, int] = (0, 0)) -> np.ndarray:
        """Area (m², float64) per value 0..n-1 of ``index`` (int array of the grid, or of the window
        whose top-left pixel is ``origin`` = (row, col); −1 = skip)."""
        keep = index >= 0
        if self.constant is not None:
            return self.area_of_counts(np.bincount(index[keep], minlength=n))
        r0, c0 = origin
        w = np.broadcast_to(self.window(r0, r0 + index.shape[0], c0, c0 + index.shape[1]), index.shape)
        self.check_finite(w[keep])
        return np.bincount(index[keep], weights=w[keep], minlength=n)

    def check_finite(self, w: np.ndarray) -> None:
        """Refuse to measure pixels whose ground area is undefined (off the projection's valid area)."""
        if self.projected is not None and not np.isfinite(w).all():
            bad = int((~np.isfinite(w)).sum())
            raise MeasureError(
                f"{bad} valid (not nodata) pixel(s) lie outside the projection's valid area (e.g. off the "
                "Earth's disk of a geostationary view), so they have no ground area; set those pixels to "
                "nodata or clip with --aoi / 部分有效像元位于投影有效范围之外（无地面面积），请设为无数据或用 AOI 裁剪"
            )

    def area_of_counts(self, counts: np.ndarray) -> np.ndarray:
        """Constant pixel area: m² of pixel counts, each the correctly rounded exact product."""
        counts = np.asarray(counts)
        if Fraction(float(self.constant)) == self.constant:
            # the pixel area is a float exactly, so IEEE products are the correctly rounded exact products
            return counts.astype(np.float64) * float(self.constant)
        out = np.zeros(counts.shape, dtype=np.float64)
        for i in np.flatnonzero(counts):
            out.flat[i] = float(int(counts.flat[i]) * self.constant)  # exact product, one rounding
        return out

    def total(self, mask: np.ndarray) -> float:
        return float(self.sums(np.where(mask, 0, -1), 1)[0])

    def pixel_area_m2(self) -> float | None:
        return float(self.constant) if self.constant is not None else None

    def _min_max(self) -> tuple[float, float]:
        if self.weights is not None:
            return float(self.weights.min()), float(self.weights.max())
        if self.blocks is not None:
            return float(self.blocks[0].min() * self.planar_m2), float(self.blocks[0].max() * self.planar_m2)
        h, w = self.shape
        lo, hi = math.inf, -math.inf
        step = max(1, 4_000_000 // max(w, 1))
        for r in range(0, h, step):
            win = self.window(r, min(h, r + step), 0, w)
            if np.isfinite(win).any():
                lo, hi = min(lo, float(np.nanmin(win))), max(hi, float(np.nanmax(win)))
        return lo, hi

    def to_json(self) -> dict:
        out = {"method": self.method, "pixel_area_m2": self.pixel_area_m2()}
        if self.constant is None:
            lo, hi = self._min_max()
            out |= {"pixel_area_m2_min": lo, "pixel_area_m2_max": hi}
        if self.ratio is not None:
            out["ellipsoid_to_planar_ratio"] = self.ratio
        if self.ellipsoid:
            out["ellipsoid"] = self.ellipsoid
        return out


def parse_pixel_size(spec) -> tuple[Fraction, Fraction]:
    """``10`` / ``"10"`` / ``"10,12"`` (x, y in metres) -> fractions."""
    parts = [spec] if isinstance(spec, (int, float)) else str(spec).split(",")
    try:
        vals = [Fraction(str(p).strip()) for p in parts]
    except (ValueError, ZeroDivisionError):
        raise MeasureError(f"--pixel-size: {spec!r} is not a number of metres (e.g. 10 or 10,10)") from None
    if len(vals) not in (1, 2) or any(v <= 0 for v in vals):
        raise MeasureError(f"--pixel-size: need one or two positive numbers of metres, got {spec!r}")
    return (vals[0], vals[-1])


def pixel_areas(crs, transform, shape, pixel_size=None, area: str = "auto", name: str = "raster") -> PixelAreas:
    """Pixel areas of a grid. ``crs``: a rasterio CRS or None; ``transform``: an Affine or None."""
    if area not in ("auto", "planar", "ellipsoidal"):
        raise MeasureError(f"--area must be auto, planar or ellipsoidal, got {area!r}")
    if pixel_size is not None:
        px, py = parse_pixel_size(pixel_size)
        note = {
            "en": f"pixel area from --pixel-size {float(px):g} x {float(py):g} m (the file's georeferencing is not used for areas)",
            "zh": f"像元面积取自 --pixel-size {float(px):g} x {float(py):g} 米（不使用文件自带的地理参考计算面积）",
        }
        return PixelAreas("pixel-size", shape, constant=px * py, notes=[note])
    if crs is None:
        raise MeasureError(
            f"{name}: has no CRS (not georeferenced), so areas are refused; "
            "pass --pixel-size M if you know the ground pixel size in metres"
        )
    if crs.is_geographic:
        return _geographic(crs, transform, shape, name)
    try:
        unit_m = Fraction(crs.linear_units_factor[1])
    except Exception:  # noqa: BLE001 — rasterio raises CRSError for odd units
        raise MeasureError(f"{name}: the CRS has no linear unit in metres; pass --pixel-size M") from None
    t = transform
    constant = abs(Fraction(t.a) * Fraction(t.e) - Fraction(t.b) * Fraction(t.d)) * unit_m * unit_m
    if constant == 0:
        raise MeasureError(f"{name}: degenerate geotransform (pixel area 0)")
    planar = PixelAreas("planar", shape, constant=constant, ellipsoid=WGS84.name)
    try:
        block_ratio, rows, cols, ratio = ellipsoid_ratio(crs, transform, shape, float(constant))
    except MeasureError as e:
        if area == "planar":
            planar.notes.append({"en": f"ellipsoidal area not computed ({e})", "zh": f"未计算椭球面积（{e}）"})
            return planar
        # e.g. a geostationary (GOES) full disk: corners off the Earth. The planar area can be off by 50 %
        # or more, so every pixel's own quadrilateral is measured on the ellipsoid; off-disk pixels have
        # none, and measuring one that is not nodata is refused (PixelAreas.check_finite).
        out = PixelAreas("ellipsoidal", shape, ellipsoid=WGS84.name, projected=(crs, transform))
        out.notes.append(
            {
                "en": f"the map-plane area is not usable for this projection ({e}): areas are per pixel on the "
                "WGS 84 ellipsoid",
                "zh": f"该投影不宜用平面面积（{e}）：逐像元计算WGS 84椭球面积",
            }
        )
        return out
    planar.ratio = ratio
    if area == "planar" or (area == "auto" and abs(ratio - 1.0) <= AUTO_RATIO_TOLERANCE):
        return planar
    out = PixelAreas(
        "ellipsoidal",
        shape,
        ratio=ratio,
        ellipsoid=WGS84.name,
        blocks=(block_ratio, rows, cols),
        planar_m2=float(constant),
    )
    if area == "auto":
        out.notes.append(
            {
                "en": f"the projection distorts areas by {100 * (ratio - 1):+.2f}%, so areas are ellipsoidal (WGS 84)",
                "zh": f"该投影面积变形 {100 * (ratio - 1):+.2f}%，故采用WGS 84椭球面积",
            }
        )
    return out


def _edges(n: int) -> np.ndarray:
    step = max(1, math.ceil(n / MAX_BLOCKS))
    return np.unique(np.r_[np.arange(0, n, step), n])


def ellipsoid_ratio(crs, transform, shape, planar_pixel_m2: float):
    """(ratio per block, rows per block, cols per block, whole-raster ratio): ellipsoid / planar."""
    from rasterio.warp import transform as warp_points

    h, w = shape
    re_, ce = _edges(h), _edges(w)
    cc, rr = np.meshgrid(ce.astype(np.float64), re_.astype(np.float64))
    t = transform
    xs = t.a * cc + t.b * rr + t.c
    ys = t.d * cc + t.e * rr + t.f
    try:
        lon, lat = warp_points(crs, "EPSG:4326", xs.ravel().tolist(), ys.ravel().tolist())
    except Exception as e:  # noqa: BLE001 — PROJ errors
        raise MeasureError(f"cannot transform the grid to longitude/latitude: {e}") from None
    lon = np.radians(np.asarray(lon, dtype=np.float64).reshape(xs.shape))
    lat = np.radians(np.asarray(lat, dtype=np.float64).reshape(xs.shape))
    if not (np.isfinite(lon).all() and np.isfinite(lat).all()):
        raise MeasureError("the grid lies partly outside the projection's valid area")
    lon = np.unwrap(lon, axis=1)
    q = WGS84.q(lat)
    quad = _quad_area(lon, q) * 0.5 * WGS84.a**2
    npx = np.outer(np.diff(re_), np.diff(ce)).astype(np.float64)
    ratio = quad / (npx * planar_pixel_m2)
    return ratio, np.diff(re_), np.diff(ce), float(quad.sum() / (npx.sum() * planar_pixel_m2))


def _pixel_quads(crs, transform, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    """Area on the WGS 84 ellipsoid (m²) of each pixel of rows r0:r1, columns c0:c1: its corners taken
    to longitude/latitude, the quadrilateral measured in the equal-area (λ, q) plane; NaN where a
    corner has no longitude/latitude."""
    from rasterio.warp import transform as warp_points

    cc, rr = np.meshgrid(np.arange(c0, c1 + 1, dtype=np.float64), np.arange(r0, r1 + 1, dtype=np.float64))
    t = transform
    xs, ys = t.a * cc + t.b * rr + t.c, t.d * cc + t.e * rr + t.f
    lon, lat = warp_points(crs, "EPSG:4326", xs.ravel(), ys.ravel())
    lon = np.radians(np.asarray(lon, dtype=np.float64).reshape(xs.shape))
    lat = np.radians(np.asarray(lat, dtype=np.float64).reshape(xs.shape))
    bad = ~(np.isfinite(lon) & np.isfinite(lat))
    lon, lat = np.where(bad, 0.0, lon), np.where(bad, 0.0, lat)
    lon = np.unwrap(lon, axis=1)
    quad = _quad_area(lon, WGS84.q(lat)) * 0.5 * WGS84.a**2
    off = bad[:-1, :-1] | bad[:-1, 1:] | bad[1:, :-1] | bad[1:, 1:]
    return np.where(off, np.nan, quad)


def _quad_area(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Shoelace area of the quadrilaterals of a (R+1, C+1) node grid -> (R, C), each taken relative
    to its own first corner: on absolute radians the products cancel catastrophically for small
    cells (a 0.1 m pixel is ~1e-8 rad wide: per-pixel areas were off by up to ±30 % on a real
    NEON 0.1 m tile, tests/test_real_imagery.py)."""
    x0, y0 = x[:-1, :-1], y[:-1, :-1]
    x1, x2, x3 = x[:-1, 1:] - x0, x[1:, 1:] - x0, x[1:, :-1] - x0
    y1, y2, y3 = y[:-1, 1:] - y0, y[1:, 1:] - y0, y[1:, :-1] - y0
    return 0.5 * np.abs((x1 * y2 - x2 * y1) + (x2 * y3 - x3 * y2))


def _geographic(crs, transform, shape, name) -> PixelAreas:
    ell = ellipsoid_of(crs)
    to_deg = math.degrees(crs.units_factor[1]) if crs.units_factor and crs.units_factor[1] else 1.0
    t = transform
    h, w = shape
    if t.b == 0 and t.d == 0:
        lat_edges = (t.f + t.e * np.arange(h + 1, dtype=np.float64)) * to_deg
        if np.abs(lat_edges).max() > 90.0 + 1e-9:
            raise MeasureError(f"{name}: latitudes beyond ±90° — the geotransform does not fit a geographic CRS")
        weights, nodes = ell.zone_area(lat_edges[:-1], lat_edges[1:], t.a * to_deg)[:, None], None
    else:
        corners = np.array(
            [(0, 0), (w, 0), (0, h), (w, h)], dtype=np.float64
        )  # latitude is affine: extremes at corners
        lat = (t.d * corners[:, 0] + t.e * corners[:, 1] + t.f) * to_deg
        if np.abs(lat).max() > 90.0 + 1e-9:
            raise MeasureError(f"{name}: latitudes beyond ±90° — the geotransform does not fit a geographic CRS")
        weights, nodes = None, (ell, t, to_deg)
    note = {
        "en": f"geographic CRS: exact cell areas on the {ell.name} ellipsoid (per row of latitude)",
        "zh": f"地理坐标系：按纬度逐行计算{ell.name}椭球面上的像元面积",
    }
    return PixelAreas("geodesic", shape, weights=weights, ellipsoid=ell.name, notes=[note], nodes=nodes)
