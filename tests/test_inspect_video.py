"""`geovl data inspect` on video samples: frames and visual tokens per video from the headers (checked
against a real decode and the real processor), and the budget rule — subsampled to fit or dropped whole,
counted (geovl.data.video_budget.fit_video_budget, the one function training calls too)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from geovl.cli import main
from geovl.data.inspect import inspect_dataset
from geovl.data.io import DatasetWriter
from geovl.data.schema import make_sample
from geovl.data.video_budget import VideoShape, fit_video_budget, subsample_clip
from geovl.imagery.video import VideoSettings, encode_mp4, read_frames
from geovl.models.registry import video_tokens


def _video(seconds: float, fps: int = 5, h: int = 112, w: int = 168) -> bytes:
    return encode_mp4([np.full((h, w, 3), (7 * i) % 256, np.uint8) for i in range(int(seconds * fps))], fps=fps)


def _write(path, samples):
    with DatasetWriter(path) as w:
        for s in samples:
            w.read_one()
            assert w.write(s)
    return path


def test_fit_video_budget_rule():
    shape = VideoShape(16, 224, 224)

    def cost(v, n):
        return video_tokens("qwen2.5-vl", n, v.height, v.width, 56 * 56, 224 * 224) - 1

    full = cost(shape, 16)  # 8 temporal pairs × 64 tokens − the placeholder
    assert full == 8 * 64 - 1
    assert fit_video_budget(100, [shape], None, cost).action == "fits"
    assert fit_video_budget(100, [shape], 100 + full, cost).action == "fits"
    fit = fit_video_budget(100, [shape], 100 + 4 * 64, cost)
    assert fit.action == "subsampled" and fit.frames == [8] and fit.tokens == 100 + 4 * 64 - 1
    fit = fit_video_budget(100, [shape, VideoShape(4, 224, 224)], 100 + 4 * 64 + 64, cost)
    assert fit.action == "subsampled" and fit.frames == [6, 4]  # frames come off the costliest video first
    assert fit.tokens <= 100 + 5 * 64
    fit = fit_video_budget(100, [shape], 100 + 60, cost)  # not even two frames fit: dropped whole
    assert fit.action == "dropped" and not fit.kept and fit.frames == [16] and fit.tokens == 100 + full
    assert fit_video_budget(500, [], 400, cost).action == "dropped"  # nothing to thin


def test_subsample_clip_uniform_and_even():
    clip = read_frames(_video(8, fps=2), VideoSettings(fps=2, max_frames=16))
    assert len(clip.frames) == 16
    sub = subsample_clip(clip, 5)  # rounded up to 6
    assert len(sub.frames) == 6 and sub.times_s[0] == clip.times_s[0] and sub.times_s[-1] == clip.times_s[-1]
    assert sub.times_s == sorted(sub.times_s)
    assert subsample_clip(clip, 16) is clip


def test_inspect_reports_video_tokens_and_budget(tmp_path):
    short, long_ = _video(2), _video(12)  # 4 and 16 sampled frames at 2 fps
    png = _png()
    samples = [
        make_sample("short", "视频中出现新建筑了吗？", "是", videos=[short], qtype="yes_no"),
        make_sample("long", "Does a new building appear in the video?", "yes", videos=[long_], qtype="yes_no"),
        make_sample("wordy", "x" * 3000, "a", videos=[short]),
        make_sample("img", "y" * 3600, "a", images=[png]),
    ]
    path = _write(tmp_path / "v.parquet", samples)
    r = inspect_dataset(str(path), family="qwen2.5-vl", progress=False)
    # frames and tokens from the headers equal what a decode gives and what the processor maths says
    expect = []
    for b in (short, long_, short):
        clip = read_frames(b, VideoSettings())
        h, w = clip.frames[0].shape[:2]
        expect.append((len(clip.frames), video_tokens("qwen2.5-vl", len(clip.frames), h, w)))
    assert [n for n, _ in expect] == [4, 16, 4]
    assert r["frames_per_video"]["p0"] == 4 and r["frames_per_video"]["p100"] == 16
    assert r["visual_tokens_per_video"]["p100"] == expect[1][1]
    assert r["visual_tokens_per_video"]["p0"] == expect[0][1]
    assert r["videos_per_sample"] == {"0": 1, "1": 3}
    # a budget the short sample meets, the long one meets only with fewer frames, the wordy ones never
    budget = 1100
    r = inspect_dataset(str(path), family="qwen2.5-vl", budget=budget, progress=False)
    assert r["subsampled_to_fit"] == 1 and r["subsampled_ids"] == ["long"]
    assert r["over_budget"] == 2 and sorted(r["over_budget_ids"]) == ["img", "wordy"]
    assert r["frames_per_video"]["p100"] < 16  # the long video is counted with the frames it keeps
    out = main(["data", "inspect", str(path), "--family", "qwen2.5-vl", "--max-tokens", str(budget), "--json"])
    assert out == 0
    text_rc = main(["data", "inspect", str(path), "--family", "qwen2.5-vl", "--video-max-frames", "4"])
    assert text_rc == 0


def test_undecodable_video_is_counted(tmp_path):
    path = _write(tmp_path / "bad.parquet", [make_sample("b", "q?", "a", videos=[b"\x00\x00\x00\x18ftypmp42 cut"])])
    r = inspect_dataset(str(path), family="qwen2-vl", preview=1, progress=False)
    assert r["undecodable_videos"] == 1 and r["preview"][0]["videos"] == ["undecodable (corrupt)"]


def test_inspect_cli_prints_videos(tmp_path, capsys):
    path = _write(tmp_path / "v.jsonl", [make_sample("v", "q?", "a", videos=[_video(3)])])
    assert main(["data", "inspect", str(path), "--family", "qwen3-vl", "--max-tokens", "50", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["over_budget"] == 1 and r["video_settings"]["fps"] == 2.0
    assert main(["data", "inspect", str(path), "--family", "qwen3-vl", "--video-fps", "1"]) == 0
    out = capsys.readouterr().out
    assert "frames/video" in out and "1 fps" in out


@pytest.mark.parametrize("family", ["qwen2.5-vl", "qwen3-vl"])
def test_exact_sequence_length_matches_the_processor(tiny_model_dir, tmp_path, family):
    """With --model, a video sample's sequence length is what the model's processor really produces
    (Qwen3-VL's timestamps and per-pair vision markers included)."""
    from transformers import AutoProcessor

    model = tiny_model_dir(family)
    data = _video(5, h=120, w=200)
    path = _write(tmp_path / "one.parquet", [make_sample("v", "How many buildings at the end?", "3", videos=[data])])
    r = inspect_dataset(str(path), model=str(model), progress=False)
    proc = AutoProcessor.from_pretrained(model)
    clip = read_frames(data, VideoSettings())
    msgs = [
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "How many buildings at the end?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "3"}]},
    ]
    text = proc.apply_chat_template(msgs, tokenize=False)
    meta = clip.processor_metadata()
    assert meta["total_num_frames"] == len(clip.frames) == 10 and meta["fps"] == pytest.approx(2.0, rel=0.05)
    enc = proc(text=[text], videos=[clip.frames], video_metadata=[meta], do_sample_frames=False, return_tensors="pt")
    assert r["sequence_length"]["p0"] == enc["input_ids"].shape[1]
    vid = proc.tokenizer.convert_tokens_to_ids("<|video_pad|>")
    assert r["visual_tokens_per_video"]["p0"] == int((enc["input_ids"] == vid).sum())


def _png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (56, 56), (9, 9, 9)).save(buf, "PNG")
    return buf.getvalue()
