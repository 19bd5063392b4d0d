"""Boxes: the dataset convention (schema validation) and each family's own convention (registry)."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from geovl.data.box_render import render_sample
from geovl.data.boxes import answer_text, box_dict
from geovl.data.schema import SampleError, make_sample, validate_sample
from geovl.models.box_format import BoxFrame, parse_syntax, parse_text, render
from geovl.models.registry import FAMILIES, get_family

FAMS = ("qwen2-vl", "qwen2.5-vl", "qwen3-vl")


def png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((h, w, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def grounding(boxes, images=None, mode="all", qtype="grounding"):
    images = images if images is not None else [png(64, 48)]
    try:
        answer = answer_text(boxes)
    except (TypeError, ValueError, KeyError, OverflowError):  # the bad boxes of the rejection tests
        answer = "[]"
    return make_sample(
        "g1", "Locate every building", answer, images=images, qtype=qtype, meta={"boxes": boxes, "grounding": mode}
    )


# ---- dataset convention: validation -----------------------------------------------------------------


def test_valid_boxes_pass_and_whole_image_box_is_inside():
    s = grounding([box_dict([0, 0, 64, 48], "building"), box_dict([1.5, 2, 10, 20.25], "建筑")])
    validate_sample(s)
    assert s["qtype"] == "grounding"


@pytest.mark.parametrize(
    "box, reason",
    [
        ({"bbox": [0, 0, 65, 10], "label": "b", "image": 0}, "box_outside_image"),
        ({"bbox": [-1, 0, 5, 10], "label": "b", "image": 0}, "box_outside_image"),
        ({"bbox": [0, 0, 10, 49], "label": "b", "image": 0}, "box_outside_image"),
        ({"bbox": [10, 0, 5, 10], "label": "b", "image": 0}, "box_inverted"),
        ({"bbox": [0, 10, 5, 2], "label": "b", "image": 0}, "box_inverted"),
        ({"bbox": [5, 0, 5, 10], "label": "b", "image": 0}, "box_zero_area"),
        ({"bbox": [0, float("nan"), 5, 10], "label": "b", "image": 0}, "box_nan"),
        ({"bbox": [0, 0, float("inf"), 10], "label": "b", "image": 0}, "box_nan"),
        ({"bbox": [0, 0, 5, 10], "image": 0}, "box_missing_label"),
        ({"bbox": [0, 0, 5, 10], "label": "  ", "image": 0}, "box_missing_label"),
        ({"bbox": [0, 0, 5, 10], "label": "b", "image": 1}, "box_bad_image"),
        ({"bbox": [0, 0, 5, 10], "label": "b", "image": -1}, "box_bad_image"),
        ({"bbox": [0, 0, 5], "label": "b", "image": 0}, "bad_boxes"),
        ({"bbox": [0, "a", 5, 6], "label": "b", "image": 0}, "box_not_numeric"),
        ("not a box", "bad_boxes"),
    ],
)
def test_bad_boxes_are_rejected_with_the_reason(box, reason):
    with pytest.raises(SampleError) as e:
        grounding([box])
    assert e.value.reason == reason


def test_box_image_index_is_required_with_several_images_and_checked_per_image():
    imgs = [png(64, 48), png(32, 32)]
    ok = make_sample(
        "m",
        "框出新增建筑",
        "[]",
        images=imgs,
        qtype="grounding",
        meta={"boxes": [{"bbox": [0, 0, 60, 40], "label": "building", "image": 0}]},
    )
    validate_sample(ok)
    with pytest.raises(SampleError) as e:  # fits image 0 (64x48) but not image 1 (32x32)
        make_sample(
            "m",
            "q",
            "[]",
            images=imgs,
            qtype="grounding",
            meta={"boxes": [{"bbox": [0, 0, 60, 40], "label": "b", "image": 1}]},
        )
    assert e.value.reason == "box_outside_image"
    with pytest.raises(SampleError) as e:
        make_sample(
            "m", "q", "[]", images=imgs, qtype="grounding", meta={"boxes": [{"bbox": [0, 0, 6, 4], "label": "b"}]}
        )
    assert e.value.reason == "box_bad_image"


def test_grounding_sample_needs_boxes_and_a_known_mode():
    with pytest.raises(SampleError) as e:
        make_sample("x", "q", "a", images=[png(8, 8)], qtype="grounding")
    assert e.value.reason == "missing_boxes"
    with pytest.raises(SampleError) as e:
        grounding([box_dict([0, 0, 4, 4], "b")], mode="some")
    assert e.value.reason == "bad_grounding_mode"
    with pytest.raises(SampleError) as e:  # a referring expression names exactly one object
        grounding([box_dict([0, 0, 4, 4], "b"), box_dict([5, 5, 9, 9], "b")], mode="referring")
    assert e.value.reason == "bad_boxes"
    validate_sample(grounding([]))  # "all" with nothing there is a valid answer


def test_boxes_survive_a_parquet_round_trip(tmp_path):
    from geovl.data.io import DatasetWriter, read_samples

    s = grounding([box_dict([1, 2, 30, 40], "building")])
    bad = dict(s, id="bad", meta={"boxes": [box_dict([1, 2, 300, 40], "building")]})
    with DatasetWriter(tmp_path / "g.parquet") as w:
        w.write(s)
        w.write(bad)
    assert w.counts.as_dict()["rejected_by_reason"] == {"box_outside_image": 1} and w.counts.written == 1
    (back,) = list(read_samples(tmp_path / "g.parquet"))
    assert back["meta"]["boxes"] == s["meta"]["boxes"] and back["qtype"] == "grounding"
    validate_sample(back)


# ---- family conventions --------------------------------------------------------------------------------


def test_family_styles_follow_the_model_cards():
    assert get_family("qwen2-vl").box_style == "qwen2"
    assert get_family("qwen2.5-vl").box_style == "abs_json"
    assert get_family("qwen3-vl").box_style == "rel_json"
    f2 = get_family("qwen2-vl").box_frame(1000, 500)
    assert render(f2, [box_dict([100, 50, 300, 250], "building")]) == (
        "<|object_ref_start|>building<|object_ref_end|><|box_start|>(100,100),(300,500)<|box_end|>"
    )
    # Qwen2.5-VL: pixels of the resized image — 1000x500 under the defaults resizes to 1008x504
    f25 = get_family("qwen2.5-vl").box_frame(1000, 500)
    assert (f25.resized_w, f25.resized_h) == (1008, 504)
    assert (
        render(f25, [box_dict([100, 50, 300, 250], "building")])
        == '[{"bbox_2d": [101, 50, 302, 252], "label": "building"}]'
    )
    f3 = get_family("qwen3-vl").box_frame(1000, 500)
    assert render(f3, [box_dict([100, 50, 300, 250], "水体")]) == '[{"bbox_2d": [100, 100, 300, 500], "label": "水体"}]'


# stored sizes whose aspect and size change under the bounds: tiny bounds upscale, small max downsizes
SIZES = [(640, 480), (37, 211), (1500, 260), (96, 96), (3000, 2000), (501, 77)]
BOUNDS = [(None, None), (56 * 56, 128 * 128), (128 * 128, 256 * 256), (512 * 512, 1024 * 1024)]


def _err_in_resized_px(frame: BoxFrame, a, b) -> float:
    px, py = frame.resized_pixel()
    return max(abs(a[0] - b[0]) / px, abs(a[2] - b[2]) / px, abs(a[1] - b[1]) / py, abs(a[3] - b[3]) / py)


@pytest.mark.parametrize("family", FAMS)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_round_trip_stored_to_text_to_stored(family, data):
    fam = get_family(family)
    w, h = data.draw(st.sampled_from(SIZES))
    lo, hi = data.draw(st.sampled_from(BOUNDS))
    x1 = data.draw(st.floats(0, w - 1, allow_nan=False))
    y1 = data.draw(st.floats(0, h - 1, allow_nan=False))
    x2 = data.draw(st.floats(x1 + 0.5, w, allow_nan=False))
    y2 = data.draw(st.floats(y1 + 0.5, h, allow_nan=False))
    frame = fam.box_frame(w, h, lo, hi)
    boxes = [box_dict([x1, y1, x2, y2], "building")]
    text = fam.render_boxes(boxes, w, h, lo, hi)
    (back,) = fam.parse_boxes(text, w, h, lo, hi)
    err = _err_in_resized_px(frame, boxes[0]["bbox"], back["bbox"])
    if frame.grid:  # a 0-1000 grid: half a grid step, which is ≤ 1 resized pixel while the side is ≤ 2000
        bound = max(1.0, 0.5 * max(frame.resized_w, frame.resized_h) / 1000) + 1e-9
    else:
        bound = 0.5 + 1e-9
    assert err <= bound, (family, w, h, lo, hi, text)
    if max(frame.resized_w, frame.resized_h) <= 2000:
        assert err <= 1.0 + 1e-9
    assert back["label"] == "building"


@pytest.mark.parametrize("family", FAMS)
def test_resized_size_is_what_the_real_processor_feeds_the_model(family, tiny_model_dir):
    """The frame's resized size equals image_grid_thw x patch of the processor under the same bounds."""
    from transformers import AutoProcessor

    fam = get_family(family)
    proc = AutoProcessor.from_pretrained(tiny_model_dir(family))
    ip = proc.image_processor
    lo, hi = ip.size["shortest_edge"], ip.size["longest_edge"]
    changed = 0
    for w, h in SIZES:
        enc = ip(images=[Image.fromarray(np.zeros((h, w, 3), dtype=np.uint8))], return_tensors="pt")
        _, gh, gw = enc["image_grid_thw"][0].tolist()
        frame = fam.box_frame(w, h, lo, hi)
        assert (frame.resized_w, frame.resized_h) == (gw * fam.patch_size, gh * fam.patch_size)
        changed += (frame.resized_w, frame.resized_h) != (w, h)
    assert changed >= len(SIZES) - 1  # the sizes (and aspect ratios) do change


