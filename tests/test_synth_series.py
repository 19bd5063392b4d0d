"""geovl data synth --dates N: time series of places with exact truth, checked against the written class maps."""

from __future__ import annotations

import hashlib
import io
import json
import re
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from geovl.data.io import read_samples
from geovl.data.schema import message_text, validate_sample
from geovl.evaluate.normalize import is_correct, parse_date, parse_yes_no
from geovl.imagery.geotiff import read_raster
from geovl.synth import SynthError, synthesize
from geovl.synth.classes import BUILDING, BUILTUP, CROPLAND, FOREST
from geovl.synth.qa import UNITS, round_half_up
from geovl.synth.series import make_series

N_PLACES, N_DATES, SIZE, SEED, PIXEL = 16, 4, 96, 7, 10.0
ARGS = dict(scenes=N_PLACES, dates=N_DATES, seed=SEED, size=SIZE, pixel_size=PIXEL, progress=False)
ISO = re.compile(r"^\d{4}-\d{2}-\d{2}$")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("series") / "a"
    summary = synthesize(out, **ARGS)
    rows = [r for name in ("train", "test") for r in read_samples(out / f"{name}.parquet")]
    places = {json.loads(x)["id"]: json.loads(x) for x in (out / "scenes.jsonl").read_text("utf-8").splitlines()}
    maps = {sid: [read_raster(out / rec["class_maps"][d]).data[0] for d in rec["dates"]] for sid, rec in places.items()}
    return out, summary, rows, places, maps


def test_samples_are_dated_multi_image_questions(run):
    out, summary, rows, places, _ = run
    assert summary["samples"] == len(rows) > 0 and summary["splits"]["train"]["conserved"]
    for r in rows:
        validate_sample(r)
        dates = r["meta"]["dates"]
        assert len(dates) == N_DATES == len(r["images"]) and all(ISO.match(d) for d in dates)
        years = [int(d[:4]) for d in dates]
        assert all(1 <= b - a <= 2 for a, b in zip(years, years[1:]))  # years apart, in order
        assert len({d[4:] for d in dates}) == 1  # one season
        text = message_text(r["messages"][0])
        lang = r["meta"]["lang"]
        for i, d in enumerate(dates, 1):  # every image's number and date is in the prompt
            assert (f"影像{i}（{d}）" if lang == "zh" else f"Image {i} ({d})") in text
        # the images are the place's PNGs of those dates, in date order
        assert r["images"] == [(out / p).read_bytes() for p in r["meta"]["image_files"]]
        assert r["meta"]["image_files"] == [places[r["meta"]["scene"]]["images"][d] for d in dates]
        assert Image.open(io.BytesIO(r["images"][0])).size == (SIZE, SIZE)
        assert r["qtype"] in ("date", "area", "yes_no")
    assert {r["meta"]["lang"] for r in rows} == {"zh", "en"}
    assert set(summary["by_task"]) == {
        "series_building_year",
        "series_cropland_loss",
        "series_forest_interval",
        "series_builtup_growth",
    }


def test_building_year_is_the_first_date_with_buildings_on_cropland(run):
    _, _, rows, _, maps = run
    asked = [r for r in rows if r["meta"]["task"] == "series_building_year"]
    assert asked and len({r["answer"] for r in asked}) > 2
    for r in asked:
        m = maps[r["meta"]["scene"]]
        on_crop = [int(((c == BUILDING) & (m[0] == CROPLAND)).sum()) for c in m]
        k = next(i for i, px in enumerate(on_crop) if px > 0)
        assert k >= 1 and on_crop[k - 1] == 0
        year = r["meta"]["dates"][k][:4]
        assert r["answer"] == (f"{year}年" if r["meta"]["lang"] == "zh" else year)
        assert parse_date(r["answer"]) == year and r["meta"]["gt"]["year"] == int(year)
        assert is_correct("date", r["meta"]["dates"][k], r["answer"])  # the image date answers the year
        assert not is_correct("date", r["meta"]["dates"][k - 1], r["answer"])


def test_cropland_loss_is_exact_pixels_times_pixel_area(run):
    _, _, rows, _, maps = run
    asked = [r for r in rows if r["meta"]["task"] == "series_cropland_loss"]
    assert asked
    for r in asked:
        m = maps[r["meta"]["scene"]]
        first, last = m[0] == CROPLAND, m[-1] == CROPLAND
        lost = int((first & ~last).sum())
        assert int((last & ~first).sum()) == 0  # no land becomes cropland: loss = net decrease
        assert lost == int(first.sum()) - int(last.sum())
        gt = r["meta"]["gt"]
        u = UNITS[gt["unit"]]
        value = round_half_up(Fraction(lost) * Fraction(PIXEL) ** 2 / u.m2, u.decimals)
        assert r["answer"] == (f"{value}{u.zh}" if r["meta"]["lang"] == "zh" else f"{value} {u.en}")
        assert gt["lost_pixels"] == lost and gt["first_pixels"] == int(first.sum())
    assert any(r["meta"]["gt"]["lost_pixels"] > 0 for r in asked)


