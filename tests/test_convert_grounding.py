"""Grounding converters on files written in the published formats, bad records included:
COCO detection JSON, DIOR-RSVG VOC XML, boxes in LLaVA messages on a declared normalised scale."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from geovl.data.convert import ConvertError, ConvertOptions, convert
from geovl.data.io import read_samples


def write_png(path: Path, w: int, h: int):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(path)


def rejects(summary) -> list[dict]:
    p = Path(summary["rejects"])
    return [json.loads(x) for x in p.read_text().splitlines()] if p.exists() else []


def run(fmt, inp, out, **kw):
    return convert(ConvertOptions(fmt=fmt, input=Path(inp), output=Path(out), progress=False, **kw))


# ---- COCO ------------------------------------------------------------------------------------------------


def coco_file(tmp_path) -> Path:
    write_png(tmp_path / "img" / "a.png", 100, 80)
    write_png(tmp_path / "img" / "b.png", 64, 64)
    write_png(tmp_path / "img" / "c.png", 50, 50)  # declared 60x50 below
    doc = {
        "images": [
            {"id": 1, "file_name": "img/a.png", "width": 100, "height": 80},
            {"id": 2, "file_name": "img/b.png", "width": 64, "height": 64},
            {"id": 3, "file_name": "img/c.png", "width": 60, "height": 50},
            {"id": 4, "file_name": "img/missing.png", "width": 10, "height": 10},
        ],
        "categories": [{"id": 1, "name": "building"}, {"id": 2, "name": "ship"}, {"id": 3, "name": "tank"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, "bbox": [10, 20, 30, 15], "iscrowd": 0},
            {"id": 11, "image_id": 1, "category_id": 1, "bbox": [50, 5, 20, 20], "iscrowd": 0},
            {"id": 12, "image_id": 1, "category_id": 1, "bbox": [0, 0, 100, 80], "iscrowd": 1},  # crowd: left out
            {"id": 13, "image_id": 1, "category_id": 2, "bbox": [90, 70, 20, 20], "iscrowd": 0},  # outside the image
            {"id": 14, "image_id": 2, "category_id": 1, "bbox": [5, 5, 0, 10], "iscrowd": 0},  # zero width
            {
                "id": 15,
                "image_id": 2,
                "category_id": 2,
                "bbox": [5, 5, 10, 10, 30],
                "iscrowd": 0,
            },  # rotated (5 numbers)
            {"id": 16, "image_id": 2, "category_id": 3, "bbox": [5, "x", 10, 10], "iscrowd": 0},
            {"id": 17, "image_id": 9, "category_id": 1, "bbox": [1, 1, 2, 2]},  # unknown image
            {"id": 18, "image_id": 1, "category_id": 7, "bbox": [1, 1, 2, 2]},  # unknown category
            {"id": 19, "image_id": 3, "category_id": 1, "bbox": [1, 1, 2, 2]},  # size mismatch
            {"id": 20, "image_id": 4, "category_id": 1, "bbox": [1, 1, 2, 2]},  # missing file
            {"id": 21, "image_id": 1, "category_id": 3, "bbox": [1, 1, 5, 5], "angle": 15.0},  # rotated (angle)
        ],
    }
    p = tmp_path / "instances.json"
    p.write_text(json.dumps(doc))
    return p


def test_coco_locate_all_samples_and_rejects(tmp_path):
    s = run("coco", coco_file(tmp_path), tmp_path / "out.parquet")
    assert s["conserved"] and s["read"] == s["written"] + s["rejected"]
    samples = {x["id"]: x for x in read_samples(tmp_path / "out.parquet")}
    assert list(samples) == ["1-building"]
    b = samples["1-building"]
    assert b["qtype"] == "grounding" and b["meta"]["grounding"] == "all" and b["meta"]["crowd_skipped"] == 1
    assert [x["bbox"] for x in b["meta"]["boxes"]] == [[50, 5, 70, 25], [10, 20, 40, 35]]  # xywh → xyxy, reading order
    assert "building" in b["messages"][0]["content"][-1]["text"]
    assert json.loads(b["answer"]) == [
        {"bbox_2d": [50, 5, 70, 25], "label": "building"},
        {"bbox_2d": [10, 20, 40, 35], "label": "building"},
    ]
    reasons = sorted(r["reason"] for r in rejects(s))
    assert reasons == sorted(
        [
            "box_outside_image",
            "box_zero_area",
            "rotated_box",
            "rotated_box",
            "box_not_numeric",
            "unknown_image",
            "unknown_category",
            "image_size_mismatch",
            "missing_image",
        ]
    )


def test_coco_classes_filter_and_unknown_class(tmp_path):
    p = coco_file(tmp_path)
    s = run("coco", p, tmp_path / "ships.parquet", classes="ship")
    assert s["written"] == 0 and {r["reason"] for r in rejects(s)} == {
        "box_outside_image",
        "rotated_box",
        "unknown_image",
        "unknown_category",
    }
    with pytest.raises(ConvertError, match="not among the categories"):
        run("coco", p, tmp_path / "x.parquet", classes="plane")
    with pytest.raises(ConvertError, match="only to --from coco"):
        run("llava", p, tmp_path / "y.parquet", classes="ship")


# ---- DIOR-RSVG -----------------------------------------------------------------------------------------------


def voc(filename, w, h, objects) -> str:
    objs = "".join(
        f"<object><name>{n}</name>{box}{f'<description>{d}</description>' if d else ''}</object>"
        for n, box, d in objects
    )
    return f"<annotation><filename>{filename}</filename><size><width>{w}</width><height>{h}</height><depth>3</depth></size>{objs}</annotation>"


def bnd(x1, y1, x2, y2):
    return f"<bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox>"


def test_dior_rsvg_referring_samples_and_rejects(tmp_path):
    root = tmp_path / "DIOR_RSVG"
    write_png(root / "JPEGImages" / "00001.jpg", 200, 150)
    (root / "Annotations").mkdir(parents=True)
    (root / "Annotations" / "00001.xml").write_text(
        voc(
            "00001.jpg",
            200,
            150,
            [
                ("vehicle", bnd(10, 20, 60, 70), "The vehicle on the lower left"),
                ("dam", bnd(100, 10, 190, 140), "the large dam on the right"),
                ("ship", bnd(10, 20, 60, 70), None),  # no expression
                ("ship", bnd(150, 100, 260, 140), "the ship at the edge"),  # outside
                (
                    "ship",
                    "<robndbox><cx>50</cx><cy>50</cy><w>20</w><h>10</h><angle>0.5</angle></robndbox>",
                    "a rotated ship",
                ),
                ("tank", bnd(30, 30, 30, 60), "a flat tank"),  # zero area
            ],
        )
    )
    (root / "Annotations" / "00002.xml").write_text("<annotation><filename>0000")  # broken XML
    s = run("dior-rsvg", root, tmp_path / "rsvg.parquet")
    assert s["conserved"] and s["written"] == 2
    samples = list(read_samples(tmp_path / "rsvg.parquet"))
    assert [x["meta"]["boxes"][0]["bbox"] for x in samples] == [[10, 20, 60, 70], [100, 10, 190, 140]]
    assert (
        samples[0]["meta"]["grounding"] == "referring"
        and samples[0]["messages"][0]["content"][-1]["text"] == "Locate The vehicle on the lower left."
    )
    assert (
        samples[1]["meta"]["expression"] == "the large dam on the right"
        and samples[1]["meta"]["boxes"][0]["label"] == "dam"
    )
    assert sorted(r["reason"] for r in rejects(s)) == [
        "bad_xml",
        "box_outside_image",
        "box_zero_area",
        "no_expression",
        "rotated_box",
    ]


# ---- LLaVA / MMDU with normalised boxes --------------------------------------------------------------------------


def test_llava_boxes_on_a_declared_scale(tmp_path):
    write_png(tmp_path / "a.png", 200, 100)
    write_png(tmp_path / "b.png", 200, 100)
    recs = [
        {
            "id": "geochat",
            "image": "a.png",
            "conversations": [
                {"from": "human", "value": "<image>\n[refer] give me the location of <p>the building</p>"},
                {"from": "gpt", "value": "<p>the building</p> {<10><20><30><60>}"},
            ],
        },
        {
            "id": "qwen",
            "image": "a.png",
            "conversations": [
                {"from": "human", "value": "<image>Find the pond"},
                {
                    "from": "gpt",
                    "value": "<|object_ref_start|>pond<|object_ref_end|><|box_start|>(500,0),(1000,500)<|box_end|>",
                },
            ],
        },
        {
            "id": "plain",
            "image": "a.png",
            "conversations": [
                {"from": "human", "value": "<image>What is shown?"},
                {"from": "gpt", "value": "Farmland."},
            ],
        },
        {
            "id": "rotated",
            "image": "a.png",
            "conversations": [
                {"from": "human", "value": "<image>[refer] <p>ship</p>"},
                {"from": "gpt", "value": "<p>ship</p>{<10><20><30><60>|<35>}"},
            ],
        },
        {
            "id": "outside",
            "image": "a.png",
            "conversations": [
                {"from": "human", "value": "<image>where"},
                {"from": "gpt", "value": "<p>car</p>{<10><20><130><60>}"},
            ],
        },
        {
            "id": "nolabel",
            "image": "a.png",
            "conversations": [
                {"from": "human", "value": "<image>where"},
                {"from": "gpt", "value": "{<10><20><30><60>}"},
            ],
        },
        {
            "id": "inquestion",
            "image": "a.png",
            "conversations": [
                {"from": "human", "value": "<image>What is at {<10><20><30><60>}?"},
                {"from": "gpt", "value": "<p>a car</p>{<10><20><30><60>}"},
            ],
        },
        {
            "id": "two",
            "image": ["a.png", "b.png"],
            "conversations": [
                {"from": "human", "value": "<image><image>new building?"},
                {"from": "gpt", "value": "<p>house</p>{<10><20><30><60>}"},
            ],
        },
    ]
    p = tmp_path / "mmdu.json"
    p.write_text(json.dumps(recs))
    s = run("llava", p, tmp_path / "g.parquet", boxes="0-100")
    assert s["conserved"] and s["written"] == 2
    got = {x["id"]: x for x in read_samples(tmp_path / "g.parquet")}
    g = got["geochat"]
    assert g["qtype"] == "grounding" and g["meta"]["boxes"] == [
        {"bbox": [20.0, 20.0, 60.0, 60.0], "label": "the building", "image": 0}
    ]
    assert (
        g["answer"] == '[{"bbox_2d": [20, 20, 60, 60], "label": "the building"}]' and g["meta"]["box_scale"] == "0-100"
    )
    assert got["plain"]["qtype"] == "open" and got["plain"]["answer"] == "Farmland."
    # a 0-1000 Qwen2 box read on the 0-100 scale would be outside: rejected, not guessed
    assert {r["source"].split("#")[1]: r["reason"] for r in rejects(s)} == {
        "qwen": "box_outside_image",
        "rotated": "rotated_box",
        "outside": "box_outside_image",
        "nolabel": "box_missing_label",
        "inquestion": "boxes_not_in_last_answer",
        "two": "boxes_multi_image",
    }
    s2 = run("llava", p, tmp_path / "g1000.parquet", boxes="0-1000")
    q = {x["id"]: x for x in read_samples(tmp_path / "g1000.parquet")}["qwen"]
    assert q["meta"]["boxes"][0]["bbox"] == [100.0, 0.0, 200.0, 50.0] and q["meta"]["boxes"][0]["label"] == "pond"
    # without --boxes the text is left as it is (open answers), nothing is converted
    s3 = run("llava", p, tmp_path / "raw.parquet")
    assert all(x["qtype"] == "open" for x in read_samples(tmp_path / "raw.parquet")) and s3["written"] == 8
    with pytest.raises(ConvertError, match="--boxes"):
        run("coco", p, tmp_path / "z.parquet", boxes="0-1")
