"""`geovl compare` on grounding predictions: box metrics before/after and pictures of changed samples."""

from __future__ import annotations

import io
import json

import numpy as np
from PIL import Image

from geovl.data.boxes import answer_text, box_dict
from geovl.data.io import DatasetWriter
from geovl.data.schema import make_sample


def _png():
    buf = io.BytesIO()
    Image.fromarray(np.full((60, 80, 3), 50, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_compare_reports_grounding_and_draws_changed_boxes(tmp_path):
    from geovl.cli import main

    boxes = [box_dict([5, 5, 25, 25], "building"), box_dict([40, 10, 70, 40], "building")]
    samples = [make_sample(f"s{i}", "Locate every building", answer_text(boxes), [_png()], qtype="grounding",
                           meta={"boxes": boxes, "grounding": "all"}) for i in range(3)]
    with DatasetWriter(tmp_path / "d.parquet") as w:
        for s in samples:
            w.write(s)
    good, bad = answer_text(boxes), "no idea"
    preds = {"before": [bad, good, good], "after": [good, good, answer_text(boxes[:1])]}
    for name, texts in preds.items():
        with open(tmp_path / f"{name}.jsonl", "w") as f:
            for s, t in zip(samples, texts):
                f.write(json.dumps({"id": s["id"], "qtype": "grounding", "question": "q", "reference": s["answer"],
                                    "prediction": t, "meta": s["meta"]}) + "\n")
    rc = main(["compare", str(tmp_path / "before.jsonl"), str(tmp_path / "after.jsonl"), "--out", str(tmp_path / "rep"),
               "--data", str(tmp_path / "d.parquet")])
    assert rc == 0
    res = json.loads((tmp_path / "rep" / "compare.json").read_text())
    g = res["grounding"]["metrics"]
    assert g["before"]["unparsed"] == 1 and g["after"]["unparsed"] == 0
    assert g["before"]["recall_at_0_5"] == 4 / 6 and g["after"]["recall_at_0_5"] == 5 / 6
    assert {(i["id"], i["change"]) for i in res["grounding"]["images"]} == {("s0", "fixed"), ("s2", "broken")}
    page = (tmp_path / "rep" / "report.html").read_text()
    assert "Grounding / 目标定位" in page and page.count("data:image/png;base64,") == 1 + 4  # chart + 2 samples x 2 runs
    assert "F1@0.5" in (tmp_path / "rep" / "report.md").read_text()
    # the drawn picture has green (reference) and red (prediction) pixels
    img = np.asarray(Image.open(res["grounding"]["images"][1]["files"]["after"]).convert("RGB"))
    assert ((img == (40, 200, 80)).all(axis=2)).any() and ((img == (230, 40, 40)).all(axis=2)).any()
