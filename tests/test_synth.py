"""geovl data synth: synthetic county scenes — exact ground truth, balanced answers, determinism."""

from __future__ import annotations

import io
import json
import re
from collections import Counter, defaultdict
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from geovl.data.io import read_samples
from geovl.data.schema import message_text, validate_sample
from geovl.imagery.geotiff import read_raster
from geovl.synth import BY_ID, BY_KEY, URBAN_THRESHOLD, SynthError, make_scene, synthesize
from geovl.synth.classes import BARE, BUILDING, BUILTUP, CROPLAND, FOREST, ROAD, WATER
from geovl.synth.qa import UNITS, area_value, round_half_up
from geovl.synth.write import parse_split, scene_transform, split_counts

N_SCENES, SIZE, SEED, PIXEL = 12, 160, 3, 10.0
ARGS = dict(scenes=N_SCENES, seed=SEED, size=SIZE, langs=("zh", "en"), pixel_size=PIXEL, progress=False)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "a"
    summary = synthesize(out, **ARGS)
    samples = {name: list(read_samples(out / f"{name}.parquet")) for name in ("train", "test")}
    scenes = {
        json.loads(line)["id"]: json.loads(line) for line in (out / "scenes.jsonl").read_text("utf-8").splitlines()
    }
    return out, summary, samples, scenes


@pytest.fixture(scope="module")
def all_samples(run):
    return run[2]["train"] + run[2]["test"]


@pytest.fixture(scope="module")
def class_maps(run):
    """(scene, date) -> class map array read back from the written GeoTIFF."""
    out, _, _, scenes = run
    maps = {}
    for sid, rec in scenes.items():
        for date in ("before", "after"):
            maps[sid, date] = read_raster(out / rec["class_maps"][date]).data[0]
    return maps


