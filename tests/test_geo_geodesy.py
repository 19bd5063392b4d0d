"""Units and pixel areas: exact conversions, ellipsoidal cell areas against hand computations,
projected units, projection distortion (UTM, Web Mercator), and a geographic-CRS raster end to end."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from affine import Affine
from rasterio.crs import CRS

from geovl.geo.errors import MeasureError
from geovl.geo.geodesy import WGS84, Ellipsoid, parse_pixel_size, pixel_areas
from geovl.geo.measure import measure_raster
from geovl.geo.units import M2_PER_MU, all_units, convert, fmt, fmt_signed
from geovl.imagery.geotiff import Raster, write_raster


def test_unit_constants_are_exact():
    assert convert(1_000_000, "km2") == 1.0
    assert convert(1_000_000, "ha") == 100.0
    assert convert(1_000_000, "mu") == 1500.0
    assert convert(10_000, "mu") == 15.0
    assert M2_PER_MU == Fraction(10_000, 15)
    assert convert(Fraction(20_000, 3), "mu") == 10.0  # 10 亩 = 6666.67 m², exactly
    assert all_units(2_500_000) == {"m2": 2_500_000.0, "km2": 2.5, "ha": 250.0, "mu": 3750.0}
    with pytest.raises(KeyError):
        convert(1, "acre")


def test_printing_rounds_half_up_and_never_prints_minus_zero():
    assert fmt(118.05, "mu") == "118.1"  # the float is 118.04999…, printed like the synth answers
    assert fmt(0.00005, "km2") == "0.0001"
    assert fmt(0.4181, "share") == "41.8%"
    assert fmt(-1e-12, "km2") == "0.0000"
    assert fmt_signed(0.0787, "km2") == "+0.0787" and fmt_signed(-0.0787, "km2") == "-0.0787"
    assert fmt(1234567.4, "m2") == "1,234,567"


def _hand_cell_area(lat_mid_deg: float, dlat_deg: float, dlon_deg: float) -> float:
    """Area of a small lat/lon cell from the meridian (M) and prime-vertical (N) radii: M·N·cosφ·Δφ·Δλ."""
    a, f = 6378137.0, 1 / 298.257223563
    e2 = f * (2 - f)
    phi = math.radians(lat_mid_deg)
    w = 1 - e2 * math.sin(phi) ** 2
    m_radius = a * (1 - e2) / w**1.5
    n_radius = a / math.sqrt(w)
    return m_radius * n_radius * math.cos(phi) * math.radians(dlat_deg) * math.radians(dlon_deg)


@pytest.mark.parametrize("lat", [0.0, 30.0, 36.7, 60.0, -45.0])
def test_zone_area_matches_hand_computation(lat):
    got = float(WGS84.zone_area(lat, lat + 0.001, 0.001))
    assert got == pytest.approx(_hand_cell_area(lat + 0.0005, 0.001, 0.001), rel=1e-9)


def test_zone_area_literal_and_whole_ellipsoid():
    # a 0.001° x 0.001° cell at 30° N: ~96.4 m x ~110.9 m
    assert float(WGS84.zone_area(30.0, 30.001, 0.001)) == pytest.approx(10695.687, abs=0.001)
    # published surface area of the WGS 84 ellipsoid: 510,065,621.724 km²
    assert WGS84.surface_area() / 1e6 == pytest.approx(510_065_621.724, abs=0.01)
    # a sphere: 4πR², and a hemisphere strip by Archimedes: 2πR²·(sinφ2 − sinφ1)
    sphere = Ellipsoid("sphere", 6_371_000.0, 0.0)
    assert sphere.surface_area() == pytest.approx(4 * math.pi * 6_371_000.0**2, rel=1e-12)
    assert float(sphere.zone_area(10, 20, 360)) == pytest.approx(
        2 * math.pi * 6_371_000.0**2 * (math.sin(math.radians(20)) - math.sin(math.radians(10))), rel=1e-12
    )


def test_geographic_raster_end_to_end(tmp_path):
    """EPSG:4326, 0.001° pixels from 30.000° to 30.010° N: per-row areas from the hand formula."""
    h, w = 10, 8
    classes = np.full((1, h, w), 1, np.uint8)
    classes[0, :, 5:] = 2  # 3 columns of class 2
    classes[0, 0, 0] = 0  # one nodata pixel in the northernmost row
    top = 30.010
    t = (0.001, 0.0, 116.0, 0.0, -0.001, top)
    path = tmp_path / "geo.tif"
    write_raster(path, Raster(classes, "EPSG:4326", t, 0, []))
    m = measure_raster(path, class_table="synth")
    assert m.areas.method == "geodesic" and m.crs_text() == "EPSG:4326"
    row_area = [_hand_cell_area(top - 0.001 * (r + 0.5), 0.001, 0.001) for r in range(h)]
    want1 = sum(5 * a for a in row_area) - row_area[0]
    want2 = sum(3 * a for a in row_area)
    got = {c.code: c for c in m.current.classes}
    assert got[1].pixels == 49 and got[2].pixels == 30
    assert got[1].m2 == pytest.approx(want1, rel=1e-9)
    assert got[2].m2 == pytest.approx(want2, rel=1e-9)
    assert m.current.valid_m2 == pytest.approx(want1 + want2, rel=1e-9)
    doc = m.to_json()
    assert doc["crs_kind"] == "geographic" and doc["area_method"]["method"] == "geodesic"
    # rows farther north have smaller cells
    assert doc["area_method"]["pixel_area_m2_min"] < doc["area_method"]["pixel_area_m2_max"]


def test_projected_units_in_feet():
    areas = pixel_areas(CRS.from_epsg(2263), Affine(3.0, 0, 1_000_000, 0, -3.0, 200_000), (4, 4), area="planar")
    foot = Fraction(0.30480060960121924)
    assert areas.method == "planar" and areas.constant == 9 * foot * foot


def test_utm_ratio_is_inverse_square_scale_factor_on_the_central_meridian():
    # 1 km around the central meridian of UTM 50N (x = 500 000): point scale k0 = 0.9996
    areas = pixel_areas(CRS.from_epsg(32650), Affine(10, 0, 499_500, 0, -10, 4_065_000), (100, 100))
    assert areas.method == "planar" and areas.constant == 100
    assert areas.ratio == pytest.approx(1 / 0.9996**2, rel=2e-6)
    ell = pixel_areas(CRS.from_epsg(32650), Affine(10, 0, 499_500, 0, -10, 4_065_000), (100, 100), area="ellipsoidal")
    assert ell.method == "ellipsoidal"
    assert ell.total(np.ones((100, 100), bool)) == pytest.approx(1e6 / 0.9996**2, rel=2e-6)


def test_web_mercator_switches_to_ellipsoidal_area():
    """A Web-Mercator rectangle is exactly a lon/lat box, so its area on the ellipsoid is a zone area."""
    from rasterio.warp import transform

    xs, ys = transform("EPSG:4326", "EPSG:3857", [116.0, 116.1], [36.1, 36.0])
    n = 50
    t = Affine((xs[1] - xs[0]) / n, 0, xs[0], 0, (ys[1] - ys[0]) / n, ys[0])
    areas = pixel_areas(CRS.from_epsg(3857), t, (n, n))
    assert areas.method == "ellipsoidal"
    assert areas.ratio == pytest.approx(0.65, abs=0.02)  # ~cos²(36°)
    assert any("areas are ellipsoidal" in n["en"] for n in areas.notes)
    want = float(WGS84.zone_area(36.0, 36.1, 0.1))
    assert areas.total(np.ones((n, n), bool)) == pytest.approx(want, rel=1e-7)
    planar = pixel_areas(CRS.from_epsg(3857), t, (n, n), area="planar")
    assert planar.method == "planar" and planar.ratio == pytest.approx(areas.ratio)


def test_pixel_size_and_missing_crs():
    assert (
        parse_pixel_size("10") == (10, 10)
        and parse_pixel_size("10,20") == (10, 20)
        and parse_pixel_size(2.5) == (2.5, 2.5)
    )
    for bad in ("0", "-1", "a", "1,2,3"):
        with pytest.raises(MeasureError, match="--pixel-size"):
            parse_pixel_size(bad)
    with pytest.raises(MeasureError, match="x.tif: has no CRS.*--pixel-size"):
        pixel_areas(None, Affine.identity(), (3, 3), name="x.tif")
    areas = pixel_areas(None, Affine.identity(), (3, 3), pixel_size="10,20")
    assert areas.method == "pixel-size" and areas.constant == 200
    assert areas.sums(np.array([[0, 1, -1]]), 2).tolist() == [200.0, 200.0]


def test_ellipsoid_comes_from_the_crs():
    from geovl.geo.geodesy import ellipsoid_of

    cgcs = ellipsoid_of(CRS.from_epsg(4490))  # China Geodetic Coordinate System 2000
    assert (cgcs.name, cgcs.a, cgcs.inv_f) == ("CGCS2000", 6378137.0, 298.257222101)
    assert ellipsoid_of(CRS.from_epsg(4326)) == WGS84
    areas = pixel_areas(CRS.from_epsg(4490), Affine(0.001, 0, 116.0, 0, -0.001, 30.001), (1, 1))
    assert areas.ellipsoid == "CGCS2000"
    # CGCS2000 and WGS 84 differ in flattening only in the 10th digit: cell areas agree to 1e-9
    assert areas.total(np.ones((1, 1), bool)) == pytest.approx(float(WGS84.zone_area(30.0, 30.001, 0.001)), rel=1e-9)
