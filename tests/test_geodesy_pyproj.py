"""geo/geodesy.py takes ellipsoid parameters from PROJ (pyproj) instead of hand-written constants and a WKT
regex: named ellipsoids from PROJ's EPSG database, custom ones as the CRS defines them, the horizontal part
of a compound CRS."""

from __future__ import annotations

import pyproj
import pytest
from rasterio.crs import CRS

from geovl.geo.geodesy import WGS84, Ellipsoid, ellipsoid_of


def test_wgs84_is_projs():
    g = pyproj.Geod(ellps="WGS84")
    assert WGS84.name == "WGS 84" and WGS84.a == g.a == 6_378_137.0
    assert WGS84.inv_f == pytest.approx(1 / g.f, rel=1e-15) and WGS84.inv_f == 298.257223563
    assert WGS84.e2 == pytest.approx(g.es, rel=1e-15)


@pytest.mark.parametrize(
    "epsg, name, a, inv_f",
    [
        (4326, "WGS 84", 6378137.0, 298.257223563),
        (32650, "WGS 84", 6378137.0, 298.257223563),  # UTM 50N: the ellipsoid of its base CRS
        (4490, "CGCS2000", 6378137.0, 298.257222101),
        (4269, "GRS 1980", 6378137.0, 298.257222101),  # NAD83
        (4214, "Krassowsky 1940", 6378245.0, 298.3),  # Beijing 1954
    ],
)
def test_named_ellipsoids(epsg, name, a, inv_f):
    e = ellipsoid_of(CRS.from_epsg(epsg))
    assert (e.name, e.a, e.inv_f) == (name, a, inv_f)
    assert ellipsoid_of(pyproj.CRS.from_epsg(epsg)) == e  # a pyproj CRS works the same


def test_custom_and_compound_crs():
    sphere = ellipsoid_of(CRS.from_proj4("+proj=longlat +R=6371000 +no_defs"))
    assert (sphere.a, sphere.inv_f, sphere.e2) == (6371000.0, 0.0, 0.0)
    # the area of a sphere's surface, 4πR², through the same authalic formula
    assert sphere.surface_area() == pytest.approx(4 * 3.141592653589793 * 6371000.0**2, rel=1e-12)
    ab = ellipsoid_of(CRS.from_proj4("+proj=longlat +a=6378137 +b=6356752 +no_defs"))
    assert ab.a == 6378137.0 and ab.inv_f == pytest.approx(6378137 / (6378137 - 6356752), rel=1e-12)
    compound = ellipsoid_of("EPSG:4326+5773")  # WGS 84 + EGM96 height
    assert compound == WGS84
    assert ellipsoid_of(CRS.from_epsg(4490)) == Ellipsoid("CGCS2000", 6378137.0, 298.257222101)


def test_unreadable_crs_falls_back_to_wgs84():
    assert ellipsoid_of("not a crs at all") == WGS84
