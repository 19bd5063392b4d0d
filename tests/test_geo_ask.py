"""geovl ask: measured figures in the model's context in the fixed form — exact figures against the
synth truth, the prompt layout, the request the engine receives, streaming, --json, clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio

from geovl.cli import main
from geovl.geo.ask import (
    HEADER,
    QUESTION,
    TWO_IMAGES,
    build_grounded,
    detect_lang,
    grounded_answer,
    prompt_text,
    stream_grounded_answer,
)
from geovl.geo.errors import MeasureError
from geovl.geo.measure import measure_raster
from geovl.geo.tiles import image_for_model
from geovl.geo.units import all_units, fmt
from geovl.synth import synthesize


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("ask") / "s"
    synthesize(
        out, scenes=2, size=224, langs="en", questions_per_scene=1, split="train=1", tasks="presence", progress=False
    )
    scenes = [json.loads(x) for x in (out / "scenes.jsonl").read_text("utf-8").splitlines()]
    sc = scenes[1]  # seed 0, scene 1: cropland on both dates, forest → cropland and cropland → building
    assert sc["before"]["class_pixels"]["cropland"] and sc["change"]["cropland_net_pixels"] > 0
    files = {
        k: out / sc[kind][d]
        for kind, d, k in (
            ("geotiffs", "after", "image"),
            ("geotiffs", "before", "before"),
            ("class_maps", "after", "classes"),
            ("class_maps", "before", "before_classes"),
        )
    }
    return out, sc, files


class Recorder:
    """An engine that records its requests and answers with a fixed text (streamed in pieces)."""

    name = "recorder"
    preprocess = None

    def __init__(self, answer="约12.34公顷"):
        self.answer, self.requests = answer, []

    def generate(self, requests, params=None):
        self.requests += list(requests)
        return [self.answer for _ in requests]

    def stream(self, request, params=None):
        self.requests.append(request)
        for i in range(0, len(self.answer), 3):
            yield self.answer[i : i + 3]


def test_prompt_layout_and_language():
    assert detect_lang("耕地面积约为多少公顷？") == "zh" and detect_lang("How much cropland?") == "en"
    assert detect_lang("Is there 水体?") == "zh" and detect_lang("") == "en"
    assert (
        prompt_text("CTX\nLINE2", " 问？ ", "zh", 1)
        == "测量结果（来自地理配准影像，非模型估计）：\nCTX\nLINE2\n问题：问？"
    )
    assert prompt_text("C", "Q?", "en", 2) == (
        "Image 1 is the earlier date, image 2 the later date.\n"
        "Measurements (from the georeferenced rasters, not model estimates):\nC\nQuestion: Q?"
    )
    with pytest.raises(MeasureError):
        prompt_text("C", "Q", "fr", 1)


def test_grounded_answer_request_and_exact_figures(synth):
    out, sc, f = synth
    eng = Recorder()
    ga = grounded_answer(eng, f["image"], "耕地面积约为多少公顷？", classes=f["classes"])
    assert ga.answer == "约12.34公顷" and ga.lang == "zh"
    crop = ga.measurement.current.get("cropland")
    assert crop.pixels == sc["after"]["class_pixels"]["cropland"] and crop.m2 == crop.pixels * 100.0
    assert crop.ha == crop.pixels / 100  # 10 m pixels: 100 px = 1 ha
    m = measure_raster(f["image"], classes=f["classes"])
    assert ga.context == m.context_text("zh")
    assert f"耕地 {fmt(crop.km2, 'km2')}平方公里（{fmt(crop.ha, 'ha')}公顷，{fmt(crop.mu, 'mu')}亩）" in ga.context
    assert ga.prompt == HEADER["zh"] + "\n" + ga.context + "\n" + QUESTION["zh"] + "耕地面积约为多少公顷？"
    (req,) = eng.requests
    assert req.messages == [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": ga.prompt}]}]
    assert req.images == [image_for_model(f["image"])[0]]
    doc = ga.to_json()
    assert set(doc) >= {"answer", "measurement", "context", "prompt"} and json.loads(
        json.dumps(doc, ensure_ascii=False)
    )

    # two dates, English, streamed: images before then after; change figures in the context
    eng = Recorder("about 1.00 ha")
    s = stream_grounded_answer(
        eng,
        f["image"],
        "How much new cropland is there?",
        before_path=f["before"],
        classes=f["classes"],
        before_classes=f["before_classes"],
    )
    assert eng.requests == [] and s.lang == "en" and s.prompt.startswith(TWO_IMAGES["en"] + "\n" + HEADER["en"])
    pieces = list(s)
    assert len(pieces) > 1 and "".join(pieces) == "about 1.00 ha" and s.result().answer == "about 1.00 ha"
    assert eng.requests[0].images == [image_for_model(f["before"])[0], image_for_model(f["image"])[0]]
    gl = s.measurement.gain_loss("cropland")
    net = sc["after"]["class_pixels"]["cropland"] - sc["before"]["class_pixels"]["cropland"]
    assert gl["net_m2"] == net * 100.0 == sc["change"]["cropland_net_pixels"] * 100.0
    assert "change before→after: changed" in s.context and "cropland: gain" in s.context


def test_ask_cli_tiny_model_json_and_stream(synth, tiny_model_dir, capsys):
    out, sc, f = synth
    model = str(tiny_model_dir("qwen2-vl"))
    q = "耕地面积约为多少公顷？"
    base = [
        "ask",
        "--image",
        str(f["image"]),
        "--classes",
        str(f["classes"]),
        "--question",
        q,
        "--model",
        model,
        "--device",
        "cpu",
        "--max-new-tokens",
        "6",
    ]
    assert main(base + ["--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert isinstance(doc["answer"], str) and doc["lang"] == "zh"
    classes = {c["key"]: c for c in doc["measurement"]["dates"]["image"]["classes"]}
    px = sc["after"]["class_pixels"]
    for key in ("cropland", "forest", "water", "builtup"):
        assert (
            classes[key]["pixels"] == px[key]
            and classes[key]["ha"] == px[key] / 100
            and classes[key]["m2"] == px[key] * 100.0
        )
    m = measure_raster(f["image"], classes=f["classes"])
    assert doc["context"] == m.context_text("zh") and doc["prompt"] == prompt_text(doc["context"], q, "zh", 1)
    assert doc["measurement"]["class_table"]["name"] == "synth"  # auto-detected beside the synth data

    # the same question streamed to the terminal: the measurement table first, then the answer
    assert main(base) == 0
    text = capsys.readouterr().out
    assert text.startswith("geovl measure") and "[回答 answer] " in text
    assert fmt(all_units(px["cropland"] * 100.0)["ha"], "ha") in text.split("[回答 answer]")[0]

    # a question that makes the prompt longer than the model's context: refused before generation, exit 2
    long_q = "耕地面积约为多少公顷？" + "请详细说明。" * 1500
    assert main([*base[:6], long_q, *base[7:]]) == 2
    err = capsys.readouterr().err
    assert "longer than the model's context of 4096" in err and "Traceback" not in err


def test_ask_bad_inputs(synth, tmp_path, capsys):
    out, sc, f = synth
    nocrs = tmp_path / "nocrs.tif"
    with rasterio.open(nocrs, "w", driver="GTiff", width=20, height=20, count=1, dtype="uint8") as dst:
        dst.write(np.ones((1, 20, 20), np.uint8))
    far = tmp_path / "far.geojson"
    far.write_text(json.dumps({"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]]}))
    # measurement errors come first: the model folder does not even exist
    base = ["--question", "Is there water?", "--model", str(tmp_path / "no-model")]
    cases = [
        (["--image", str(nocrs)], "no CRS"),
        (["--image", str(f["image"]), "--classes", str(f["classes"]), "--aoi", str(far)], "does not cover"),
        (["--image", str(tmp_path / "missing.tif")], "file not found"),
        (["--image", str(f["image"]), "--classes", str(f["image"])], "one band"),
    ]
    for args, msg in cases:
        assert main(["ask", *args, *base]) == 2, args
        err = capsys.readouterr().err
        assert "geovl: error:" in err and msg in err, (args, err)
    assert main(["ask", "--image", str(f["image"]), "--question", "  ", "--model", "x"]) == 2
    assert "empty" in capsys.readouterr().err
    with pytest.raises(MeasureError, match="empty"):
        build_grounded(f["image"], " ", classes=f["classes"])


def test_ask_renders_images_before_loading_the_model(synth, tmp_path, capsys, monkeypatch):
    """An image that measures but cannot be rendered fails before the model loads (the model folder
    does not exist: that error would come second)."""
    import geovl.geo.tiles as tiles

    out, sc, f = synth

    def unrenderable(path, *a, **k):
        raise MeasureError(f"{path}: cannot render the raster (test)")

    monkeypatch.setattr(tiles, "image_for_model", unrenderable)
    rc = main(
        [
            "ask",
            "--image",
            str(f["image"]),
            "--classes",
            str(f["classes"]),
            "--question",
            "Is there water?",
            "--model",
            str(tmp_path / "no-model"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "cannot render the raster (test)" in err and "no-model" not in err