def blobs(mask: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Bounding boxes [x0, y0, x1, y1) of the 4-connected components of ``mask`` (flood fill)."""
    seen = np.zeros_like(mask, bool)
    h, w = mask.shape
    boxes = []
    for y, x in zip(*np.nonzero(mask)):
        if seen[y, x]:
            continue
        stack, seen[y, x] = [(y, x)], True
        ys, xs = [], []
        while stack:
            cy, cx = stack.pop()
            ys.append(cy)
            xs.append(cx)
            for ny, nx in ((cy - 1, cx), (cy + 1, cx), (cy, cx - 1), (cy, cx + 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
        boxes.append((min(xs), min(ys), max(xs) + 1, max(ys) + 1))
    return sorted(boxes)


AREA_RE = re.compile(r"^(\d+\.\d+)\s?(平方公里|公顷|亩|km²|ha)$")
UNIT_OF = {"平方公里": "km2", "公顷": "ha", "亩": "mu", "km²": "km2", "ha": "ha"}


# -- files, schema, counts --------------------------------------------------------------------


def test_files_and_samples_validate(run, all_samples):
    out, summary, samples, scenes = run
    for name in ("classes.json", "scenes.jsonl", "summary.json", "train.parquet", "test.parquet"):
        assert (out / name).is_file(), name
    assert (out / "train.rejects.jsonl").read_text() == "" and (out / "test.rejects.jsonl").read_text() == ""
    for s in all_samples:
        validate_sample(s)
        m = s["meta"]
        assert m["lang"] in ("zh", "en") and m["scene"] in scenes and m["task"]
        assert m["pixel_size_m"] == PIXEL and m["crs"] == "EPSG:32650"
        assert m["date"] == "+".join(m["dates"]) and len(m["dates"]) == len(s["images"])
        assert isinstance(m["gt"], dict) and m["gt"]
        for rel in m["geotiff"] + m["class_map"] + m["image_files"]:
            assert (out / rel).is_file()
        # the sample's images are exactly the PNG files of the scene, in date order
        assert s["images"] == [(out / rel).read_bytes() for rel in m["image_files"]]
        assert [rec_d for rec_d in m["dates"]] in (["before"], ["after"], ["before", "after"])
        assert s["messages"][0]["content"][: len(s["images"])] == [{"type": "image"}] * len(s["images"])
        assert message_text(s["messages"][1]) == s["answer"]
    assert summary["samples"] == len(all_samples)
    assert all(v["conserved"] and v["rejected"] == 0 for v in summary["splits"].values())
    classes = json.loads((out / "classes.json").read_text("utf-8"))
    assert {c["key"]: c["zh"] for c in classes["classes"]}["water"] == "水体"
    assert classes["rural_urban"]["threshold"] == URBAN_THRESHOLD


def test_counts_per_qtype_task_and_language(all_samples):
    per_lang = Counter(s["meta"]["lang"] for s in all_samples)
    assert per_lang == {"zh": N_SCENES * 8, "en": N_SCENES * 8}
    qtypes = Counter(s["qtype"] for s in all_samples)
    # per scene and language: presence, compare, change_increase | count, change_count | area, change_area | rural_urban
    assert qtypes == {
        "yes_no": 3 * 2 * N_SCENES,
        "count": 2 * 2 * N_SCENES,
        "area": 2 * 2 * N_SCENES,
        "choice": 2 * N_SCENES,
    }
    per_scene_lang_task = Counter((s["meta"]["scene"], s["meta"]["lang"], s["meta"]["task"]) for s in all_samples)
    assert set(per_scene_lang_task.values()) == {1} and len(per_scene_lang_task) == N_SCENES * 2 * 8
    assert len({s["id"] for s in all_samples}) == len(all_samples)
    two_image = [s for s in all_samples if s["meta"]["task"].startswith("change_")]
    assert len(two_image) == 3 * 2 * N_SCENES and all(len(s["images"]) == 2 for s in two_image)


def test_split_is_by_scene(run):
    out, summary, samples, scenes = run
    train = {s["meta"]["scene"] for s in samples["train"]}
    test = {s["meta"]["scene"] for s in samples["test"]}
    assert train and test and not train & test and train | test == set(scenes)
    assert {sid for sid, r in scenes.items() if r["split"] == "test"} == test
    assert (summary["splits"]["train"]["scenes"], summary["splits"]["test"]["scenes"]) == (10, 2)
    assert parse_split("train=8,val=1,test=1") == [("train", 0.8), ("val", 0.1), ("test", 0.1)]
    assert split_counts(3, parse_split("a=0.9,b=0.05,c=0.05")) == [1, 1, 1]
    assert split_counts(10, parse_split("train=0.75,test=0.25")) in ([8, 2], [7, 3])
    for bad in ("train", "train=x", "a=1,a=2", "a=-1,b=2", "a=0,b=0"):
        with pytest.raises(SynthError):
            parse_split(bad)


def test_load_with_datasets(run, all_samples):
    datasets = pytest.importorskip("datasets")
    out = run[0]
    ds = datasets.load_dataset(
        "parquet", data_files={"train": str(out / "train.parquet"), "test": str(out / "test.parquet")}
    )
    assert ds["train"].num_rows + ds["test"].num_rows == len(all_samples)
    row = ds["test"][0]
    assert set(row) >= {"id", "messages", "images", "qtype", "answer", "source", "meta"}
    assert json.loads(row["meta"])["generator"] == "geovl.data.synth"
    assert Image.open(io.BytesIO(row["images"][0])).size == (SIZE, SIZE)


# -- exact answers against the written class maps --------------------------------------------


def test_area_answers_are_exact(all_samples, class_maps):
    n = 0
    for s in (s for s in all_samples if s["qtype"] == "area"):
        m, gt = s["meta"], s["meta"]["gt"]
        match = AREA_RE.match(s["answer"])
        assert match, s["answer"]
        value, unit = float(match.group(1)), UNIT_OF[match.group(2)]
        assert unit == gt["unit"] and (unit != "mu" or m["lang"] == "zh")
        assert (" " in s["answer"]) == (m["lang"] == "en")
        if m["task"] == "area":
            pixels = int((class_maps[m["scene"], m["dates"][0]] == BY_KEY[gt["class"]].id).sum())
        else:  # change_area: cropland pixels in the after map that were not cropland before
            b, a = class_maps[m["scene"], "before"], class_maps[m["scene"], "after"]
            pixels = int(((a == CROPLAND) & (b != CROPLAND)).sum())
        exact = Fraction(pixels) * Fraction(PIXEL) ** 2 / UNITS[unit].m2
        assert gt["pixels"] == pixels and gt["area_m2"] == pixels * PIXEL**2
        assert abs(value - float(exact)) <= 0.5 * 10 ** -UNITS[unit].decimals + 1e-12
        assert match.group(1) == round_half_up(exact, UNITS[unit].decimals)
        assert len(match.group(1).split(".")[1]) == UNITS[unit].decimals
        n += 1
    assert n == 4 * N_SCENES


def test_unit_conversions_and_rounding():
    # 1 km² = 100 公顷 = 1500 亩 = 1e6 m²: 10 000 pixels of 10 m
    assert area_value(10_000, 10.0, "km2") == 1
    assert area_value(10_000, 10.0, "ha") == 100
    assert area_value(10_000, 10.0, "mu") == 1500
    assert area_value(3, 0.5, "ha") == Fraction(3, 40_000)
    assert round_half_up(Fraction(1234, 100), 2) == "12.34"
    assert round_half_up(Fraction(12345, 1000), 2) == "12.35"  # half up, not half even
    assert round_half_up(Fraction(12355, 1000), 2) == "12.36"
    assert round_half_up(Fraction(0), 3) == "0.000"
    assert round_half_up(Fraction(1, 15), 1) == "0.1"


def test_building_counts_match_blobs_in_class_map(all_samples, class_maps, run):
    scenes = run[3]
    for sid, rec in scenes.items():
        for date in ("before", "after"):
            comps = blobs(class_maps[sid, date] == BUILDING)
            assert len(comps) == rec[date]["buildings"]["count"]
            assert comps == sorted(tuple(b) for b in rec[date]["buildings"]["boxes"])  # one solid rectangle each
    seen = 0
    for s in all_samples:
        m = s["meta"]
        if m["task"] == "count":
            assert s["answer"] == str(len(blobs(class_maps[m["scene"], m["dates"][0]] == BUILDING)))
            assert s["answer"].isdigit()
            seen += 1
        elif m["task"] == "change_count":
            before = len(blobs(class_maps[m["scene"], "before"] == BUILDING))
            after = len(blobs(class_maps[m["scene"], "after"] == BUILDING))
            assert int(s["answer"]) == after - before == m["gt"]["new_buildings"] >= 0
            seen += 1
    assert seen == 4 * N_SCENES


def test_yes_no_and_choice_answers_follow_the_pixels(all_samples, class_maps):
    yes = {"zh": "是", "en": "yes"}
    no = {"zh": "否", "en": "no"}
    for s in all_samples:
        m, gt = s["meta"], s["meta"]["gt"]
        lang, task = m["lang"], m["task"]
        if task in ("presence", "compare", "rural_urban"):
            cm = class_maps[m["scene"], m["dates"][0]]
        if task == "presence":
            present = bool((cm == BY_KEY[gt["class"]].id).any())
            assert s["answer"] == (yes[lang] if present else no[lang])
            name = BY_KEY[gt["class"]].zh if lang == "zh" else BY_KEY[gt["class"]].en_phrase
            assert name in message_text(s["messages"][0])
        elif task == "compare":
            more = (cm == BY_KEY[gt["a"]].id).sum() > (cm == BY_KEY[gt["b"]].id).sum()
            assert s["answer"] == (yes[lang] if more else no[lang])
        elif task == "rural_urban":
            share = ((cm == BUILTUP) | (cm == BUILDING)).mean()
            urban = int(share >= URBAN_THRESHOLD)
            assert s["answer"] == {"zh": ("农村", "城镇"), "en": ("rural", "urban")}[lang][urban]
            assert s["answer"] in m["choices"]
        elif task == "change_increase":
            b, a = class_maps[m["scene"], "before"], class_maps[m["scene"], "after"]
            grew = (a == CROPLAND).sum() > (b == CROPLAND).sum()
            assert s["answer"] == (yes[lang] if grew else no[lang])


def test_change_ground_truth_matches_class_maps(run, class_maps):
    scenes = run[3]
    for sid, rec in scenes.items():
        b, a = class_maps[sid, "before"], class_maps[sid, "after"]
        ch = rec["change"]
        changed = b != a
        assert ch["changed_pixels"] == int(changed.sum()) == sum(ch["transitions"].values())
        recount = Counter(f"{BY_ID[x].key}->{BY_ID[y].key}" for x, y in zip(b[changed], a[changed]))
        assert dict(recount) == ch["transitions"]
        assert set(ch["transitions"]) <= {
            "cropland->building",
            "bare->building",
            "builtup->building",
            "forest->cropland",
            "bare->cropland",
            "forest->bare",
        }
        for c in BY_KEY.values():
            assert rec["before"]["class_pixels"][c.key] == int((b == c.id).sum())
            assert rec["after"]["class_pixels"][c.key] == int((a == c.id).sum())
        assert ch["cropland_net_pixels"] == int((a == CROPLAND).sum()) - int((b == CROPLAND).sum())
        assert (
            ch["new_buildings"]
            == len(ch["new_building_boxes"])
            == rec["after"]["buildings"]["count"] - rec["before"]["buildings"]["count"]
        )
        # old buildings stay where they were
        assert (
            rec["after"]["buildings"]["boxes"][: rec["before"]["buildings"]["count"]]
            == rec["before"]["buildings"]["boxes"]
        )
        # changes never add or remove a whole class (presence is stable between dates)
        for c in BY_KEY.values():
            if c.key != "building":
                assert (rec["before"]["class_pixels"][c.key] > 0) == (rec["after"]["class_pixels"][c.key] > 0)


# -- rasters and images -----------------------------------------------------------------------


def test_geotiffs_georeferenced_with_meaningful_reflectance(run, class_maps):
    out, _, _, scenes = run
    ndvi_by_class, ndwi_by_class = defaultdict(list), defaultdict(list)
    for i, (sid, rec) in enumerate(sorted(scenes.items())):
        for date in ("before", "after"):
            r = read_raster(out / rec["geotiffs"][date])
            c = read_raster(out / rec["class_maps"][date])
            assert r.crs == "EPSG:32650" and c.crs == "EPSG:32650"
            assert r.count == 4 and r.data.dtype == np.uint16 and r.band_names[3] == "B8 NIR"
            assert c.count == 1 and c.data.dtype == np.uint8 and c.nodata == 0
            want = scene_transform(rec["index"], SIZE, PIXEL)
            assert np.allclose(r.transform, want) and np.allclose(c.transform, want)
            assert r.transform[0] == PIXEL and r.transform[4] == -PIXEL
            assert r.data.max() <= 10000 and r.data.min() >= 1
            assert (c.data[0] != 0).all()
            blue, green, red, nir = (r.data[k].astype(np.float64) for k in range(4))
            ndvi = (nir - red) / (nir + red)
            ndwi = (green - nir) / (green + nir)
            for k in (CROPLAND, FOREST, WATER, BUILTUP, BUILDING, BARE):
                sel = c.data[0] == k
                if sel.any():
                    ndvi_by_class[k].append(ndvi[sel].mean())
                    ndwi_by_class[k].append(ndwi[sel].mean())
    mean = {k: float(np.mean(v)) for k, v in ndvi_by_class.items()}
    assert {CROPLAND, FOREST, WATER, BUILTUP, BUILDING} <= set(mean)
    assert min(mean[CROPLAND], mean[FOREST]) > 0.4 > 0.2 > max(mean[WATER], mean[BUILTUP], mean[BUILDING])
    assert mean[WATER] < 0
    assert np.mean(ndwi_by_class[WATER]) > 0.3 > max(np.mean(v) for k, v in ndwi_by_class.items() if k != WATER)
    # scenes have distinct footprints
    origins = {tuple(rec["transform"][2:6:3]) for rec in scenes.values()}
    assert len(origins) == N_SCENES


def test_rgb_image_agrees_with_class_map(run, class_maps):
    out, _, _, scenes = run
    checked = Counter()
    for sid, rec in scenes.items():
        for date in ("before", "after"):
            rgb = np.asarray(Image.open(out / rec["images"][date]).convert("RGB")).astype(int)
            assert rgb.shape == (SIZE, SIZE, 3)
            cm = class_maps[sid, date]
            R, G, B = rgb[..., 0], rgb[..., 1], rgb[..., 2]
            rules = {
                WATER: (B > G) & (G > R),  # blue
                FOREST: (G > R) & (G > B) & (G < 110),  # dark green
                CROPLAND: (G > B + 20),  # greens and yellows
                BARE: (R > G) & (G > B),  # brown
                ROAD: (abs(R - G) < 12) & (abs(G - B) < 12) & (G < 120),  # dark grey
                BUILTUP: (abs(R - B) < 30) & (R > 90),  # light grey (shadows excepted)
            }
            for k, ok in rules.items():
                sel = cm == k
                if sel.sum() > 50:
                    assert ok[sel].mean() > 0.85, (sid, date, BY_ID[k].key, ok[sel].mean())
                    checked[k] += 1
    assert set(checked) == {WATER, FOREST, CROPLAND, BARE, ROAD, BUILTUP}


def test_building_size_scales_with_image_size():
    for size, lo, hi in ((224, 19, 27), (112, 9, 14)):
        sides = []
        for i in range(6):
            sc = make_scene(0, i, size, 6)
            sides += [v for b in sc.after.layout.buildings for v in (b.x1 - b.x0, b.y1 - b.y0)]
        # at 224 px a building side is 19-27 px: most of a 28-px vision patch, often spanning several
        assert sides and lo <= min(sides) and max(sides) <= hi, (size, min(sides), max(sides))


# -- balance: the model has to look at the image -----------------------------------------------


@pytest.fixture(scope="module")
def many_scenes():
    return [make_scene(11, i, 96, 6) for i in range(150)]


def test_answer_priors_are_balanced(many_scenes):
    n = len(many_scenes)
    for date in ("before", "after"):
        for key in ("cropland", "forest", "water", "bare", "road"):
            rate = sum(sc.truth[date]["class_pixels"][key] > 0 for sc in many_scenes) / n
            assert 0.35 <= rate <= 0.65, (date, key, rate)
        urban = sum(sc.truth[date]["rural_urban"] == "urban" for sc in many_scenes) / n
        assert 0.3 <= urban <= 0.7
        counts = Counter(sc.truth[date]["buildings"]["count"] for sc in many_scenes)
        assert set(counts) == set(range(7)) and max(counts.values()) / n < 0.3
    new = Counter(sc.truth["change"]["new_buildings"] for sc in many_scenes)
    assert set(new) == {0, 1, 2, 3} and max(new.values()) / n < 0.45
    grew = sum(sc.truth["change"]["cropland_net_pixels"] > 0 for sc in many_scenes) / n
    assert 0.2 <= grew <= 0.6
    # presence is decided by the pixels, not by the scene index or a fixed pattern
    water = [sc.truth["before"]["class_pixels"]["water"] > 0 for sc in many_scenes]
    assert 10 < sum(water[::2]) < 65 and 10 < sum(water[1::2]) < 65


def test_same_question_gets_both_answers(run, all_samples):
    by_text = defaultdict(set)
    for s in all_samples:
        if s["meta"]["task"] in ("presence", "rural_urban", "change_increase", "count"):
            by_text[(s["meta"]["task"], message_text(s["messages"][0]))].add(s["answer"])
    # for every task at least one wording receives different answers on different images
    for task in ("rural_urban", "change_increase", "count"):
        assert any(len(v) > 1 for (t, _), v in by_text.items() if t == task), task
    for s in all_samples:
        if s["meta"]["task"] == "presence":
            assert s["meta"]["gt"]["present"] == (s["meta"]["gt"]["pixels"] > 0)


# -- determinism and the CLI -------------------------------------------------------------------


def _tree(d: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file() and p.name != "summary.json"
    }


def test_deterministic_byte_identical(run, tmp_path):
    out = run[0]
    again = tmp_path / "b"
    synthesize(again, **ARGS)
    a, b = _tree(out), _tree(again)
    assert a.keys() == b.keys() and len(a) == 6 + 6 * N_SCENES  # classes, index, 2 parquet, 2 rejects; 6 per scene
    diff = [k for k in a if a[k] != b[k]]
    assert diff == []
    other = tmp_path / "c"
    synthesize(other, **(ARGS | {"seed": SEED + 1, "scenes": 2}))
    assert (other / "scenes/s00000/before.png").read_bytes() != a["scenes/s00000/before.png"]


def test_cli_in_process(tmp_path, capsys):
    from geovl.cli import main

    out = tmp_path / "cli"
    argv = [
        "data",
        "synth",
        "--out",
        str(out),
        "--scenes",
        "3",
        "--size",
        "96",
        "--lang",
        "en",
        "--pixel-size",
        "30",
        "--questions-per-scene",
        "5",
        "--split",
        "train=0.5,val=0.5",
        "--no-progress",
    ]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["samples"] == 15 and summary["by_lang"] == {"en": 15}
    rows = list(read_samples(out / "train.parquet")) + list(read_samples(out / "val.parquet"))
    assert len(rows) == 15 and {r["meta"]["lang"] for r in rows} == {"en"}
    assert all(r["meta"]["pixel_size_m"] == 30.0 for r in rows)
    r = read_raster(out / "scenes/s00002/after.tif")
    assert r.transform[0] == 30.0 and r.width == 96
    # 5 questions per scene rotate over the tasks
    assert len({(r["meta"]["scene"], r["meta"]["task"]) for r in rows}) == 15

    assert main(argv) == 2  # not empty
    assert "--overwrite" in capsys.readouterr().err
    assert main(argv + ["--overwrite"]) == 0
    capsys.readouterr()
    for bad in (["--split", "train"], ["--lang", "fr"], ["--scenes", "0"], ["--size", "20"], ["--pixel-size", "-1"]):
        assert main(["data", "synth", "--out", str(tmp_path / "bad"), "--scenes", "2", *bad]) == 2, bad
        assert "geovl: error:" in capsys.readouterr().err


def test_many_questions_per_scene_are_distinct(tmp_path):
    out = tmp_path / "k20"
    summary = synthesize(
        out, scenes=2, seed=5, size=64, langs="en", questions_per_scene=20, split="train=1", progress=False
    )
    rows = list(read_samples(out / "train.parquet"))
    assert summary["samples"] == len(rows) == 40 and summary["splits"]["train"]["scenes"] == 2
    keys = [(r["meta"]["scene"], r["meta"]["date"], message_text(r["messages"][0])) for r in rows]
    assert len(set(keys)) == len(keys)
    # round-robin over the tasks: each single-image task at least twice per scene (both dates are
    # asked), each change task exactly once (one image pair per scene)
    per_task = Counter((r["meta"]["scene"], r["meta"]["task"]) for r in rows)
    assert len(per_task) == 2 * 8
    for (_, task), n in per_task.items():
        assert n == 1 if task.startswith("change_") else n >= 2, (task, n)
