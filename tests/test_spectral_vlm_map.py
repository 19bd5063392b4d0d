"""``geovl spectral vlm-map`` (a spectral VLM's mineralisation probability, window by window → GeoTIFF + PNG)
and ``geovl spectral compare`` (VLM vs SAM vs ground truth on held-out synthetic scenes).

The model is a tiny qwen2-vl with a spectral projector, trained for a few steps on the probability
questions only, so that it answers with a number (greedy "0.xx") and the map has values to blend."""

from __future__ import annotations

import json

import numpy as np
import pytest

from geovl.cli import main
from geovl.spectral import SpectralError
from geovl.spectral.cube import Window
from geovl.spectral.vlm_map import (
    NODATA_RGB,
    RAMP,
    ProbabilityMap,
    colour_ramp,
    parse_probability,
    taper_1d,
    window_grid,
    window_starts,
)
from sft_util import run_cli, train, write_dataset

FAMILY = "qwen2-vl"
SPECTRAL = [
    "spectral=true",
    "lr_spectral=0.05",
    "tune_llm=lora",
    "lr=5e-3",
    "max_steps=10",
    "save_steps=10",
    "lr_scheduler=constant",
    "warmup_ratio=0",
    "min_pixels=1024",
    "max_pixels=1024",
]
GEO = dict(crs="EPSG:32650", transform=(30.0, 0.0, 500000.0, 0.0, -30.0, 4500000.0))
NODATA = -9999


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hs(spectral_scenes):
    return spectral_scenes


@pytest.fixture(scope="module")
def _runs():
    return {}


@pytest.fixture
def final(hs, tiny_model_dir, tmp_path_factory, capsys, _runs):
    """OUT/final of a spectral run trained on the probability questions (built once per module)."""
    if "final" not in _runs:
        from geovl.data.io import read_samples

        data = write_dataset(
            hs / "probability-train.parquet",
            [s for s in read_samples(hs / "train.parquet") if s["meta"]["task"] == "probability"],
        )
        out = tmp_path_factory.mktemp("vlm-map-run") / "run"
        rc, err = train(capsys, tiny_model_dir(FAMILY), data, out, *SPECTRAL)
        assert rc == 0, err[-3000:]
        _runs["final"] = out / "final"
    return _runs["final"]


@pytest.fixture(scope="module")
def big_cube(tmp_path_factory):
    """A 64 × 80 GF-5B GeoTIFF cube (int16 × 10000) whose top-left 32 × 32 pixels are no-data."""
    from geovl.spectral.readers import write_cube_geotiff
    from geovl.spectral.sensors import get_sensor
    from geovl.spectral.synth import REFLECTANCE_SCALE, endmembers, make_scene

    s = get_sensor("gf5b")
    data = make_scene(7, 0, 80, s, endmembers(s)).cube[:, :64, :].copy()
    data[:, :32, :32] = NODATA
    path = tmp_path_factory.mktemp("big") / "cube.tif"
    write_cube_geotiff(
        path, data, wavelengths=s.centres, fwhm=s.fwhm, good_bands=s.good, nodata=NODATA, scale=REFLECTANCE_SCALE, **GEO
    )
    return path


# -- window grid, blending, parsing, colours -----------------------------------------------------


def test_window_starts_end_flush_with_the_edge():
    assert window_starts(80, 32, 8) == [0, 24, 48]
    assert window_starts(64, 32, 8) == [0, 24, 32]  # last window moved back to the edge, not clipped
    assert window_starts(57, 32, 0) == [0, 25]
    assert window_starts(32, 32, 8) == [0]
    assert window_starts(20, 32, 8) == [0]  # smaller than a tile: one window of the cube's size
    assert window_grid(20, 70, 32, 8) == [Window(col_off=c, row_off=0, width=32, height=20) for c in (0, 24, 38)]
    for bad in ((32, 32), (32, -1), (4, 0)):
        with pytest.raises(SpectralError, match="--overlap|--tile"):
            window_starts(100, *bad)


