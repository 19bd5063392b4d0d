"""The registry's regexes and token maths, checked against the REAL module trees and processors."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

TINY_FAMILIES = ("qwen2-vl", "qwen2.5-vl", "qwen3-vl")
# vision MLP linears per block, per family (from the transformers module trees)
VISION_MLP = {"qwen2-vl": 2, "qwen2.5-vl": 3, "qwen3-vl": 2}


@pytest.fixture(scope="module")
def trees(tiny_model_dir):
    """family → (family, model) for the tiny model of each family (built once per session)."""
    from transformers import AutoModelForImageTextToText

    from geovl.models.registry import get_family

    out = {}
    for f in TINY_FAMILIES:
        model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir(f))
        out[f] = (get_family(model.config), model)
    return out


def _linears(model) -> set[str]:
    import torch

    return {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


def _matching(pattern: str, names) -> set[str]:
    return {n for n in names if re.fullmatch(pattern, n)}  # peft full-matches a string target_modules


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_lora_targets_match_the_real_module_tree(family, trees):
    fam, model = trees[family]
    linears = _linears(model)
    modules = {n for n, _ in model.named_modules()}
    layers, depth = model.config.text_config.num_hidden_layers, model.config.vision_config.depth

    llm = {n for n in linears if n.startswith("model.language_model.layers.")}
    vision = {n for n in linears if n.startswith("model.visual.blocks.")}
    merger = {n for n in linears if n.startswith(("model.visual.merger.", "model.visual.deepstack_merger_list."))}
    assert len(llm) == 7 * layers  # q k v o gate up down
    assert len(vision) == (2 + VISION_MLP[family]) * depth
    assert merger and linears == llm | vision | merger | {"lm_head"}  # nothing else is a Linear

    assert _matching(fam.lora_targets(("llm",)), modules) == llm
    assert _matching(fam.lora_targets(("vision",)), modules) == vision
    assert _matching(fam.lora_targets(("llm", "vision")), modules) == llm | vision
    # the merger pattern covers every module inside the merger(s), Linear or not
    merger_modules = {n for n in modules if re.match(r"model\.visual\.(merger|deepstack_merger_list\.\d+)\.", n)}
    assert _matching(fam.lora_targets(("merger",)), modules) == merger_modules
    assert merger <= merger_modules
    if family == "qwen3-vl":
        deep = {n for n in merger if "deepstack_merger_list" in n}
        assert deep and {n.split(".")[3] for n in deep} == {
            str(i) for i in range(len(model.config.vision_config.deepstack_visual_indexes))
        }
    # towers never cross
    assert not any(n.startswith("model.visual") for n in _matching(fam.lora_targets(("llm",)), modules))
    assert not any(not n.startswith("model.visual.blocks.") for n in _matching(fam.lora_targets(("vision",)), modules))
    with pytest.raises(ValueError, match="unknown model part"):
        fam.lora_targets(("llm", "decoder"))


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_part_of_classifies_every_parameter(family, trees):
    fam, model = trees[family]
    parts = {}
    for name, _ in model.named_parameters():
        parts[name] = fam.part_of(name)
        assert fam.part_of("base_model.model." + name) == parts[name]  # peft-wrapped names too
    assert "other" not in parts.values()
    for name, part in parts.items():
        if name.startswith(("model.visual.merger.", "model.visual.deepstack_merger_list.")):
            assert part == "merger", name
        elif name.startswith("model.visual."):
            assert part == "vision", name
        elif name.startswith("model.language_model.embed_tokens."):
            assert part == "embed", name
        elif name.startswith("model.language_model."):
            assert part == "llm", name
        else:
            assert name == "lm_head.weight" and part == "lm_head"
    assert set(parts.values()) == {"merger", "vision", "embed", "llm", "lm_head"}
    # vision embedding regex names real modules
    modules = {n for n, _ in model.named_modules()}
    assert _matching(fam.vision_embed, modules)
    assert fam.vision_blocks and _matching(fam.vision_blocks, modules) == {
        f"model.visual.blocks.{i}" for i in range(model.config.vision_config.depth)
    }


SIZES = [(224, 224), (300, 500), (1000, 200), (56, 56), (28, 28), (20, 900), (4000, 3000), (33, 47)]


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_image_tokens_equal_the_real_processor(family, tiny_model_dir):
    from PIL import Image
    from transformers import AutoProcessor

    from geovl.models.registry import get_family
    from geovl.models.tiny import tiny_processor

    fam = get_family(family)
    tiny = AutoProcessor.from_pretrained(tiny_model_dir(family))
    # (processor, bounds to give the registry): the tiny model's folder, tiny defaults, real-model defaults
    tiny_defaults = tiny_processor(fam, tiny.tokenizer)
    real_defaults = tiny_processor(fam, tiny.tokenizer, fam.default_min_pixels, fam.default_max_pixels)
    cases = [
        (p, p.image_processor.size["shortest_edge"], p.image_processor.size["longest_edge"])
        for p in (tiny, tiny_defaults, real_defaults)
    ]
    assert cases[0][1:] == cases[1][1:] == ((2 * fam.factor) ** 2, (16 * fam.factor) ** 2)
    assert cases[2][1:] == (fam.default_min_pixels, fam.default_max_pixels)
    pad = tiny.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    for proc, lo, hi in cases:
        for h, w in SIZES:
            img = Image.fromarray(np.zeros((h, w, 3), dtype=np.uint8))
            enc = proc(text=["<|vision_start|><|image_pad|><|vision_end|>"], images=[img], return_tensors="pt")
            n = enc["input_ids"][0].tolist().count(pad)
            assert fam.image_tokens(h, w, lo, hi) == n, (family, h, w, lo, hi)
            assert list(fam.grid_thw(h, w, lo, hi)) == enc["image_grid_thw"][0].tolist()
    # with the family defaults (None) the registry predicts the real model's processor
    for h, w in SIZES:
        img = Image.fromarray(np.zeros((h, w, 3), dtype=np.uint8))
        enc = real_defaults(text=["<|image_pad|>"], images=[img], return_tensors="pt")
        assert fam.image_tokens(h, w) == enc["input_ids"][0].tolist().count(pad)
    assert get_family("qwen2-vl").image_tokens(224, 224, 56 * 56, 448 * 448) == 64
    assert get_family("qwen3-vl").image_tokens(224, 224, 64 * 64, 512 * 512) == 49


@settings(max_examples=300, deadline=None)
@given(
    h=st.one_of(st.integers(1, 80), st.integers(1, 6000)),
    w=st.one_of(st.integers(1, 80), st.integers(1, 6000)),
    factor=st.sampled_from([28, 32]),
    lo=st.one_of(st.integers(1, 2000), st.integers(1, 1_000_000)),
    span=st.integers(0, 3_000_000),
)
def test_smart_resize_mirrors_transformers(h, w, factor, lo, span):
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize as hf_smart_resize

    from geovl.models.registry import smart_resize

    hi = lo + span
    try:
        want = hf_smart_resize(h, w, factor, lo, hi)
    except ValueError:  # aspect ratio over 200
        with pytest.raises(ValueError):
            smart_resize(h, w, factor, lo, hi)
        return
    if 0 in want:  # transformers would fail later on an empty image; we refuse up front
        with pytest.raises(ValueError):
            smart_resize(h, w, factor, lo, hi)
    else:
        assert smart_resize(h, w, factor, lo, hi) == want


def test_smart_resize_small_min_pixels_regression():
    """Below factor² the registry used to bump min_pixels up to factor² and disagree with the processor."""
    from geovl.models.registry import smart_resize

    assert smart_resize(14, 100, 28, 100, 10**6) == (28, 28)  # transformers gives (28, 28), not (28, 84)
    with pytest.raises(ValueError, match="min_pixels"):
        smart_resize(10, 10, 28, 0, 10**6)  # rounds to 0×0 with no minimum: refused, not an empty image


def test_get_family_accepts_names_configs_and_models(trees):
    from geovl.models.registry import FAMILIES, UnknownModelType, get_family

    for family, (fam, model) in trees.items():
        assert get_family(family) is fam
        assert get_family(fam.model_type) is fam
        assert get_family(model) is fam and get_family(model.config) is fam
        assert get_family({"model_type": fam.model_type}) is fam
    with pytest.raises(UnknownModelType) as e:
        get_family("llava")
    msg = str(e.value)
    assert "'llava'" in msg
    for f in FAMILIES.values():
        assert f.cli_name in msg and f.model_type in msg
    with pytest.raises(UnknownModelType):
        get_family({"architectures": ["X"]})
