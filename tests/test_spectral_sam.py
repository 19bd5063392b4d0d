"""Spectral angle mapper: recovery of library spectra, chunking, no-data windows, CLI, evaluation table."""

from __future__ import annotations

import json

import numpy as np
import pytest

from geovl.cli import main
from geovl.spectral import SpectralError
from geovl.spectral.cube import array_cube
from geovl.spectral.envi import write_envi
from geovl.spectral.readers import open_cube
from geovl.spectral.sam import NODATA, classify_block, main_mineral, prepare, sam_map, sam_numpy
from geovl.spectral.sensors import aviris, resample

GEO = dict(crs="EPSG:32650", transform=(30.0, 0.0, 500000.0, 0.0, -30.0, 4000000.0))


@pytest.fixture(scope="module")
def lib():
    from geovl.spectral.library import named_library

    try:
        return named_library("minerals+background")
    except SpectralError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def scene(lib, tmp_path_factory):
    """AVIRIS-band ENVI cube, 12×10: row r, col c = record (r + c) % K scaled by a brightness factor;
    rows 0–3 no-data (a whole first window when rows=4)."""
    s = aviris()
    E = resample(lib.filled(), lib.wavelengths, s.centres, s.fwhm)  # (K, B)
    K = len(lib)
    truth = np.add.outer(np.arange(12), np.arange(10)) % K
    bright = np.linspace(0.6, 1.3, 120).reshape(12, 10)
    refl = E[truth].transpose(2, 0, 1) * bright[None]
    data = np.round(refl * 10000).astype(np.int16)
    data[:, :4] = -9999
    d = tmp_path_factory.mktemp("sam")
    hdr = write_envi(
        d / "c.img",
        data,
        interleave="bil",
        wavelengths=s.centres,
        fwhm=s.fwhm,
        good_bands=s.good,
        nodata=-9999,
        scale=10000,
        **GEO,
    )
    return hdr, truth


def test_classify_recovers_library_and_nodata(scene, lib):
    hdr, truth = scene
    cube = open_cube(hdr)
    L, bidx = prepare(cube, lib)
    wl = cube.wavelengths[bidx]
    assert wl.min() > 1360 and wl.max() <= 2500 and cube.good_bands[bidx].all()  # SWIR range every record covers
    cls, ang = classify_block(cube.read_float(bidx), L, max_angle=0.05)
    assert (cls[:4] == NODATA).all() and (ang[:4] == NODATA).all()
    assert np.array_equal(cls[4:].astype(int), truth[4:] + 1)  # brightness does not matter to SAM
    assert ang[4:].max() < 0.01
    c2, a2 = sam_numpy(cube.read_float(bidx), L, max_angle=0.05)
    assert np.array_equal(c2, cls) and np.allclose(a2, ang, atol=2e-3)  # float32 arccos near 0
    tight, _ = classify_block(
        cube.read_float(bidx) * np.linspace(1, 1.2, len(bidx))[:, None, None].astype(np.float32), L, max_angle=1e-4
    )
    assert (tight[4:] == 0).all()  # worse than max_angle → unclassified


def test_sam_map_chunked_matches_whole(scene, lib, tmp_path):
    import rasterio

    hdr, truth = scene
    cube = open_cube(hdr)
    s1 = sam_map(cube, lib, tmp_path / "a.tif", rows=4)  # first window is entirely no-data
    s2 = sam_map(cube, lib, tmp_path / "b.tif")
    assert s1["windows"] == 3 and s2["windows"] == 1
    with rasterio.open(tmp_path / "a.tif") as a, rasterio.open(tmp_path / "b.tif") as b:
        A, B = a.read(), b.read()
        assert a.count == 2 and a.descriptions == ("class", "angle") and a.nodata == NODATA
        assert a.crs.to_epsg() == 32650 and tuple(a.transform)[:6] == GEO["transform"]
    assert np.array_equal(A, B) and np.array_equal(A[0, 4:].astype(int), truth[4:] + 1)
    assert s1["nodata"] == 40 and s1["unclassified"] == 0 and sum(s1["counts"].values()) == 80
    table = json.loads((tmp_path / "a.classes.json").read_text())
    assert [c["name"] for c in table["classes"]] == lib.names and table["nodata"] == -1
    assert table["classes"][1]["zh"] == "高岭石" and table["classes"][1]["value"] == 2
    assert not list(tmp_path.glob("*.partial"))


def test_all_nodata_cube(lib, tmp_path):
    s = aviris()
    data = np.full((s.bands, 3, 4), np.nan, np.float32)
    cube = array_cube(data, s.centres, fwhm=s.fwhm, good_bands=s.good, **GEO)
    summary = sam_map(cube, lib, tmp_path / "n.tif", rows=1)
    assert summary["nodata"] == 12 and summary["windows"] == 3 and sum(summary["counts"].values()) == 0
    cls, ang = classify_block(np.zeros((5, 2, 2), np.float32), np.eye(5, dtype=np.float32)[:3])
    assert (cls == NODATA).all()  # an all-zero spectrum has no angle


def test_main_mineral_rule(lib):
    names = lib.names
    cls = np.zeros((10, 10), np.float32)
    cls[:3] = names.index("silica") + 1  # background classes never count
    cls[5, :8] = names.index("calcite") + 1
    cls[6, :4] = names.index("jarosite") + 1
    assert main_mineral(cls, names, min_pixels=10) == "calcite"
    assert main_mineral(cls, names, min_pixels=13) == "none"


