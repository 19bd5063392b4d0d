"""Why a time series goes in as images, not video frames (docs/timeseries.md): the facts, pinned on the real
processors of the pinned transformers for Qwen2-VL, Qwen2.5-VL and Qwen3-VL (tiny configs, same classes)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from transformers.video_utils import VideoMetadata

from geovl.models.registry import get_family
from geovl.models.tiny import tiny_processor
from geovl.models.tokenizer import build_tokenizer

FAMILIES = ("qwen2-vl", "qwen2.5-vl", "qwen3-vl")
YEAR_S = 365.25 * 86400  # one frame per year, as a frame rate: 1 / YEAR_S frames per second


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer("small")


def _processor(family, tokenizer):
    f = get_family(family)
    px = f.factor**2 * 4  # a 2x2 grid of merged tokens per frame
    return f, tiny_processor(f, tokenizer, min_pixels=px, max_pixels=px)


def _frames(f, n):
    side = f.factor * 2
    return np.stack([np.full((side, side, 3), 255 * (i % 2), np.uint8) for i in range(n)])  # black, white, ...


@pytest.mark.parametrize("family", FAMILIES)
def test_two_video_frames_fuse_into_one_temporal_patch(family, tokenizer):
    f, proc = _processor(family, tokenizer)
    vp = proc.video_processor
    assert vp.temporal_patch_size == 2
    two = _frames(f, 2)  # date 1 black, date 2 white
    out = vp(videos=[two], return_tensors="pt", do_sample_frames=False)
    t, h, w = out["video_grid_thw"][0].tolist()
    assert t == 1  # two dates, one temporal step
    rows = out["pixel_values_videos"]
    assert rows.shape[0] == t * h * w
    # every visual token's input row holds both dates: (channel, time, patch, patch), time 0 black, time 1 white
    per = rows.view(rows.shape[0], 3, 2, f.patch_size, f.patch_size)
    black, white = per[:, :, 0], per[:, :, 1]
    assert bool((black < white).all())
    assert float((per[:, :, 0] - per[0, :, 0]).abs().max()) == 0.0  # one value per channel: the black frame
    # an odd count is padded with the last frame; 4 frames → 2 temporal steps
    assert vp(videos=[_frames(f, 3)], return_tensors="pt", do_sample_frames=False)["video_grid_thw"][0][0] == 2
    assert vp(videos=[_frames(f, 4)], return_tensors="pt", do_sample_frames=False)["video_grid_thw"][0][0] == 2


@pytest.mark.parametrize("family", FAMILIES)
def test_dated_images_keep_one_grid_each(family, tokenizer):
    f, proc = _processor(family, tokenizer)
    two = _frames(f, 2)
    out = proc.image_processor(images=list(two), return_tensors="pt")
    grids = out["image_grid_thw"].tolist()
    assert grids == [[1, 2 * f.merge_size, 2 * f.merge_size]] * 2  # one grid per date, t == 1
    video = proc.video_processor(videos=[two], return_tensors="pt", do_sample_frames=False)
    assert out["pixel_values"].shape[0] == 2 * video["pixel_values_videos"].shape[0]  # twice the tokens of a video
    # an image is its one frame repeated over the temporal patch: no other date in its rows
    per = out["pixel_values"].view(-1, 3, 2, f.patch_size, f.patch_size)
    assert float((per[:, :, 0] - per[:, :, 1]).abs().max()) == 0.0


def test_qwen3_vl_timestamps_are_seconds_averaged_over_frame_pairs(tokenizer):
    f, proc = _processor("qwen3-vl", tokenizer)
    md = VideoMetadata(total_num_frames=4, fps=1 / YEAR_S, frames_indices=[0, 1, 2, 3])
    text = "<|vision_start|><|video_pad|><|vision_end|>In which year?"
    out = proc(text=[text], videos=[_frames(f, 4)], video_metadata=[md], do_sample_frames=False, return_tensors="pt")
    decoded = tokenizer.decode(out["input_ids"][0])
    stamps = [float(x) for x in re.findall(r"<([0-9.]+) seconds>", decoded)]
    # four yearly dates → two timestamps in seconds, each the mean of a fused pair (0.5 and 2.5 years)
    assert stamps == [pytest.approx(0.5 * YEAR_S, abs=0.1), pytest.approx(2.5 * YEAR_S, abs=0.1)]


def test_qwen2_5_vl_time_step_per_fused_pair(tokenizer):
    f, proc = _processor("qwen2.5-vl", tokenizer)
    md = VideoMetadata(total_num_frames=4, fps=1 / YEAR_S, frames_indices=[0, 1, 2, 3])
    text = "<|vision_start|><|video_pad|><|vision_end|>In which year?"
    out = proc(text=[text], videos=[_frames(f, 4)], video_metadata=[md], do_sample_frames=False, return_tensors="pt")
    assert out["video_grid_thw"][0][0] == 2
    # the rotary time step per temporal patch is tokens_per_second x second_per_grid_ts (2 years of seconds here)
    assert float(out["second_per_grid_ts"][0]) == pytest.approx(2 * YEAR_S)


@pytest.mark.parametrize("family,model_cls", [("qwen2-vl", "Qwen2VLModel"), ("qwen2.5-vl", "Qwen2_5_VLModel")])
def test_rotary_time_position_of_yearly_frames(family, model_cls, tokenizer):
    """M-RoPE temporal positions (the model's get_rope_index, weights on the meta device): one step per fused
    pair for Qwen2-VL whatever the time between dates; tokens_per_second × 2 / fps for Qwen2.5-VL."""
    import torch
    import transformers

    from geovl.models.tiny import tiny_config

    f, proc = _processor(family, tokenizer)
    cfg = tiny_config(f, tokenizer)
    with torch.device("meta"):
        model = getattr(transformers, model_cls)(cfg)
    md = VideoMetadata(total_num_frames=4, fps=1 / YEAR_S, frames_indices=[0, 1, 2, 3])
    text = "<|vision_start|><|video_pad|><|vision_end|>x"
    out = proc(text=[text], videos=[_frames(f, 4)], video_metadata=[md], do_sample_frames=False, return_tensors="pt")
    extra = {"second_per_grid_ts": out["second_per_grid_ts"]} if "second_per_grid_ts" in out else {}
    pos, _ = model.get_rope_index(
        out["input_ids"], out["mm_token_type_ids"], video_grid_thw=out["video_grid_thw"], **extra
    )
    t = pos[0, 0][out["input_ids"][0] == cfg.video_token_id].tolist()
    assert len(t) == 8 and len(set(t[:4])) == len(set(t[4:])) == 1  # 4 dates → 2 time positions
    step = t[4] - t[0]
    if family == "qwen2-vl":
        assert step == 1
    else:
        assert step == round(cfg.vision_config.tokens_per_second * 2 * YEAR_S)  # 252 460 800 at the default 4
