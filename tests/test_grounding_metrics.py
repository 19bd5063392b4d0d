"""Grounding rewards (TRL contract, routed by qtype) and `geovl score` metrics for boxes."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geovl.evaluate.grounding import ap50, iou, match, score_boxes, summarize_grounding
from geovl.models.box_format import render
from geovl.models.registry import get_family
from geovl.rewards import BUILTIN_REWARDS, box_count_reward, box_format_reward, grounding_reward, rs_reward

W, H = 400, 300


def box(x1, y1, x2, y2, label="building"):
    return {"bbox": [float(x1), float(y1), float(x2), float(y2)], "label": label, "image": 0}


BOXES = st.lists(
    st.tuples(st.integers(0, 350), st.integers(0, 250), st.integers(8, 50), st.integers(8, 50)).map(
        lambda t: box(t[0], t[1], t[0] + t[2], t[1] + t[3])
    ),
    min_size=1,
    max_size=6,
)


def frame(family):
    return get_family(family).box_frame(W, H, 56 * 56, 256 * 256)  # resized ≠ stored for Qwen2.5-VL


def call(fn, texts, boxes, mode="all", family="qwen2.5-vl", qtype="grounding"):
    meta = {"boxes": boxes, "grounding": mode, "box_frame": frame(family).as_dict()}
    n = len(texts)
    return fn(
        [[{"role": "assistant", "content": t}] for t in texts],
        answer=["ref"] * n,
        qtype=[qtype] * n,
        meta=[json.dumps(meta)] * n,
    )


def test_iou_and_matching_basics():
    assert iou([0, 0, 10, 10], [0, 0, 10, 10]) == 1.0
    assert iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(50 / 150)
    assert iou([0, 0, 10, 10], [10, 0, 20, 10]) == 0.0
    assert iou([10, 0, 0, 10], [0, 0, 10, 10]) == 0.0  # inverted box
    # greedy would pair p0 with r0 (0.7) and leave p1 unmatched; Hungarian finds two pairs
    pred = [[0, 0, 10, 10], [3, 0, 13, 10]]
    ref = [[2, 0, 12, 10], [6, 0, 16, 10]]
    pairs = match(pred, ref)
    assert len(pairs) == 2 and {(i, j) for i, j, _ in pairs} == {(0, 0), (1, 1)}


@pytest.mark.parametrize("family", ["qwen2-vl", "qwen2.5-vl", "qwen3-vl"])
@settings(max_examples=40, deadline=None)
@given(boxes=BOXES, perm=st.randoms(use_true_random=False))
def test_perfect_answer_scores_one_and_order_does_not_matter(family, boxes, perm):
    text = render(frame(family), boxes)
    shuffled = list(boxes)
    perm.shuffle(shuffled)
    text2 = render(frame(family), shuffled)
    r1 = call(grounding_reward, [text, text2], boxes, family=family)
    # the family's integer grid costs at most a resized pixel: IoU stays close to 1, and order is irrelevant
    assert r1[0] == pytest.approx(r1[1], abs=1e-9)
    assert r1[0] >= 0.75
    assert call(box_count_reward, [text], boxes, family=family) == [1.0]
    assert call(box_format_reward, [text], boxes, family=family) == [1.0]


def test_exact_boxes_score_exactly_one_shifted_less_junk_zero():
    boxes = [box(40, 30, 120, 90), box(200, 100, 280, 200)]
    fr = get_family("qwen2.5-vl").box_frame(W, H)  # default bounds: 400x300 → 392x308; on-grid boxes stay exact
    exact = json.dumps([{"bbox_2d": fr.to_model(b["bbox"]), "label": "building"} for b in boxes])
    meta = {
        "boxes": [box(*[v for v in fr.from_model(fr.to_model(b["bbox"]))]) for b in boxes],
        "box_frame": fr.as_dict(),
    }
    kw = dict(answer=["r"] * 4, qtype=["grounding"] * 4, meta=[meta] * 4)
    shifted = json.dumps([{"bbox_2d": [v + 6 for v in fr.to_model(b["bbox"])], "label": "building"} for b in boxes])
    far = json.dumps([{"bbox_2d": [v + 60 for v in fr.to_model(b["bbox"])], "label": "building"} for b in boxes])
    out = grounding_reward([exact, shifted, far, "I see some buildings."], **kw)
    assert out[0] == 1.0
    assert 0.0 < out[1] < 1.0
    assert out[2] < out[1]
    assert out[3] == 0.0
    assert box_format_reward([exact, "I see some buildings."], **{k: v[:2] for k, v in kw.items()}) == [1.0, 0.0]
    # one box missing: count and F1 go down
    one = json.dumps([{"bbox_2d": fr.to_model(boxes[0]["bbox"]), "label": "building"}])
    assert grounding_reward([one], **{k: v[:1] for k, v in kw.items()})[0] == pytest.approx(2 / 3)
    assert box_count_reward([one], **{k: v[:1] for k, v in kw.items()})[0] < 1.0


def test_referring_reward_is_iou_and_guessing_many_does_not_pay():
    ref = [box(100, 100, 200, 200, "the largest water body")]
    fr = frame("qwen3-vl")
    hit = render(fr, ref)
    half = render(fr, [box(150, 100, 250, 200)])
    many = render(fr, [box(100, 100, 200, 200), box(0, 0, 50, 50)])
    out = call(grounding_reward, [hit, half, many, "somewhere"], ref, mode="referring", family="qwen3-vl")
    assert out[0] == pytest.approx(1.0, abs=0.02)
    assert out[1] == pytest.approx(1 / 3, abs=0.02)
    assert out[2] == pytest.approx(0.5, abs=0.02)
    assert out[3] == 0.0


def test_rewards_route_by_qtype_and_are_none_elsewhere():
    texts = ["[]", "yes"]
    kw = dict(answer=["[]", "yes"], qtype=["grounding", "yes_no"], meta=[{"boxes": []}, None])
    assert grounding_reward(texts, **kw) == [1.0, None]  # nothing there, nothing said: correct
    assert box_count_reward(texts, **kw) == [1.0, None]
    assert rs_reward(texts, **kw) == [1.0, 1.0]
    assert "grounding_reward" in BUILTIN_REWARDS


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200))
def test_junk_never_raises_and_scores_zero_unless_it_says_nothing(text):
    boxes = [box(10, 10, 50, 50)]
    (r,) = call(grounding_reward, [text], boxes)
    assert 0.0 <= r <= 1.0
    res = score_boxes(None, [{"bbox": [10, 10, 50, 50]}])
    assert res["parsed"] is False and res["f1"] == 0.0 and not res["correct"]


# ---- geovl score ------------------------------------------------------------------------------------


def _rec(i, prediction, boxes, mode="all", frame_=None, lang="en"):
    meta = {"boxes": boxes, "grounding": mode}
    if frame_:
        meta["box_frame"] = frame_
    return {
        "id": str(i),
        "qtype": "grounding",
        "question": "Locate every building",
        "reference": "[]",
        "prediction": prediction,
        "lang": lang,
        "meta": meta,
    }


def test_geovl_score_reports_grounding_metrics(tmp_path):
    from geovl.evaluate.score import format_metrics, score_file

    fr = get_family("qwen2-vl").box_frame(W, H)
    b1, b2 = box(40, 30, 120, 90), box(200, 100, 280, 200)
    recs = [
        _rec(1, render(fr, [b1, b2]), [b1, b2], frame_=fr.as_dict()),  # both found
        _rec(2, render(fr, [b1]), [b1, b2], frame_=fr.as_dict()),  # one missed
        _rec(3, "buildings everywhere", [b1], frame_=fr.as_dict()),  # unparseable
        _rec(4, render(fr, [b1]), [b1], mode="referring", frame_=fr.as_dict()),  # hit
        _rec(5, render(fr, [box(300, 200, 390, 290)]), [b1], mode="referring", frame_=fr.as_dict(), lang="zh"),  # miss
        {"id": "6", "qtype": "count", "question": "How many?", "reference": "2", "prediction": "2", "meta": {}},
    ]
    p = tmp_path / "preds.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in recs))
    results, m = score_file(p)
    g = m["by_qtype"]["grounding"]
    assert g["n"] == 5 and g["unparsed"] == 1 and g["correct"] == 2
    assert g["acc_at_0_5"] == 0.5 and 0.45 < g["mean_iou"] < 0.55
    assert g["precision_at_0_5"] == 1.0 and g["recall_at_0_5"] == pytest.approx(3 / 5)
    assert g["f1_at_0_5"] == pytest.approx(0.75)
    assert g["ap50"] == pytest.approx(3 / 5)  # every box right, 3 of 5 objects found
    assert g["count_accuracy"] == pytest.approx(3 / 5)  # 1, 4, 5 have as many boxes as objects
    assert m["by_qtype"]["count"]["accuracy"] == 1.0
    text = format_metrics(m)
    assert "Acc@0.5 50.0%" in text and "AP50" in text
    json.dumps(m)  # the metrics file is JSON


def test_ap50_ranks_by_score_when_given():
    good = {"mode": "all", "n_ref": 1, "ranked": [[0.9, True, 0]], "tp": 1, "fp": 0, "fn": 0, "f1": 1.0}
    bad = {"mode": "all", "n_ref": 0, "ranked": [[0.1, False, 0]], "tp": 0, "fp": 1, "fn": 0, "f1": 0.0}
    assert ap50([good, bad]) == 1.0  # the false positive ranks below the only true one
    bad_high = dict(bad, ranked=[[0.95, False, 0]])
    assert ap50([good, bad_high]) == 0.5
    s = summarize_grounding([dict(good, count_correct=True), dict(bad, count_correct=False)])
    assert s["precision_at_0_5"] == 0.5 and s["recall_at_0_5"] == 1.0


def test_mean_iou_per_object_counts_missed_objects_as_zero():
    ref = [box(0, 0, 10, 10), box(20, 0, 30, 10)]
    res = score_boxes([box(0, 0, 10, 5)], ref)  # half of the first object, the second missed
    assert res["object_iou"] == pytest.approx(0.25)
    assert score_boxes([box(20, 0, 30, 10), box(0, 0, 10, 10)], ref)["object_iou"] == 1.0
    assert score_boxes(None, ref)["object_iou"] == 0.0 and score_boxes([], [])["object_iou"] is None
    s = summarize_grounding(
        [
            dict(score_boxes([box(0, 0, 10, 5)], ref), count_correct=False),
            dict(score_boxes([box(0, 0, 10, 10)], ref[:1]), count_correct=True),
        ]
    )
    assert s["mean_object_iou"] == pytest.approx((0.5 + 0 + 1) / 3)