def test_forest_interval_is_the_one_interval_with_forest_loss(run):
    _, _, rows, _, maps = run
    asked = [r for r in rows if r["meta"]["task"] == "series_forest_interval"]
    assert asked
    for r in asked:
        forest = [int((c == FOREST).sum()) for c in maps[r["meta"]["scene"]]]
        drops = [k for k in range(1, N_DATES) if forest[k] < forest[k - 1]]
        assert len(drops) == 1 and all(forest[k] <= forest[k - 1] for k in range(1, N_DATES))
        (k,) = drops
        y0, y1 = r["meta"]["dates"][k - 1][:4], r["meta"]["dates"][k][:4]
        assert parse_date(r["answer"]) == f"{y0}/{y1}"
        assert is_correct("date", f"between {y0} and {y1}", r["answer"])
        assert is_correct("date", f"{y0}年到{y1}年", r["answer"])
        assert not is_correct("date", y1, r["answer"])


def test_builtup_growth_answer_and_balance(run):
    _, summary, rows, _, maps = run
    asked = [r for r in rows if r["meta"]["task"] == "series_builtup_growth"]
    assert len(asked) == 2 * N_PLACES  # asked of every place, in both languages
    for r in asked:
        m = maps[r["meta"]["scene"]]
        b = [int(((c == BUILTUP) | (c == BUILDING)).sum()) for c in m]
        assert parse_yes_no(r["answer"]) is all(b[k] > b[k - 1] for k in range(1, N_DATES))
    hist = summary["answers"]["series_builtup_growth"]
    assert hist.get("yes", 0) >= 3 and hist.get("no", 0) >= 3


def test_unchanged_land_looks_the_same_and_changes_show(run):
    """Shared textures: where the class map did not change, two dates differ only by illumination."""
    out, _, _, places, maps = run
    rec = next(iter(places.values()))
    a, b = (np.asarray(Image.open(out / rec["images"][d]), np.float64) for d in rec["dates"][:2])
    same = maps[rec["id"]][0] == maps[rec["id"]][1]
    ratio = b[same].sum() / a[same].sum()
    assert 0.94 < ratio < 1.06
    assert np.abs(b[same] - a[same] * ratio).mean() < 2.0


def _tree(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_deterministic_byte_identical_and_independent_of_place_count(run, tmp_path):
    a = _tree(run[0])
    synthesize(tmp_path / "b", **ARGS)
    b = _tree(tmp_path / "b")
    assert a.keys() == b.keys() and [k for k in a if a[k] != b[k]] == []
    assert len(a) == 3 + 2 * 2 + 3 * N_DATES * N_PLACES  # classes, index, summary; 2 splits + rejects; 3 per date
    # place i is the same whatever the number of places
    s0 = make_series(SEED, 3, SIZE, 6, N_DATES)
    assert (run[0] / f"scenes/s00003/{s0.dates[-1]}_classes.tif").exists()
    assert np.array_equal(s0.layouts[-1].classes, run[4]["s00003"][-1])


# The default output (no --dates) was recorded on main b0a402e before the time-series code existed:
# sha256 over every file but the datasets, then over the samples read back (so a new dataset column
# elsewhere does not move it). --dates must leave it alone.
DEFAULT_SHA = "ac624029dbc51df7739a7305aada67daf0f5d6af32fd13d47d2f71557ec6ac44"
COLS = ("id", "messages", "qtype", "answer", "source", "meta")


def test_default_output_unchanged(tmp_path):
    out = tmp_path / "o"
    synthesize(out, scenes=3, seed=1, size=64, progress=False)
    h = hashlib.sha256()
    for p in sorted(out.rglob("*")):
        if p.is_file() and p.suffix != ".parquet":
            h.update(str(p.relative_to(out)).encode())
            h.update(p.read_bytes())
    for name in ("train", "test"):
        for s in read_samples(out / f"{name}.parquet"):
            h.update(json.dumps({k: s[k] for k in COLS}, ensure_ascii=False, sort_keys=True).encode())
            for b in s["images"]:
                h.update(hashlib.sha256(b).digest())
    assert h.hexdigest() == DEFAULT_SHA


def test_cli_and_bad_arguments(tmp_path, capsys):
    from geovl.cli import main

    out = tmp_path / "cli"
    argv = ["data", "synth", "--out", str(out), "--scenes", "3", "--dates", "2", "--size", "64", "--no-progress"]
    assert main(argv + ["--lang", "en", "--format", "jsonl", "--tasks", "series_builtup_growth"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["args"]["dates"] == 2 and summary["by_task"] == {"series_builtup_growth": 3}
    lines = [json.loads(x) for f in sorted(out.glob("*.jsonl")) if f.name != "scenes.jsonl" for x in f.open()]
    assert lines and all(len(x["meta"]["dates"]) == 2 for x in lines if "meta" in x)
    for bad in (["--dates", "1"], ["--dates", "13"], ["--tasks", "count"], ["--presence-classes", "water"]):
        base = ["data", "synth", "--out", str(tmp_path / "bad"), "--scenes", "3", "--dates", "2", "--size", "64"]
        assert main(base + [*bad, "--no-progress"]) == 2, bad  # the last --dates wins
        assert "geovl: error:" in capsys.readouterr().err
    with pytest.raises(SynthError, match="--dates"):
        synthesize(tmp_path / "x", scenes=1, dates=True, progress=False)
