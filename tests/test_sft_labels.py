"""Loss only on assistant tokens, of every assistant turn; the pre-pass lengths are the real lengths."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

from conftest import TINY_FAMILIES
from geovl.data.schema import make_sample
from geovl.models.preprocess import PreprocessConfig
from geovl.models.registry import get_family
from geovl.train.data import IGNORE, SFTDataset, assistant_label_mask, encode_sample, newline_led_ids
from sft_util import multi_turn_sample, png, qa_samples, write_dataset


def _processor(folder):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(folder)


def _spans(labels: torch.Tensor) -> list[list[int]]:
    """Contiguous runs of learned (non -100) label ids."""
    out, cur = [], []
    for t in labels.tolist():
        if t == IGNORE:
            if cur:
                out.append(cur)
            cur = []
        else:
            cur.append(t)
    if cur:
        out.append(cur)
    return out


def _encode(proc, s):
    tok = proc.tokenizer
    marker = tok.encode("<|im_start|>assistant\n", add_special_tokens=False)
    return encode_sample(proc, s, marker, tok.convert_tokens_to_ids("<|im_end|>"), newline_led_ids(tok))


def _with_pil(s: dict) -> list[dict]:
    """The sample's messages with PIL images in the image parts (what processor.apply_chat_template takes)."""
    imgs = iter(Image.open(io.BytesIO(b)).convert("RGB") for b in s["images"])
    return [
        {
            "role": m["role"],
            "content": [{"type": "image", "image": next(imgs)} if p["type"] == "image" else p for p in m["content"]],
        }
        for m in s["messages"]
    ]


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_labels_are_exactly_every_assistant_answer(tiny_model_dir, family):
    proc = _processor(tiny_model_dir(family))
    tok = proc.tokenizer
    s = multi_turn_sample()
    enc = _encode(proc, s)
    ids, labels = enc["input_ids"], enc["labels"]
    assert labels.shape == ids.shape
    spans = [tok.decode(sp) for sp in _spans(labels)]
    assert spans == ["Cropland, mostly wheat.<|im_end|>", "第二张森林更多。<|im_end|>"]
    assert tok.decode(labels[labels != IGNORE]) == "Cropland, mostly wheat.<|im_end|>第二张森林更多。<|im_end|>"
    # learned labels are the input ids themselves (the model shifts them); nothing of the system/user/images is learned
    learned = labels != IGNORE
    assert torch.equal(labels[learned], ids[learned])
    image_pad = tok.convert_tokens_to_ids("<|image_pad|>")
    assert not learned[ids == image_pad].any()
    fam = get_family(family)
    lo, hi = PreprocessConfig.bounds_of(proc)
    expected_pads = sum(fam.image_tokens(h, w, lo, hi) for w, h in ((56, 84), (112, 56)))
    assert int((ids == image_pad).sum()) == expected_pads  # image tokens fully expanded, none cut
    assert enc["image_grid_thw"].shape == (2, 3)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_mask_equals_the_processors_assistant_mask(tiny_model_dir, family):
    proc = _processor(tiny_model_dir(family))
    s = multi_turn_sample(seed=3)
    ours = _encode(proc, s)
    ref = proc.apply_chat_template(
        _with_pil(s), tokenize=True, return_dict=True, return_assistant_tokens_mask=True, return_tensors="pt"
    )
    assert torch.equal(ours["input_ids"], ref["input_ids"][0])
    assert torch.equal(ours["labels"] != IGNORE, ref["assistant_masks"][0].bool())
    assert torch.equal(ours["pixel_values"], ref["pixel_values"])


@pytest.mark.qwen_vocab
def test_marker_search_with_the_real_qwen_vocabulary(tiny_model_dir):
    proc = _processor(tiny_model_dir("qwen2.5-vl", vocab="qwen"))
    tok = proc.tokenizer
    assert tok.encode("<|im_start|>assistant\n", add_special_tokens=False) == [151644, 77091, 198]
    s = multi_turn_sample(seed=5)
    enc = _encode(proc, s)
    spans = [tok.decode(sp) for sp in _spans(enc["labels"])]
    assert spans == ["Cropland, mostly wheat.<|im_end|>", "第二张森林更多。<|im_end|>"]
    assert all(sp[-1] == 151645 for sp in _spans(enc["labels"]))  # each span ends on <|im_end|>
    ref = proc.apply_chat_template(
        _with_pil(s), tokenize=True, return_dict=True, return_assistant_tokens_mask=True, return_tensors="pt"
    )
    assert torch.equal(enc["labels"] != IGNORE, ref["assistant_masks"][0].bool())


@pytest.mark.parametrize("vocab", ["small", pytest.param("qwen", marks=pytest.mark.qwen_vocab)])
def test_answer_starting_with_a_newline_is_still_found(tiny_model_dir, vocab):
    """With the real vocabulary '\\n' of the marker merges with a leading '\\n' of the answer into one
    token ('\\n\\n' = 271); the turn must still be learned."""
    proc = _processor(tiny_model_dir("qwen2.5-vl", vocab=vocab))
    tok = proc.tokenizer
    s = make_sample("nl", "List the classes.", "\nwater\nforest", [png(56, 56)])
    text = proc.apply_chat_template(s["messages"], tokenize=False)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    marker = tok.encode("<|im_start|>assistant\n", add_special_tokens=False)
    end = tok.convert_tokens_to_ids("<|im_end|>")
    if vocab == "qwen":
        assert 271 in ids and not any(assistant_label_mask(ids, marker, end))  # the plain marker search misses it
    mask = assistant_label_mask(ids, marker, end, newline_led_ids(tok))
    learned = tok.decode([i for i, m in zip(ids, mask) if m])
    assert learned.endswith("water\nforest<|im_end|>") and "List" not in learned and "assistant" not in learned


def test_pure_mask_function_on_hand_made_ids():
    start, end = [1, 2, 3], 9
    ids = [5, 1, 2, 3, 7, 8, 9, 4, 1, 2, 3, 6, 9, 4, 1, 2]  # two complete turns + a cut marker
    mask = assistant_label_mask(ids, start, end)
    assert [i for i, m in zip(ids, mask) if m] == [7, 8, 9, 6, 9]
    # an unterminated final answer is learned to the end
    assert [i for i, m in zip([1, 2, 3, 7, 7], assistant_label_mask([1, 2, 3, 7, 7], start, end)) if m] == [7, 7]


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_prepass_length_is_the_encoded_length(tiny_model_dir, tmp_path, family):
    """The lengths used for budgets and length-grouping equal the real processed lengths (images via header maths)."""
    proc = _processor(tiny_model_dir(family))
    samples = qa_samples(6, sizes=((56, 84), (300, 120), (97, 61))) + [multi_turn_sample()]
    data = write_dataset(tmp_path / "d.parquet", samples)
    ds = SFTDataset([data], proc, get_family(family), progress=False)
    assert len(ds) == 7 and not ds.dropped
    for i in range(len(ds)):
        assert ds[i]["input_ids"].shape[0] == ds.lengths[i], ds.ids[i]
