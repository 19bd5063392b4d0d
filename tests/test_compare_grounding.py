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
    samples = [
        make_sample(
            f"s{i}",
            "Locate every building",
            answer_text(boxes),
            [_png()],
            qtype="grounding",
            meta={"boxes": boxes, "grounding": "all"},
        )
        for i in range(3)
    ]
    with DatasetWriter(tmp_path / "d.parquet") as w:
        for s in samples:
            w.write(s)
    good, bad = answer_text(boxes), "no idea"
    preds = {"before": [bad, good, good], "after": [good, good, answer_text(boxes[:1])]}
    for name, texts in preds.items():
        with open(tmp_path / f"{name}.jsonl", "w") as f:
            for s, t in zip(samples, texts):
                f.write(
                    json.dumps(
                        {
                            "id": s["id"],
                            "qtype": "grounding",
                            "question": "q",
                            "reference": s["answer"],
                            "prediction": t,
                            "meta": s["meta"],
                        }
                    )
                    + "\n"
                )
    rc = main(
        [
            "compare",
            str(tmp_path / "before.jsonl"),
            str(tmp_path / "after.jsonl"),
            "--out",
            str(tmp_path / "rep"),
            "--data",
            str(tmp_path / "d.parquet"),
        ]
    )
    assert rc == 0
    res = json.loads((tmp_path / "rep" / "compare.json").read_text())
    g = res["grounding"]["metrics"]
    assert g["before"]["unparsed"] == 1 and g["after"]["unparsed"] == 0
    assert g["before"]["recall_at_0_5"] == 4 / 6 and g["after"]["recall_at_0_5"] == 5 / 6
    assert {(i["id"], i["change"]) for i in res["grounding"]["images"]} == {("s0", "fixed"), ("s2", "broken")}
    page = (tmp_path / "rep" / "report.html").read_text()
    assert (
        "Grounding / 目标定位" in page and page.count("data:image/png;base64,") == 1 + 4
    )  # chart + 2 samples x 2 runs
    assert "F1@0.5" in (tmp_path / "rep" / "report.md").read_text()
    # the drawn picture has green (reference) and red (prediction) pixels
    img = np.asarray(Image.open(res["grounding"]["images"][1]["files"]["after"]).convert("RGB"))
    assert ((img == (40, 200, 80)).all(axis=2)).any() and ((img == (230, 40, 40)).all(axis=2)).any()


def test_compare_gives_grounding_metrics_exact_mcnemar_and_bootstrap(tmp_path, capsys):
    """Hand-computed: referring Acc@0.5 hits before F,F,F,T,T / after T,T,T,T,F → fixed 3, broken 1,
    McNemar p = 2·(C(4,0)+C(4,1))/2^4 = 0.625; 'every building' samples all unparsed before and exact after →
    fixed 4, broken 0, p = 2/16 = 0.125 and every bootstrap replicate gives Δ = +100 pp (a gain)."""
    from geovl.cli import main
    from geovl.evaluate.significance import bootstrap_delta_ci

    ref1 = [box_dict([10, 10, 40, 40], "pond")]
    far = answer_text([box_dict([50, 5, 75, 30], "pond")])  # one box (count right), IoU 0 (a miss)
    many = [box_dict([5, 5, 25, 25], "building"), box_dict([40, 10, 70, 40], "building")]
    rows = []
    for i, (b, a) in enumerate([(0, 1), (0, 1), (0, 1), (1, 1), (1, 0)]):
        hit = answer_text(ref1)
        rows.append((f"r{i}", ref1, "referring", hit if b else far, hit if a else far))
    for i in range(4):
        rows.append((f"a{i}", many, "all", "no idea", answer_text(many)))
    for side in ("before", "after"):
        with open(tmp_path / f"{side}.jsonl", "w") as f:
            for rid, boxes, mode, pb, pa in rows:
                f.write(
                    json.dumps(
                        {
                            "id": rid,
                            "qtype": "grounding",
                            "question": "q",
                            "reference": answer_text(boxes),
                            "prediction": pb if side == "before" else pa,
                            "meta": {"boxes": boxes, "grounding": mode},
                        }
                    )
                    + "\n"
                )
    assert (
        main(["compare", str(tmp_path / "before.jsonl"), str(tmp_path / "after.jsonl"), "--out", str(tmp_path / "rep")])
        == 0
    )
    res = json.loads((tmp_path / "rep" / "compare.json").read_text())
    assert "grounding_tests" not in res
    t = {r["qtype"]: r for r in res["grounding"]["tests"]}
    r = t["acc_at_0_5"]
    assert (r["n"], r["fixed"], r["broken"], r["before_correct"], r["after_correct"]) == (5, 3, 1, 2, 4)
    assert r["mcnemar_p"] == 0.625 and r["delta"] == 0.4
    assert r["delta_ci95"] == list(bootstrap_delta_ci(3, 1, 5)) and r["delta_ci95"][0] < 0 < r["delta_ci95"][1]
    assert r["verdict"] == "no measurable change"
    assert (
        res["grounding"]["metrics"]["before"]["acc_at_0_5"] == 0.4
        and res["grounding"]["metrics"]["after"]["acc_at_0_5"] == 0.8
    )
    a = t["all_matched_at_0_5"]
    assert (a["n"], a["fixed"], a["broken"], a["mcnemar_p"], a["delta_ci95"], a["verdict"]) == (
        4,
        4,
        0,
        0.125,
        [1.0, 1.0],
        "gain",
    )
    c = t["count_from_boxes"]  # the referring answers always give one box; the unparsed ones give none
    assert (c["n"], c["fixed"], c["broken"], c["mcnemar_p"]) == (9, 4, 0, 0.125)
    out = capsys.readouterr().out
    assert "Grounding / 目标定位" in out and "0.625" in out and "0.125" in out
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| Acc@0.5 (referring) | 5 |" in md and "0.625" in md
    page = (tmp_path / "rep" / "report.html").read_text()
    assert "逐样本配对显著性" in page and "<td>all boxes matched @0.5 / 全部框匹配</td>" in page and "0.125" in page
