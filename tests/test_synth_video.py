"""Synthetic video (geovl.synth.video, `geovl data synth --video N`): clips decoded back with
geovl.imagery.video.read_frames show exactly what the answers say — new buildings appear when the truth
says, the flight heads where it says and passes over every building it counts."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from geovl.cli import main
from geovl.data.io import read_samples
from geovl.imagery.video import VideoSettings, probe, read_frames
from geovl.synth.scene import make_scene
from geovl.synth.video import DIRECTION_ZH, flight_offsets, scene_clips

SIZE, FPS, SECONDS = 96, 4.0, 4.0
N_FRAMES = int(FPS * SECONDS)


def _box_diff(a: np.ndarray, b: np.ndarray, box) -> float:
    x0, y0, x1, y1 = box
    return float(np.abs(a[y0:y1, x0:x1].astype(int) - b[y0:y1, x0:x1].astype(int)).mean())


@pytest.fixture(scope="module")
def clips():
    out = {}
    for i in range(6):
        sc = make_scene(0, i, SIZE, 6)
        out[i] = (sc, scene_clips(sc, 0, FPS, N_FRAMES))
    return out


def test_construction_clip_truth(clips):
    seen_new = 0
    for sc, c in clips.values():
        mp4, truth = c["construction"]
        assert probe(mp4).frames == N_FRAMES
        clip = read_frames(mp4, VideoSettings(fps=2.0))  # what the model gets: 8 frames, 0.5 s apart
        assert len(clip.frames) == 8
        first, last = clip.frames[0], clip.frames[-1]
        assert truth["buildings_end"] == truth["buildings_start"] + truth["new_buildings"]
        assert truth["new_buildings"] == len(sc.after.new_buildings) == len(truth["appear_s"])
        for box, t_appear in zip(truth["new_boxes"], truth["appear_s"]):
            seen_new += 1
            for f, t in zip(clip.frames, clip.times_s):
                d = _box_diff(f, first, box)
                if t + 1e-6 < t_appear:
                    assert d < 6, (sc.id, box, t, t_appear, d)  # still the empty site
                else:
                    assert d > 25, (sc.id, box, t, t_appear, d)  # a roof now
            assert _box_diff(last, first, box) > 25
        for b in sc.before.buildings:  # old buildings stay as they were
            assert _box_diff(last, first, b.box()) < 6
    assert seen_new >= 3  # the seeds give scenes with new buildings


def test_flight_clip_truth(clips):
    directions = set()
    for sc, c in clips.values():
        mp4, truth = c["flight"]
        d = truth["direction"]
        directions.add(d)
        clip = read_frames(mp4, VideoSettings(fps=2.0))
        rgb = sc.rgb["after"]
        w, h = truth["window"]
        offs = truth["offsets"]
        assert offs == sorted(offs) if d in ("east", "south") else offs == sorted(offs, reverse=True)
        assert offs[0] != offs[-1]
        covered = set()
        for f, t in zip(clip.frames, clip.times_s):
            o = offs[round(t * FPS)]
            crop = rgb[:h, o : o + w] if d in ("east", "west") else rgb[o : o + h, :w]
            assert f.shape == crop.shape
            assert np.abs(f.astype(int) - crop.astype(int)).mean() < 6  # the frame shows that part of the scene
            for k, (x0, y0, x1, y1) in enumerate(truth["boxes"]):
                lo, hi = (x0, x1) if d in ("east", "west") else (y0, y1)
                if o <= lo and hi <= o + (w if d in ("east", "west") else h):
                    covered.add(k)
        # every counted building is wholly in view in some sampled frame
        assert covered == set(range(truth["buildings"])), (sc.id, d)
        assert truth["buildings"] == len(sc.after.layout.buildings)
    assert len(directions) >= 2


def test_flight_offsets_hover_and_reach_both_ends():
    offs = flight_offsets(96, 48, 16)
    assert offs[:2] == [0, 0] and offs[-3:] == [48, 48, 48] and offs == sorted(offs)


def test_cli_writes_video_samples_with_exact_answers(tmp_path):
    out = tmp_path / "syn"
    args = ["data", "synth", "--out", str(out), "--scenes", "3", "--video", "4", "--size", str(SIZE), "--no-progress"]
    assert main(args) == 0
    summary = json.loads((out / "video_summary.json").read_text())
    assert summary["samples"] == 4 * 5 * 2  # 4 scenes × 5 questions × 2 languages
    assert all(s["conserved"] for s in summary["splits"].values())
    scenes = {json.loads(x)["id"]: json.loads(x)["split"] for x in (out / "scenes.jsonl").open()}
    samples = [s for name in ("train", "test") for s in read_samples(out / f"{name}_video.parquet")]
    assert len(samples) == 40
    for s in samples:
        m, gt = s["meta"], s["meta"]["gt"]
        assert s["messages"][0]["content"][0] == {"type": "video"} and len(s["videos"]) == 1
        assert (out / m["video_file"]).read_bytes() == s["videos"][0]
        zh = m["lang"] == "zh"
        if m["task"] == "video_new_building":
            assert s["answer"] == (("是" if zh else "yes") if gt["new_buildings"] else ("否" if zh else "no"))
        elif m["task"] == "video_direction":
            assert s["answer"] == (DIRECTION_ZH[gt["direction"]] if zh else gt["direction"])
            assert s["answer"] in m["choices"]
        else:
            assert s["answer"] == str(gt.get("new_buildings", gt.get("buildings")))
        text = s["messages"][0]["content"][1]["text"]
        assert any("\u4e00" <= ch <= "\u9fff" for ch in text) == zh
    # each scene's clips sit in the split of that scene's image samples
    for name in ("train", "test"):
        for s in read_samples(out / f"{name}_video.parquet"):
            if s["meta"]["scene"] in scenes:
                assert scenes[s["meta"]["scene"]] == name
    # deterministic: the same arguments give the same clips
    out2 = tmp_path / "syn2"
    assert main([*args[:3], str(out2), *args[4:]]) == 0
    for f in sorted((out / "videos").iterdir()):
        assert (
            hashlib.sha256(f.read_bytes()).digest() == hashlib.sha256((out2 / "videos" / f.name).read_bytes()).digest()
        )
