"""Video token maths (models/registry.py) against the real processors of the pinned transformers: the
number of ``<|video_pad|>`` tokens each family's processor inserts for a clip must equal
``video_tokens`` — for the tiny models' processors (per-frame cap on) and the stock video processors."""

from __future__ import annotations

import numpy as np
import pytest
import transformers

from geovl.models.registry import FAMILIES, get_family, video_bounds_of, video_tokens
from geovl.models.tiny import tiny_processor
from geovl.models.tokenizer import build_tokenizer

# (frames, height, width): tiny to large, odd sizes, extreme aspect, odd frame counts (padded in pairs)
SIZES = [(2, 64, 96), (4, 200, 120), (16, 480, 640), (8, 33, 1000), (6, 512, 512), (3, 90, 70), (32, 360, 640)]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer("small")


def _count(proc, tokenizer, frames) -> tuple[int, list]:
    msgs = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "what changes?"}]}]
    text = proc.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    meta = {"fps": 2.0, "total_num_frames": len(frames), "frames_indices": list(range(len(frames)))}
    out = proc(text=[text], videos=[frames], video_metadata=[meta], do_sample_frames=False, return_tensors="pt")
    vid = tokenizer.convert_tokens_to_ids("<|video_pad|>")
    return int((out["input_ids"] == vid).sum()), out["video_grid_thw"][0].tolist()


def _stock(fam, tokenizer):
    """The family's processor with the stock video processor (transformers' defaults, no per-frame cap)."""
    _, proc_name, video_name = {
        "qwen2_vl": (None, "Qwen2VLProcessor", "Qwen2VLVideoProcessor"),
        "qwen2_5_vl": (None, "Qwen2_5_VLProcessor", "Qwen2VLVideoProcessor"),
        "qwen3_vl": (None, "Qwen3VLProcessor", "Qwen3VLVideoProcessor"),
    }[fam.key]
    common = dict(patch_size=fam.patch_size, merge_size=fam.merge_size, temporal_patch_size=fam.temporal_patch_size)
    vp = getattr(transformers, video_name)(cap_pixels_per_frame=False, **common)
    ip = transformers.Qwen2VLImageProcessor(**common)
    return getattr(transformers, proc_name)(
        image_processor=ip, tokenizer=tokenizer, video_processor=vp, chat_template=tokenizer.chat_template
    )


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_video_tokens_match_the_processor(family, tokenizer):
    fam = get_family(family)
    for proc, label in ((tiny_processor(fam, tokenizer), "tiny (capped)"), (_stock(fam, tokenizer), "stock")):
        bounds = video_bounds_of(proc)
        for n, h, w in SIZES:
            frames = [np.zeros((h, w, 3), np.uint8)] * n
            real, grid = _count(proc, tokenizer, frames)
            assert real > 0
            assert fam.video_grid_thw(n, h, w, **bounds) == tuple(grid), (label, n, h, w)
            assert video_tokens(family, n, h, w, **bounds) == real, (label, n, h, w)
    # None: the stock processor's defaults
    assert video_tokens(fam, 16, 480, 640) == video_tokens(fam, 16, 480, 640, **video_bounds_of(_stock(fam, tokenizer)))


def test_frames_scale_tokens_in_pairs():
    fam = get_family("qwen2.5-vl")
    one = video_tokens(fam, 2, 448, 448, 56 * 56, 448 * 448)
    assert one == (448 // 28) ** 2  # two frames merge into one temporal patch: one frame's worth of tokens
    assert video_tokens(fam, 16, 448, 448, 56 * 56, 448 * 448) == 8 * one
    assert video_tokens(fam, 15, 448, 448, 56 * 56, 448 * 448) == 8 * one  # odd: the last frame is repeated
    with pytest.raises(ValueError):
        video_tokens("qwen3-vl", 1, 64, 64)  # Qwen3-VL's processor refuses fewer than 2 frames
