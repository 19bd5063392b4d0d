"""geovl.units: the one area-unit table and the one round_half_up, read by geo, evaluate and the synthetic data."""

from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction

import numpy as np
import pytest

from geovl import units
from geovl.evaluate import quantities
from geovl.evaluate.quantities import find_quantity
from geovl.geo import units as geo_units
from geovl.synth import qa


def test_exact_relations_and_conversion():
    assert units.M2_PER_KM2 == 100 * units.M2_PER_HA == 1500 * units.M2_PER_MU == 1_000_000
    assert units.MU_PER_HA == 15 and units.HA_PER_KM2 == 100 and units.MU_PER_KM2 == 1500
    assert units.convert(10_000, "ha") == 1.0 and units.convert(10_000, "mu") == 15.0
    assert units.all_units(Fraction(2_000_000, 3)) == {"m2": 2_000_000 / 3, "km2": 2 / 3, "ha": 200 / 3, "mu": 1000.0}
    with pytest.raises(KeyError, match="unknown area unit"):
        units.convert(1, "acre")
    a = units.units_array(np.array([0.0, 15.0, 1e6]))
    assert a["mu"].tolist() == [0.0, 0.0225, 1500.0] and a["km2"].tolist() == [0.0, 1.5e-5, 1.0]


def test_every_table_reads_the_one_table():
    for key, u in units.AREA_UNITS.items():
        assert geo_units.UNITS[key][:3] == (u.m2, u.zh, u.en)
        si = {k: f for k, f, _, _ in quantities.UNITS}[key]
        assert si == float(u.m2)
    for key, u in qa.UNITS.items():
        assert u.m2 == units.AREA_UNITS[key].m2 and u.zh == units.AREA_UNITS[key].zh
    assert quantities.UNITS is units.QUANTITY_UNITS
    q = find_quantity("约12.5亩")
    assert q.unit == "mu" and q.si == pytest.approx(12.5 * 10_000 / 15)


def test_round_half_up_exact_and_as_written():
    r = units.round_half_up
    assert str(r(118.05, 1)) == "118.1" and str(r(-118.05, 1)) == "-118.1"  # half away from zero, as written
    assert str(r(Fraction(12345, 1000), 2)) == "12.35" and str(r(Fraction(0), 3)) == "0.000"
    assert str(r(-0.04, 1)) == "0.0"  # never -0
    assert str(r(2.5, 0)) == "3" and str(r(Decimal("0.125"), 2)) == "0.13" and str(r(7, 2)) == "7.00"
    assert f"{r(1234567.891, 2):,}" == "1,234,567.89"
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError):
            r(bad, 1)
    rng = np.random.default_rng(0)  # same results as Decimal's ROUND_HALF_UP on the written value
    for v in np.round(rng.uniform(-1e5, 1e5, 2000), 3).tolist():
        for d in (0, 1, 2):
            ref = Decimal(repr(v)).quantize(Decimal(1).scaleb(-d), rounding=ROUND_HALF_UP)
            assert r(v, d) == ref and str(r(v, d)) == str(abs(ref) if ref == 0 else ref)
    # the synthetic answers' text form is the same function
    assert qa.round_half_up(Fraction(1, 15), 1) == "0.1" == str(r(Fraction(1, 15), 1))
    with pytest.raises(ValueError, match="non-negative"):
        qa.round_half_up(Fraction(-1), 1)