@pytest.mark.parametrize("tile,overlap", [(8, 0), (16, 5), (32, 8), (32, 31)])
def test_window_grid_covers_every_pixel_with_full_tiles(tile, overlap):
    for rows, cols in [(1, 1), (7, 50), (tile, tile), (tile + 1, 3 * tile - 1), (97, 64), (150, 151)]:
        wins = window_grid(rows, cols, tile, overlap)
        cover = np.zeros((rows, cols), int)
        for w in wins:
            assert w.row_off >= 0 and w.col_off >= 0 and w.row_off + w.height <= rows and w.col_off + w.width <= cols
            assert (w.height, w.width) == (min(tile, rows), min(tile, cols))
            cover[w.toslices()] += 1
        assert cover.min() >= 1, (rows, cols)
        for size in (rows, cols):
            starts = window_starts(size, tile, overlap)
            assert starts[0] == 0 and starts[-1] == max(0, size - tile)
            gaps = np.diff(starts)
            assert (gaps > 0).all() and (gaps <= tile - overlap).all()  # neighbours overlap by >= overlap px


def test_probability_map_mean_and_taper_blends():
    a, b = Window(col_off=0, row_off=0, width=4, height=4), Window(col_off=2, row_off=0, width=4, height=4)
    valid = np.ones((4, 4), bool)
    m = ProbabilityMap(5, 6, overlap=2, blend="mean")
    m.add(a, 0.2, valid)
    b_valid = valid.copy()
    b_valid[1, 0] = False  # pixel (1, 2): only window a counts
    m.add(b, 0.6, b_valid)
    out = m.result()
    assert out.dtype == np.float32 and out.shape == (5, 6)
    assert np.allclose(out[:4, :2], 0.2) and np.allclose(out[:4, 4:], 0.6)
    assert np.isclose(out[0, 2], 0.4) and np.isclose(out[1, 2], 0.2) and np.isclose(out[3, 3], 0.4)
    assert np.isnan(out[4]).all()  # row 4: no window

    assert np.allclose(taper_1d(4, 2), [1 / 3, 2 / 3, 2 / 3, 1 / 3]) and np.allclose(
        taper_1d(7, 2), [1 / 3, 2 / 3, 1, 1, 1, 2 / 3, 1 / 3]
    )
    t = ProbabilityMap(4, 6, overlap=2, blend="taper")
    t.add(a, 0.2, valid)
    t.add(b, 0.6, valid)
    out = t.result()
    # columns 2, 3: weights a 2/3 b 1/3, then a 1/3 b 2/3; single-window columns keep their value
    assert np.allclose(out[:, 2], (0.2 * 2 + 0.6) / 3) and np.allclose(out[:, 3], (0.2 + 0.6 * 2) / 3)
    assert np.allclose(out[:, :2], 0.2) and np.allclose(out[:, 4:], 0.6)
    with pytest.raises(SpectralError, match="--blend"):
        ProbabilityMap(2, 2, blend="max")


def test_parse_probability():
    assert parse_probability("0.35") == 0.35 and parse_probability("概率为0.80。") == 0.8
    assert parse_probability("1") == 1.0 and parse_probability("0") == 0.0
    assert parse_probability("35%") == pytest.approx(0.35)
    for junk in ("1.5", "-0.2", "no idea", "", None, "3 km", "不确定"):
        assert parse_probability(junk) is None, junk


def test_colour_ramp():
    rgb = colour_ramp(np.array([[0.0, 0.5, 1.0, np.nan]], np.float32))
    assert rgb.dtype == np.uint8 and rgb.shape == (1, 4, 3)
    assert rgb[0, 0].tolist() == RAMP[0].tolist() and rgb[0, 1].tolist() == RAMP[2].tolist()
    assert rgb[0, 2].tolist() == RAMP[-1].tolist() and tuple(rgb[0, 3]) == NODATA_RGB