@pytest.mark.parametrize("family", FAMS)
def test_rendered_boxes_tokenize_and_parse_back_after_decoding(family, tiny_model_dir):
    """Qwen2-VL's box markers are special tokens: decoding with skip_special_tokens drops them, and
    the boxes must still come back."""
    from transformers import AutoProcessor

    fam = get_family(family)
    tok = AutoProcessor.from_pretrained(tiny_model_dir(family)).tokenizer
    boxes = [box_dict([10, 20, 200, 120], "building"), box_dict([300, 40, 420, 200], "building")]
    text = fam.render_boxes(boxes, 640, 480)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    if fam.box_style == "qwen2":
        assert tok.convert_tokens_to_ids("<|box_start|>") in ids
    for skip in (False, True):
        decoded = tok.decode(ids, skip_special_tokens=skip)
        back = fam.parse_boxes(decoded, 640, 480)
        assert back is not None and len(back) == 2
        for a, b in zip(boxes, back):
            assert _err_in_resized_px(fam.box_frame(640, 480), a["bbox"], b["bbox"]) <= 1.0
            assert b["label"] == "building"


def test_render_sample_rewrites_only_the_answer_of_grounding_samples():
    s = grounding([box_dict([8, 8, 40, 30], "building")])
    out = render_sample(s, get_family("qwen2-vl"))
    assert (
        "<|box_start|>" in out["messages"][-1]["content"][0]["text"]
        and out["answer"] == out["messages"][-1]["content"][0]["text"]
    )
    assert s["messages"][-1]["content"][0]["text"] == answer_text(s["meta"]["boxes"])  # the input is untouched
    other = make_sample("o", "q", "yes", images=[png(8, 8)], qtype="yes_no")
    assert render_sample(other, get_family("qwen2-vl")) is other