def test_prepare_needs_shared_bands(lib):
    cube = array_cube(np.ones((3, 2, 2), np.float32), [500.0, 600.0, 700.0])
    with pytest.raises(SpectralError, match="fewer than 3 usable bands"):
        prepare(cube, lib)


def test_cli_map_and_evaluate_sam(scene, tmp_path, capsys):
    import rasterio

    hdr, truth = scene
    assert (
        main(
            [
                "spectral",
                "map",
                str(hdr),
                "--method",
                "sam",
                "--library",
                "minerals",
                "--out",
                str(tmp_path / "m.tif"),
                "--rows",
                "5",
                "--no-progress",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["windows"] == 3 and out["nodata"] == 40
    with rasterio.open(tmp_path / "m.tif") as ds:
        cls = ds.read(1)
    minerals = truth < 7
    assert np.array_equal(cls[4:][minerals[4:]].astype(int), truth[4:][minerals[4:]] + 1)
    try:
        main(
            [
                "spectral",
                "synth",
                "--out",
                str(tmp_path / "syn"),
                "--scenes",
                "6",
                "--size",
                "32",
                "--seed",
                "3",
                "--split",
                "train=0.5,test=0.5",
                "--formats",
                "envi",
                "--lang",
                "en",
                "--no-progress",
            ]
        )
    finally:
        capsys.readouterr()
    assert main(["spectral", "evaluate-sam", str(tmp_path / "syn"), "--out", str(tmp_path / "ev.json")]) == 0
    printed = capsys.readouterr().out
    ev = json.loads((tmp_path / "ev.json").read_text())
    scenes = [json.loads(x) for x in (tmp_path / "syn" / "scenes.jsonl").read_text().splitlines()]
    test_ids = [s["id"] for s in scenes if s["split"] == "test"]
    assert [r["scene"] for r in ev["rows"]] == test_ids and ev["scenes"] == 3
    gt = {s["id"]: s["main_mineral"] for s in scenes}
    assert all(r["gt_main"] == gt[r["scene"]] and r["correct"] == (r["sam_main"] == r["gt_main"]) for r in ev["rows"])
    assert ev["main_mineral_accuracy"] == sum(r["correct"] for r in ev["rows"]) / 3
    assert ev["main_mineral_accuracy"] >= 2 / 3  # SAM is a strong baseline on these scenes
    assert "main mineral accuracy" in printed and all(i in printed for i in test_ids)
    assert main(["spectral", "evaluate-sam", str(tmp_path)]) == 2
    assert "no scenes.jsonl" in capsys.readouterr().err


@pytest.mark.parametrize("interleave", ["bsq", "bil", "bip"])
def test_chunked_raw_strips_are_bit_identical_to_the_float_cube(lib, tmp_path, interleave, monkeypatch):
    """The chunked path classifies raw int16 strips (nodata compared raw, scale applied as read_float does) read one
    strip ahead in a thread: class and angle maps equal classify_block on the whole float cube for every interleave,
    with more strips than the reader's queue and several matrix products per strip."""
    import rasterio

    import geovl.spectral.sam as sam

    s = aviris()
    E = resample(lib.filled(), lib.wavelengths, s.centres, s.fwhm)
    rng = np.random.default_rng(0)
    ab = rng.dirichlet(np.ones(len(lib)), size=(13, 11))  # mixed pixels: angles vary, some above max_angle
    data = np.round(np.einsum("hwk,kb->bhw", ab, E) * 10000 + rng.normal(0, 30, (s.bands, 13, 11))).astype(np.int16)
    data[:, 2, 3] = -9999
    data[:, 7, :] = -9999
    hdr = write_envi(
        tmp_path / "c.img",
        data,
        interleave=interleave,
        wavelengths=s.centres,
        fwhm=s.fwhm,
        good_bands=s.good,
        nodata=-9999,
        scale=10000,
        **GEO,
    )
    cube = open_cube(hdr)
    L, bidx = prepare(cube, lib)
    want_c, want_a = classify_block(cube.read_float(bidx), L)
    assert (want_c == NODATA).sum() == 12 and 0 < (want_c == 0).sum() < want_c.size - 12  # some unclassified, some not
    monkeypatch.setattr(sam, "PIXELS_PER_PRODUCT", 7)  # several products per strip, a short last one
    summary = sam_map(cube, lib, tmp_path / "m.tif", rows=2)
    assert summary["windows"] == 7
    with rasterio.open(tmp_path / "m.tif") as ds:
        got = ds.read()
    # classes equal; angles to float32 rounding (BLAS sums in another order for other product sizes; arccos near 0 amplifies it)
    assert np.array_equal(got[0], want_c) and np.abs(got[1] - want_a).max() < 2e-5


def test_a_failing_strip_read_stops_the_map_with_its_error(scene, lib, tmp_path, monkeypatch):
    hdr, _ = scene
    cube = open_cube(hdr)
    calls = []

    def broken(bands, window):
        calls.append(window.row_off)
        if window.row_off >= 4:
            raise SpectralError(f"{hdr}: truncated at row {window.row_off}")
        return type(cube).read(cube, bands, window)

    monkeypatch.setattr(cube, "read", broken)
    with pytest.raises(SpectralError, match="truncated at row 4"):
        sam_map(cube, lib, tmp_path / "x.tif", rows=4)
    assert not (tmp_path / "x.tif").exists()
