"""`geovl spectral synth`: determinism, ground truth that agrees with the cube, Q/A files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from geovl.cli import main
from geovl.spectral import SpectralError

N_SCENES = 8
SIZE = 32


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    from geovl.spectral.library import load_usgs

    try:
        load_usgs()
    except SpectralError as e:
        pytest.skip(str(e))
    d = tmp_path_factory.mktemp("spsynth") / "out"
    assert (
        main(
            [
                "spectral",
                "synth",
                "--out",
                str(d),
                "--scenes",
                str(N_SCENES),
                "--size",
                str(SIZE),
                "--seed",
                "7",
                "--split",
                "train=0.5,test=0.5",
                "--no-progress",
            ]
        )
        == 0
    )
    return d


def _scenes(d):
    return [json.loads(line) for line in (d / "scenes.jsonl").read_text().splitlines()]


def test_layout_and_counts(synth_dir):
    from geovl.data.io import count_samples, read_samples
    from geovl.data.schema import validate_sample

    scenes = _scenes(synth_dir)
    assert len(scenes) == N_SCENES and {s["split"] for s in scenes} == {"train", "test"}
    assert {s["alteration"] for s in scenes} == {True, False}  # this seed has both kinds
    total = 0
    for split in ("train", "test"):
        n_sc = sum(s["split"] == split for s in scenes)
        assert count_samples(synth_dir / f"{split}.parquet") == n_sc * 3 * 2
        assert (synth_dir / f"{split}.rejects.jsonl").read_text() == ""
        for smp in read_samples(synth_dir / f"{split}.parquet"):
            validate_sample(smp)
            total += 1
    assert total == N_SCENES * 6
    rendering = json.loads((synth_dir / "rendering.json").read_text())
    assert rendering["name"] == "alteration" and rendering["band_wavelengths"][1] == pytest.approx(2200, abs=5)
    classes = json.loads((synth_dir / "classes.json").read_text())
    assert [m["key"] for m in classes["minerals"]][:2] == ["alunite", "kaolinite"] and "Kokaly" in classes["spectra"]
    assert not list(synth_dir.rglob("*.partial"))


def test_qa_answers_match_ground_truth(synth_dir):
    from geovl.data.io import read_samples
    from geovl.spectral.synth_write import NAMES

    by_id = {s["id"]: s for s in _scenes(synth_dir)}
    seen = set()
    for split in ("train", "test"):
        for smp in read_samples(synth_dir / f"{split}.parquet"):
            m = smp["meta"]
            sc = by_id[m["scene"]]
            seen.add((m["scene"], m["lang"], m["task"]))
            assert m["rendering"] == "alteration" and m["sensor"] == "gf5b" and m["bands"] == 330
            assert smp["images"][0] == (synth_dir / sc["image"]).read_bytes()
            assert (synth_dir / m["cube"]).is_file() and m["cube"].endswith("cube.hdr")
            q = smp["messages"][0]["content"][-1]["text"]
            if m["task"] == "alteration":
                assert smp["qtype"] == "yes_no"
                assert (
                    smp["answer"] == {"zh": ("是", "否"), "en": ("yes", "no")}[m["lang"]][0 if sc["alteration"] else 1]
                )
                assert q.startswith("图中是否存在蚀变？" if m["lang"] == "zh" else "Is there alteration")
            elif m["task"] == "main_mineral":
                assert smp["qtype"] == "choice" and smp["answer"] in m["choices"]
                want = (
                    {"zh": "无", "en": "none"}[m["lang"]]
                    if sc["main_mineral"] == "none"
                    else NAMES[sc["main_mineral"]][m["lang"]]
                )
                assert smp["answer"] == want and all(c in q for c in m["choices"])
            else:
                assert smp["qtype"] == "number" and smp["answer"] == f"{sc['probability']:.2f}"
                assert 0 <= float(smp["answer"]) <= 1 and len(smp["answer"]) == 4
    assert len(seen) == N_SCENES * 6


def test_loads_with_datasets(synth_dir):
    from datasets import load_dataset

    ds = load_dataset(
        "parquet", data_files={"train": str(synth_dir / "train.parquet"), "test": str(synth_dir / "test.parquet")}
    )
    assert ds["train"].num_rows + ds["test"].num_rows == N_SCENES * 6
    row = ds["test"][0]
    assert json.loads(row["meta"])["cube"].startswith("scenes/") and row["images"][0][:8] == b"\x89PNG\r\n\x1a\n"


def test_ground_truth_agrees_with_cube(synth_dir):
    import rasterio

    from geovl.spectral.library import named_library
    from geovl.spectral.readers import open_cube
    from geovl.spectral.sam import classify_block, prepare
    from geovl.spectral.synth import COPPER_WEIGHT, K_PIXEL, K_SCENE, MINERAL_KEYS, round2

    lib = named_library("minerals")
    w = np.array([COPPER_WEIGHT[k] for k in MINERAL_KEYS])[:, None, None]
    pure_checked = 0
    for s in _scenes(synth_dir):
        env, tif = open_cube(synth_dir / s["cube"]), open_cube(synth_dir / s["cube_geotiff"])
        assert np.array_equal(env.read(), tif.read()) and env.shape == (330, SIZE, SIZE)
        assert env.crs == "EPSG:32650" and env.transform == tif.transform
        with rasterio.open(synth_dir / s["abundance"]) as ds:
            ab = ds.read()
        with rasterio.open(synth_dir / s["mineral_map"]) as ds:
            mm = ds.read(1)
            assert ds.crs.to_epsg() == 32650
        with rasterio.open(synth_dir / s["probability_map"]) as ds:
            pm = ds.read(1)
        A = ab[:7]
        assert np.allclose(ab.sum(0), 1.0, atol=1e-5)
        assert np.array_equal(mm, np.where(A.max(0) >= 0.3, A.argmax(0) + 1, 0))
        assert np.allclose(pm, 1 - np.exp(-K_PIXEL * (w * A).sum(0)), atol=1e-6)
        assert s["probability"] == round2(1 - np.exp(-K_SCENE * (w * A).sum(0).mean()))
        assert s["alteration"] == bool((mm > 0).any())
        assert s["main_mineral"] == (MINERAL_KEYS[int(A.sum((1, 2)).argmax())] if s["alteration"] else "none")
        assert s["mineral_pixels"]["background"] == int((mm == 0).sum())
        # SAM on pure pixels recovers their mineral: the cube really contains the ground truth
        pure = A.max(0) == 1.0
        if pure.any():
            L, bidx = prepare(env, lib)
            cls, ang = classify_block(env.read_float(bidx), L, max_angle=None)
            assert np.array_equal(cls[pure].astype(int), A.argmax(0)[pure] + 1)
            assert float(ang[pure].max()) < 0.03
            pure_checked += int(pure.sum())
    assert pure_checked > 50


def test_deterministic_for_a_seed(synth_dir, tmp_path):
    from geovl.data.io import read_samples

    main(
        [
            "spectral",
            "synth",
            "--out",
            str(tmp_path / "a"),
            "--scenes",
            "3",
            "--size",
            str(SIZE),
            "--seed",
            "7",
            "--split",
            "train=0.5,test=0.5",
            "--formats",
            "envi",
            "--no-progress",
        ]
    )
    main(
        [
            "spectral",
            "synth",
            "--out",
            str(tmp_path / "b"),
            "--scenes",
            "3",
            "--size",
            str(SIZE),
            "--seed",
            "8",
            "--formats",
            "envi",
            "--no-progress",
        ]
    )
    for s in _scenes(tmp_path / "a"):  # same seed → identical scenes (the first 3 of the fixture)
        assert (tmp_path / "a" / s["cube"].replace(".hdr", ".img")).read_bytes() == (
            synth_dir / s["cube"].replace(".hdr", ".img")
        ).read_bytes()
        assert (tmp_path / "a" / s["image"]).read_bytes() == (synth_dir / s["image"]).read_bytes()
    a = {s["id"]: s for s in _scenes(tmp_path / "a")}
    ref = {s["id"]: s for s in _scenes(synth_dir)}

    def strip(s):  # the split depends on the scene count; the GeoTIFF was not written in run a
        return {k: v for k, v in s.items() if k not in ("split", "cube_geotiff")}

    assert set(a) <= set(ref) and all(strip(a[k]) == strip(ref[k]) for k in a)
    b0 = (tmp_path / "b" / _scenes(tmp_path / "b")[0]["cube"].replace(".hdr", ".img")).read_bytes()
    assert b0 != (tmp_path / "a" / _scenes(tmp_path / "a")[0]["cube"].replace(".hdr", ".img")).read_bytes()
    ans = [(x["id"], x["answer"]) for x in read_samples(tmp_path / "a" / "train.parquet")]
    assert ans and all(aid.startswith("sp7-") for aid, _ in ans)


def test_synth_refuses_non_empty_dir_and_bad_options(synth_dir, tmp_path, capsys):
    assert main(["spectral", "synth", "--out", str(synth_dir), "--scenes", "1", "--no-progress"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (
        main(["spectral", "synth", "--out", str(tmp_path / "x"), "--scenes", "1", "--formats", "hdf", "--no-progress"])
        == 2
    )
    assert "--formats" in capsys.readouterr().err


def test_aviris_sensor(tmp_path):
    from geovl.spectral.readers import open_cube
    from geovl.spectral.synth_write import synthesize

    try:
        s = synthesize(
            tmp_path / "av",
            2,
            sensor="aviris",
            size=16,
            seed=1,
            split="test=1",
            formats="geotiff",
            langs="en",
            rendering="swir",
            progress=False,
        )
    except SpectralError as e:
        pytest.skip(str(e))
    assert s["bands"] == 224 and s["samples"] == 2 * 3
    sc = _scenes(tmp_path / "av")[0]
    c = open_cube(tmp_path / "av" / sc["cube"])
    assert c.fmt == "geotiff" and c.bands == 224 and (~c.good_bands).sum() > 10
    assert json.loads((tmp_path / "av" / "rendering.json").read_text())["name"] == "swir"