@pytest.mark.parametrize(
    "text, n",
    [
        (
            '```json\n[\n\t{"bbox_2d": [1, 2, 3, 4], "label": "a"},\n\t{"bbox_2d": [5, 6, 7, 8], "label": "b"}\n]\n```',
            2,
        ),
        ("<|object_ref_start|>a<|object_ref_end|><|box_start|>(1,2),(3,4)<|box_end|>", 1),
        ("a(1,2),(3,4) b(5,6),(7,8)", 2),
        ("[1, 2, 3, 4]", 1),
        ("[]", 0),
        ("无", 0),
        ("None.", 0),
    ],
)
def test_parse_syntax_reads_every_form(text, n):
    out = parse_syntax(text)
    assert out is not None and len(out) == n


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_parse_never_raises_on_junk(text):
    out = parse_text(get_family("qwen2.5-vl").box_frame(100, 100), text)
    assert out is None or all(len(b["bbox"]) == 4 and all(math.isfinite(v) for v in b["bbox"]) for b in out)


def test_junk_is_unparseable_not_empty():
    assert parse_syntax("a few buildings near the river") is None
    assert parse_syntax("") is None
    assert len(FAMILIES) == 3


@pytest.mark.parametrize("family", FAMS)
def test_sft_labels_and_grpo_rows_use_the_family_convention(family, tiny_model_dir, tmp_path):
    """SFT learns the family's own box text (decoded from the labels); GRPO rows carry the frame
    the rewards read the policy's boxes with; a sample whose boxes span two images is dropped."""
    from transformers import AutoProcessor

    from geovl.data.io import DatasetWriter
    from geovl.models.preprocess import PreprocessConfig
    from geovl.train.data import SFTDataset
    from geovl.train.grpo_data import GRPOPrompts

    fam = get_family(family)
    proc = AutoProcessor.from_pretrained(tiny_model_dir(family))
    lo, hi = PreprocessConfig.bounds_of(proc)
    boxes = [box_dict([10, 12, 90, 60], "building"), box_dict([100, 70, 150, 110], "building")]
    good = grounding(boxes, images=[png(160, 120)])
    span = make_sample(
        "span",
        "框出所有建筑",
        "[]",
        images=[png(160, 120), png(160, 120)],
        qtype="grounding",
        meta={"boxes": [dict(boxes[0], image=0), dict(boxes[1], image=1)]},
    )
    with DatasetWriter(tmp_path / "g.parquet") as w:
        w.write(good)
        w.write(span)
    ds = SFTDataset([tmp_path / "g.parquet"], proc, fam, min_pixels=lo, max_pixels=hi, progress=False)
    assert ds.ids == ["g1"] and ds.summary()["dropped_by_reason"] == {"boxes_span_images": 1}
    item = ds[0]
    learned = item["labels"][item["labels"] != -100].tolist()
    text = proc.tokenizer.decode(learned, skip_special_tokens=False)
    want = fam.render_boxes(boxes, 160, 120, lo, hi)
    assert want in text
    back = fam.parse_boxes(text, 160, 120, lo, hi)
    assert [round(v) for v in back[0]["bbox"]] == [10, 12, 90, 60] or _err_in_resized_px(
        fam.box_frame(160, 120, lo, hi), boxes[0]["bbox"], back[0]["bbox"]
    ) <= 1
    prompts = GRPOPrompts([tmp_path / "g.parquet"], proc, fam, None, None, lo, hi, progress=False)
    row = prompts.row(0)
    assert BoxFrame.from_dict(row["meta"]["box_frame"]) == fam.box_frame(160, 120, lo, hi)
    from geovl.rewards import grounding_reward

    assert grounding_reward([want], answer=[row["answer"]], qtype=[row["qtype"]], meta=[row["meta"]])[0] > 0.9