# -- vlm-map -----------------------------------------------------------------------------------


def cli(capsys, *argv) -> tuple[int, str, str]:
    """``geovl ARGV`` in this process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _files(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_vlm_map_cli_writes_a_georeferenced_probability_map(final, big_cube, tmp_path, capsys):
    import rasterio
    from PIL import Image

    out = tmp_path / "maps" / "prob.tif"
    rc, printed, err = cli(
        capsys,
        "spectral",
        "vlm-map",
        big_cube,
        "--model",
        final,
        "--out",
        out,
        "--tile",
        "32",
        "--overlap",
        "8",
        "--batch-size",
        "4",
        "--device",
        "cpu",
        "--no-progress",
    )
    assert rc == 0, err[-3000:]
    assert _files(out.parent) == ["prob.json", "prob.png", "prob.tif"]  # no .partial left
    summary = json.loads((out.parent / "prob.json").read_text())
    assert json.loads(printed) == summary
    # 64 × 80 with tile 32 / overlap 8: row starts 0, 24, 32; column starts 0, 24, 48
    assert summary["windows"] == 9 == len(window_grid(64, 80, 32, 8))
    assert summary["skipped_nodata"] == 1  # window (0, 0) lies in the no-data corner
    assert summary["answered"] + summary["unparsed"] + summary["skipped_nodata"] == summary["windows"]
    assert summary["answered"] == 8, summary["unparsed_examples"]  # the trained model answers with numbers
    assert summary["forward_calls"] >= 2 and summary["forward_calls_per_window"] == summary["forward_calls"] / 8
    assert summary["crs"] == GEO["crs"] and summary["transform"] == list(GEO["transform"])

    with rasterio.open(out) as ds, rasterio.open(big_cube) as src:
        assert ds.crs == src.crs and ds.transform == src.transform
        assert (ds.count, ds.height, ds.width) == (1, 64, 80) and ds.dtypes[0] == "float32" and np.isnan(ds.nodata)
        prob = ds.read(1)
    nodata = np.zeros((64, 80), bool)
    nodata[:32, :32] = True
    assert np.isnan(prob[nodata]).all()  # the skipped window and the no-data pixels of its neighbours
    assert np.isfinite(prob[~nodata]).all() and summary["mapped_pixels"] == int((~nodata).sum())
    assert ((prob[~nodata] >= 0) & (prob[~nodata] <= 1)).all()
    assert summary["probability"]["min"] == pytest.approx(float(prob[~nodata].min()))

    png = np.asarray(Image.open(out.parent / "prob.png").convert("RGB"))
    assert png.shape == (64, 80, 3)
    assert (png[nodata] == NODATA_RGB).all() and not (png[~nodata] == NODATA_RGB).all(axis=-1).any()


class _DiesAfter:
    """The engine, killed (an exception) after ``n`` generate calls."""

    def __init__(self, engine, n):
        self._engine, self._left = engine, n

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def generate(self, reqs, params):
        if self._left == 0:
            raise RuntimeError("killed")
        self._left -= 1
        return self._engine.generate(reqs, params)


def test_vlm_map_resumes_from_its_journal(final, big_cube, tmp_path):
    """The resume rule of geovl map (geovl.imagery.tiles.TileJournal): an interrupted run continues with
    only the unanswered windows and gives the map of an uninterrupted run."""
    import rasterio

    from geovl.inference.engine import LocalEngine
    from geovl.spectral.readers import open_cube
    from geovl.spectral.vlm_map import vlm_map

    engine = LocalEngine(str(final), device="cpu", batch_size=4)
    kw = dict(tile=32, overlap=8, meta={"model": "m"})
    with open_cube(big_cube) as cube:
        full = vlm_map(cube, engine, tmp_path / "full.tif", **kw)
        with pytest.raises(RuntimeError, match="killed"):
            vlm_map(cube, _DiesAfter(engine, 1), tmp_path / "r.tif", **kw)
        journal = tmp_path / "r.windows.jsonl"
        lines = [json.loads(x) for x in journal.read_text(encoding="utf-8").splitlines()]
        assert lines[0]["schema"] == "geovl.vlm-map/1" and not (tmp_path / "r.tif").exists()
        assert [x["status"] for x in lines[1:]] == ["nodata"] + ["answered"] * 4  # window (0, 0), then one batch
        with open(journal, "a", encoding="utf-8") as f:
            f.write('{"row": 2, "col"')  # torn while writing
        with pytest.raises(SpectralError, match=r"different run \(tile: 32 then, 40 now"):
            vlm_map(cube, engine, tmp_path / "r.tif", **(kw | {"tile": 40}), resume=True)
        calls0 = engine.stats.forward_calls
        res = vlm_map(cube, engine, tmp_path / "r.tif", **kw, resume=True)
    assert res["resumed"] == 5 and res["windows"] == full["windows"] == 9
    assert (res["answered"], res["unparsed"], res["skipped_nodata"]) == (full["answered"], full["unparsed"], 1)
    assert 0 < res["forward_calls"] == engine.stats.forward_calls - calls0 < full["forward_calls"]
    assert not journal.exists()  # every output written: nothing left to resume
    with rasterio.open(tmp_path / "full.tif") as a, rasterio.open(tmp_path / "r.tif") as b:
        assert np.array_equal(a.read(1), b.read(1), equal_nan=True)


def test_vlm_map_api_zh_mean_blend_and_a_cube_smaller_than_a_tile(final, hs, tmp_path):
    from geovl.inference.engine import LocalEngine
    from geovl.spectral.readers import open_cube
    from geovl.spectral.vlm_map import vlm_map

    scene = json.loads((hs / "scenes.jsonl").read_text().splitlines()[0])
    engine = LocalEngine(str(final), device="cpu", batch_size=2)
    with open_cube(hs / scene["cube"]) as cube:  # 32 × 32 ENVI cube, tile 64: one window of 32 × 32
        s = vlm_map(
            cube,
            engine,
            tmp_path / "one.tif",
            png=tmp_path / "preview" / "one-preview.png",
            tile=64,
            overlap=16,
            lang="zh",
            blend="mean",
        )
    assert s["windows"] == 1 and s["skipped_nodata"] == 0 and s["tile"] == 64
    assert s["question"].startswith("该区域的成矿概率") and s["forward_calls"] == engine.stats.forward_calls > 0
    assert (tmp_path / "preview" / "one-preview.png").is_file() and (tmp_path / "one.json").is_file()
    import rasterio

    with rasterio.open(tmp_path / "one.tif") as ds:
        prob = ds.read(1)
        assert ds.crs.to_string() == "EPSG:32650"
    assert s["answered"] == 1, s["unparsed_examples"]
    assert np.allclose(prob, prob[0, 0]) and 0 <= prob[0, 0] <= 1  # one window: its answer everywhere
    assert s["probability"]["min"] == pytest.approx(float(prob[0, 0]))


def test_vlm_map_refuses_a_model_without_projector(tiny_model_dir, big_cube, tmp_path, capsys):
    model = tiny_model_dir(FAMILY)
    out = tmp_path / "o" / "prob.tif"
    rc, err = run_cli(
        capsys, "spectral", "vlm-map", big_cube, "--model", model, "--out", out, "--device", "cpu", "--no-progress"
    )
    assert rc == 2 and f"{model}: this model has no spectral projector" in err and "光谱投影器" in err
    assert _files(out.parent) == []


def test_vlm_map_api_refuses_before_writing(tiny_model_dir, final, big_cube, tmp_path):
    from geovl.inference.engine import LocalEngine
    from geovl.spectral.readers import open_cube, write_cube_geotiff
    from geovl.spectral.vlm_map import vlm_map

    plain = LocalEngine(str(tiny_model_dir(FAMILY)), device="cpu")
    with (
        open_cube(big_cube) as cube,
        pytest.raises(SpectralError, match="plain-model: this model has no spectral projector"),
    ):
        vlm_map(cube, plain, tmp_path / "a.tif", meta={"model": "plain-model"})
    write_cube_geotiff(
        tmp_path / "few.tif", np.full((5, 40, 40), 0.3, np.float32), wavelengths=[500, 600, 700, 800, 900]
    )
    with open_cube(tmp_path / "few.tif") as cube, pytest.raises(SpectralError, match="few.tif: the cube has 5 bands"):
        vlm_map(cube, LocalEngine(str(final), device="cpu"), tmp_path / "b.tif")
    assert _files(tmp_path) == ["few.tif"]


def test_vlm_map_refuses_cubes_with_other_bands(final, tmp_path, capsys):
    from geovl.spectral.readers import write_cube_geotiff
    from geovl.spectral.sensors import aviris, get_sensor

    av = aviris()
    other = tmp_path / "aviris.tif"
    write_cube_geotiff(other, np.full((av.bands, 40, 40), 0.3, np.float32), wavelengths=av.centres)
    gf = get_sensor("gf5b")
    shifted = tmp_path / "shifted.tif"
    write_cube_geotiff(shifted, np.full((gf.bands, 40, 40), 0.3, np.float32), wavelengths=gf.centres + 5.0)
    for cube, msg in (
        (other, f"{other}: the cube has {av.bands} bands but the model's spectral projector takes 330"),
        (shifted, f"{shifted}: band 1 is at"),
    ):
        out = tmp_path / f"o-{cube.stem}" / "prob.tif"
        rc, err = run_cli(
            capsys, "spectral", "vlm-map", cube, "--model", final, "--out", out, "--device", "cpu", "--no-progress"
        )
        assert rc == 2 and msg in err, err[-2000:]
        assert _files(out.parent) == []
    # option errors come before the model is loaded
    rc, err = run_cli(capsys, "spectral", "vlm-map", other, "--model", final, "--out", tmp_path / "p.png")
    assert rc == 2 and "--out must be a GeoTIFF" in err
    rc, err = run_cli(
        capsys,
        "spectral",
        "vlm-map",
        other,
        "--model",
        final,
        "--out",
        tmp_path / "p.tif",
        "--tile",
        "32",
        "--overlap",
        "32",
    )
    assert rc == 2 and "--overlap must be >= 0 and smaller than --tile (32)" in err
    rc, err = run_cli(
        capsys, "spectral", "vlm-map", tmp_path / "nowhere.tif", "--model", final, "--out", tmp_path / "p.tif"
    )
    assert rc == 2 and f"{tmp_path / 'nowhere.tif'}: no such file" in err
    rc, err = run_cli(
        capsys, "spectral", "vlm-map", other, "--model", tmp_path / "no-model", "--out", tmp_path / "p.tif"
    )
    assert rc == 2 and f"{tmp_path / 'no-model'}: no such model folder" in err
    assert not (tmp_path / "p.tif").exists()


# -- compare -----------------------------------------------------------------------------------


def _scenes(hs, split="test"):
    return [s for s in map(json.loads, (hs / "scenes.jsonl").read_text().splitlines()) if s["split"] == split]


def test_compare_on_eval_predictions(final, hs, tmp_path, capsys):
    from geovl.spectral.sam import evaluate_sam

    preds = tmp_path / "p.jsonl"
    rc, err = run_cli(
        capsys,
        "eval",
        "--model",
        final,
        "--data",
        hs / "test.parquet",
        "--out",
        preds,
        "--device",
        "cpu",
        "--max-new-tokens",
        "8",
        "--no-progress",
    )
    assert rc == 0, err[-2000:]
    rc, printed, err = cli(
        capsys,
        "spectral",
        "compare",
        hs,
        "--predictions",
        preds,
        "--out",
        tmp_path / "t.json",
        "--md",
        tmp_path / "t.md",
    )
    assert rc == 0, err[-2000:]
    n = len(_scenes(hs))
    t = json.loads((tmp_path / "t.json").read_text())
    assert t["scenes"] == n == 3 and t["langs"] == ["en", "zh"]
    assert t["counts"]["answers"] == 3 * 2 * n and t["counts"]["missing"] == 0 and t["missing"] == []
    assert [r["metric"] for r in t["table"]] == [
        "alteration_accuracy",
        "main_mineral_accuracy",
        "probability_mae",
        "probability_within_0.1",
    ]
    assert all(r["n_vlm"] == 2 * n and r["n_sam"] == n for r in t["table"])
    assert [r["scene"] for r in t["rows"]] == [s["id"] for s in _scenes(hs)]
    ev = evaluate_sam(hs, "test")  # SAM's column agrees with geovl spectral evaluate-sam
    assert t["sam"]["alteration"]["alteration_accuracy"] == ev["alteration_accuracy"]
    assert t["sam"]["main_mineral"]["main_mineral_accuracy"] == ev["main_mineral_accuracy"]
    assert [r["sam"]["main_mineral"] for r in t["rows"]] == [r["sam_main"] for r in ev["rows"]]
    header = printed.splitlines()[0]
    assert "VLM" in header and "SAM" in header and "VLM en" in header and "VLM zh" in header
    md = (tmp_path / "t.md").read_text()
    assert md.startswith("| metric / 指标 | VLM | VLM en | VLM zh | SAM |") and "probability MAE" in md


def _record(scene, lang, task, prediction, **meta):
    from geovl.spectral.synth_write import QTYPE, questions

    truth = {k: scene[k] for k in ("alteration", "main_mineral", "probability")}
    q = {t: (qq, a) for t, _, qq, a in questions(truth, lang)}[task]
    return {
        "id": f"{scene['id']}-{lang}-{task}",
        "qtype": QTYPE[task],
        "question": q[0],
        "reference": q[1],
        "prediction": prediction,
        "lang": lang,
        "meta": {"scene": scene["id"], "task": task, **meta},
    }


def _known_answers(hs) -> list[dict]:
    """en: everything right (probability off by 0.05); zh: alteration always wrong, main mineral right for
    scene 0, unreadable for scene 1, missing for scene 2; probability exact, 1.5 (out of range), 不确定."""
    from geovl.spectral.synth_write import NAMES, NONE

    def name(key, lang):
        return NONE[lang] if key == "none" else NAMES[key][lang]

    recs = []
    for i, s in enumerate(_scenes(hs)):
        p = s["probability"]
        off = p - 0.05 if p >= 0.5 else p + 0.05
        recs += [
            _record(s, "en", "alteration", "Yes, there is alteration." if s["alteration"] else "No."),
            _record(
                s,
                "en",
                "main_mineral",
                f"The main alteration mineral is {name(s['main_mineral'], 'en')}."
                if i == 0
                else name(s["main_mineral"], "en"),
            ),
            _record(s, "en", "probability", f"{off:.2f}"),
            _record(s, "zh", "alteration", "否" if s["alteration"] else "是"),
            _record(s, "zh", "probability", [f"概率为{p:.2f}", "1.5", "不确定"][i]),
        ]
        if i < 2:
            recs.append(_record(s, "zh", "main_mineral", name(s["main_mineral"], "zh") if i == 0 else "我不知道"))
    train_scene = _scenes(hs, "train")[0]
    recs.append(_record(train_scene, "en", "alteration", "yes"))  # outside the split: counted, not used
    recs.append(
        {"id": "other", "qtype": "yes_no", "question": "?", "reference": "yes", "prediction": "yes", "meta": {}}
    )
    return recs


def test_compare_exact_accuracies_from_known_answers(hs, tmp_path, capsys):
    preds = tmp_path / "known.jsonl"
    preds.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in _known_answers(hs)), encoding="utf-8")
    rc, printed, err = cli(capsys, "spectral", "compare", hs, "--predictions", preds, "--out", tmp_path / "t.json")
    assert rc == 0, err
    t = json.loads((tmp_path / "t.json").read_text())
    s2 = _scenes(hs)[2]["id"]
    assert t["missing"] == [{"scene": s2, "task": "main_mineral", "lang": "zh"}]
    assert t["counts"]["outside_split"] == 1 and t["counts"]["not_synth"] == 1
    vlm, en, zh = t["vlm"], t["vlm_by_lang"]["en"], t["vlm_by_lang"]["zh"]
    assert vlm["alteration"] == {"n": 6, "unparsed": 0, "alteration_accuracy": 0.5}
    assert en["alteration"]["alteration_accuracy"] == 1.0 and zh["alteration"]["alteration_accuracy"] == 0.0
    assert vlm["main_mineral"] == {"n": 5, "unparsed": 1, "main_mineral_accuracy": 0.8}
    assert en["main_mineral"]["main_mineral_accuracy"] == 1.0 and zh["main_mineral"]["main_mineral_accuracy"] == 0.5
    assert vlm["probability"]["n"] == 6 and vlm["probability"]["unparsed"] == 2
    assert vlm["probability"]["probability_mae"] == pytest.approx(0.15 / 4)
    assert vlm["probability"]["probability_within_0.1"] == pytest.approx(4 / 6)
    assert en["probability"]["probability_mae"] == pytest.approx(0.05) and zh["probability"][
        "probability_mae"
    ] == pytest.approx(0.0)
    assert zh["probability"]["probability_within_0.1"] == pytest.approx(1 / 3)
    row = {r["metric"]: r for r in t["table"]}
    assert row["main_mineral_accuracy"]["vlm"] == 0.8 and row["main_mineral_accuracy"]["n_vlm"] == 5
    assert "missing VLM predictions / 缺少预测: 1" in printed and f"{s2}/main_mineral/zh" in printed
    assert "80.0 %" in printed and "50.0 %" in printed


def test_sam_probability_uses_the_scene_formula_with_one_hot_abundances():
    from geovl.spectral.compare import sam_probability
    from geovl.spectral.sam import NODATA

    names = ["alunite", "kaolinite", "muscovite", "vegetation"]
    cls = np.full((4, 5), 4.0)  # vegetation: weight 0
    cls[:2] = 3.0  # muscovite, weight 1.0, on 10 pixels
    cls[3] = NODATA  # 5 no-data pixels are left out of the mean
    cls[2, 0] = 0.0  # unclassified: weight 0
    assert sam_probability(cls, names) == round(1 - np.exp(-8.0 * 10 / 15), 2)
    assert sam_probability(np.full((2, 2), NODATA), names) is None
    assert sam_probability(np.full((2, 2), 4.0), names) == 0.0


def test_compare_errors_name_the_file(hs, tmp_path, capsys):
    rc, err = run_cli(capsys, "spectral", "compare", hs, "--predictions", tmp_path / "none.jsonl")
    assert rc == 2 and f"{tmp_path / 'none.jsonl'}: no such predictions file" in err
    unrelated = tmp_path / "unrelated.jsonl"
    unrelated.write_text(
        json.dumps({"id": "a", "qtype": "yes_no", "question": "?", "reference": "yes", "prediction": "yes"}) + "\n"
    )
    rc, err = run_cli(capsys, "spectral", "compare", hs, "--predictions", unrelated)
    assert rc == 2 and f"{unrelated}: no prediction matches a scene of this split" in err
    rc, err = run_cli(capsys, "spectral", "compare", tmp_path, "--predictions", unrelated)
    assert rc == 2 and "no scenes.jsonl" in err
    assert not list(tmp_path.glob("*.json"))
