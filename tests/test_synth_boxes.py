"""`geovl data synth --tasks boxes`: grounding samples whose boxes are exact on the class maps."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from geovl.data.io import read_samples
from geovl.synth import make_scene, synthesize
from geovl.synth.boxes import largest_water, water_bodies
from geovl.synth.classes import BUILDING, WATER
from geovl.synth.write import SynthError, parse_tasks


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth_boxes")
    summary = synthesize(out, scenes=6, seed=3, size=160, tasks="boxes,count", split={"train": 1.0}, progress=False)
    return out, summary, list(read_samples(out / "train.parquet"))


def test_box_tasks_are_grounding_samples_in_both_languages(synth):
    out, summary, samples = synth
    boxes = [s for s in samples if s["qtype"] == "grounding"]
    assert {s["meta"]["task"] for s in boxes} >= {"box_buildings", "box_new_buildings"}
    assert {s["meta"]["lang"] for s in boxes} == {"zh", "en"}
    qs = {s["messages"][0]["content"][-1]["text"] for s in boxes}
    assert {"框出所有建筑", "Locate every building"} & qs
    for s in boxes:
        m = s["meta"]
        assert m["grounding"] in ("all", "referring") and m["gt"]["n_boxes"] == len(m["boxes"])
        w, h = Image.open(io.BytesIO(s["images"][0])).size
        assert (w, h) == (160, 160)
        if m["task"] == "box_new_buildings":
            assert len(s["images"]) == 2 and all(b["image"] == 1 for b in m["boxes"])
        if m["task"] == "box_water":
            assert m["grounding"] == "referring" and len(m["boxes"]) == 1
    assert summary["by_qtype"]["grounding"] == len(boxes)


def test_boxes_are_exact_on_the_scene_truth(synth):
    out, _, samples = synth
    for s in (x for x in samples if x["qtype"] == "grounding"):
        sc = make_scene(3, int(s["meta"]["scene"][1:]), 160, 6)
        task = s["meta"]["task"]
        for b in s["meta"]["boxes"]:
            x0, y0, x1, y1 = (int(v) for v in b["bbox"])
            if task == "box_buildings":
                cls = sc.layout(s["meta"]["dates"][0]).classes
                assert (cls[y0:y1, x0:x1] == BUILDING).all()
                # the box is tight: the ring around it is not building
                assert (cls[max(0, y0 - 1) : y1 + 1, max(0, x0 - 1) : x1 + 1] == BUILDING).sum() == (y1 - y0) * (
                    x1 - x0
                )
            elif task == "box_new_buildings":
                assert (sc.after.layout.classes[y0:y1, x0:x1] == BUILDING).all()
                assert not (sc.before.classes[y0:y1, x0:x1] == BUILDING).any()
            else:
                cls = sc.layout(s["meta"]["dates"][0]).classes
                body = water_bodies(cls)[0]
                assert body["box"] == [x0, y0, x1, y1]
                sub = cls[y0:y1, x0:x1] == WATER
                assert sub[0].any() and sub[-1].any() and sub[:, 0].any() and sub[:, -1].any()  # tight
        if task == "box_buildings":
            assert len(s["meta"]["boxes"]) == len(sc.layout(s["meta"]["dates"][0]).buildings)


def test_water_bodies_and_the_largest_rule():
    cls = np.zeros((50, 50), np.uint8)
    cls[5:15, 5:25] = WATER  # 200 px
    cls[30:40, 30:35] = WATER  # 50 px
    bodies = water_bodies(cls)
    assert bodies == [{"box": [5, 5, 25, 15], "pixels": 200}, {"box": [30, 30, 35, 40], "pixels": 50}]
    assert largest_water({"water_bodies": bodies}, cls.size) == bodies[0]
    cls[30:40, 30:45] = WATER  # 150 px: not clearly smaller than 200
    assert largest_water({"water_bodies": water_bodies(cls)}, cls.size) is None


def test_task_groups():
    assert parse_tasks("boxes") == ("box_buildings", "box_new_buildings", "box_water")
    with pytest.raises(SynthError, match="boxes"):
        parse_tasks("box_everything")
