"""Synthetic video clips of the synthetic county scenes, with exact truth (``geovl data synth --video N``).

Two clips per scene (:func:`make_scene`, the same scene ``i`` as the image samples), H.264 MP4 written by
:func:`geovl.imagery.video.encode_mp4` — nothing is downloaded:

- **construction** (施工): a fixed camera over the whole "before" scene; each of the scene's new buildings
  (0–3, :mod:`.change`) appears at its own frame (``meta["gt"]["appear_s"]``), roof and shadow at once.
  Questions: does a new building appear (yes_no, 是/否 · yes/no), how many new buildings appear (count), how
  many buildings are there at the end (count).
- **flight** (航拍): a drone-like pan over the "after" scene — the frame is half the scene along the
  flight direction and hovers for two frames at the start and three at the end, so every building is
  wholly in view in some frame, also when the clip is sampled at 2 fps. Questions: which direction
  does it fly (choice: 东/南/西/北 · east/south/west/north; image up is north), how many buildings does it
  pass over (count: every building of the scene).

Clips last ``seconds`` at ``fps`` (default 4 s at 4 fps: 16 frames); appearance frames lie in
``[2, n − 3]`` so the sampled frames (0.5 s apart by default) see both the empty site and the finished
building. Samples go to ``<split>_video.<fmt>`` (the scene's split of the image samples: no place is in
two splits) and each clip to ``videos/<scene>-<kind>.mp4``; ``video_summary.json`` counts them.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from ..data.io import DatasetWriter
from ..data.schema import make_sample
from ..imagery.video import encode_mp4
from .classes import BUILDING
from .layout import Layout
from .render import render
from .scene import Scene, make_scene

KINDS = ("construction", "flight")
DIRECTIONS = ("east", "south", "west", "north")
DIRECTION_ZH = {"east": "东", "south": "南", "west": "西", "north": "北"}
YES_NO = {"zh": ("是", "否"), "en": ("yes", "no")}
HOVER_START, HOVER_END = 2, 3  # flight frames held at either end


def _even(a: np.ndarray) -> np.ndarray:
    """Crop to an even height and width (H.264 4:2:0)."""
    h, w = a.shape[0] - a.shape[0] % 2, a.shape[1] - a.shape[1] % 2
    return a[:h, :w]


def construction_frames(sc: Scene, n_frames: int, rng: np.random.Generator) -> tuple[list[np.ndarray], list[int]]:
    """Frames of the construction clip and the frame index at which each new building appears."""
    new = list(sc.after.new_buildings)
    lo, hi = 2, n_frames - 3
    if hi - lo + 1 < len(new):
        raise ValueError(f"{n_frames} frames are too few for {len(new)} appearing buildings")
    appear = sorted(int(k) for k in rng.choice(np.arange(lo, hi + 1), size=len(new), replace=False))
    frames, cache = [], {}
    for k in range(n_frames):
        shown = sum(1 for a in appear if a <= k)
        if shown not in cache:
            cls = sc.before.classes.copy()
            for b in new[:shown]:
                cls[b.y0 : b.y1, b.x0 : b.x1] = BUILDING
            cache[shown] = _even(render(Layout(cls, list(sc.before.buildings) + new[:shown]), sc.textures)[0])
        frames.append(cache[shown])
    return frames, appear


def flight_offsets(size: int, window: int, n_frames: int) -> list[int]:
    """Window offset along the flight for each frame: hover, a uniform pan, hover."""
    moving = n_frames - HOVER_START - HOVER_END
    if moving < 2:
        raise ValueError(f"a flight needs at least {HOVER_START + HOVER_END + 2} frames, got {n_frames}")
    travel = size - window
    pan = [round(i * travel / (moving - 1)) for i in range(moving)]
    return [0] * HOVER_START + pan + [travel] * HOVER_END


def flight_frames(sc: Scene, n_frames: int, direction: str) -> tuple[list[np.ndarray], list[int]]:
    """Frames of the flight over the "after" scene heading ``direction``, and each frame's offset (pixels
    from the west edge for east/west flights, from the north edge for north/south ones)."""
    rgb = sc.rgb["after"]
    size = rgb.shape[0]
    window = (size // 2) - (size // 2) % 2
    offs = flight_offsets(size, window, n_frames)
    if direction in ("west", "north"):
        offs = [size - window - o for o in offs]
    frames = []
    for o in offs:
        crop = rgb[:, o : o + window] if direction in ("east", "west") else rgb[o : o + window, :]
        frames.append(_even(np.ascontiguousarray(crop)))
    return frames, offs


def _questions(kind: str, truth: dict, lang: str) -> list[tuple[str, str, str, str, dict, list]]:
    """(task, qtype, question, answer, gt, choices) of one clip."""
    zh = lang == "zh"
    yes, no = YES_NO[lang]
    if kind == "construction":
        n_new, n_end = truth["new_buildings"], truth["buildings_end"]
        return [
            (
                "video_new_building",
                "yes_no",
                "视频中出现新建筑了吗？请回答是或否。"
                if zh
                else "Does a new building appear in the video? Answer yes or no.",
                yes if n_new else no,
                {"new_buildings": n_new},
                [],
            ),
            (
                "video_new_count",
                "count",
                "视频中新出现了几栋建筑？" if zh else "How many new buildings appear in the video?",
                str(n_new),
                {"new_buildings": n_new, "appear_s": truth["appear_s"]},
                [],
            ),
            (
                "video_end_count",
                "count",
                "视频结束时画面中共有多少栋建筑？" if zh else "How many buildings are there at the end of the video?",
                str(n_end),
                {"buildings": n_end, "boxes": truth["boxes_end"]},
                [],
            ),
        ]
    d = truth["direction"]
    choices = [DIRECTION_ZH[x] for x in DIRECTIONS] if zh else list(DIRECTIONS)
    return [
        (
            "video_direction",
            "choice",
            "无人机朝哪个方向飞行？请回答东、南、西或北（影像上方为北）。"
            if zh
            else "In which direction does the camera fly? Answer east, south, west or north (north is up).",
            DIRECTION_ZH[d] if zh else d,
            {"direction": d},
            choices,
        ),
        (
            "video_flight_count",
            "count",
            "飞行途中共经过多少栋建筑？" if zh else "How many buildings does the flight pass over?",
            str(truth["buildings"]),
            {"buildings": truth["buildings"], "boxes": truth["boxes"]},
            [],
        ),
    ]


def scene_clips(sc: Scene, seed: int, fps: float, n_frames: int) -> dict[str, tuple[bytes, dict]]:
    """``{kind: (mp4 bytes, truth)}`` of one scene; the truth is computed from what was drawn."""
    rng = np.random.default_rng([seed, sc.index, 7])
    frames, appear = construction_frames(sc, n_frames, rng)
    end = list(sc.before.buildings) + list(sc.after.new_buildings)
    construction = {
        "new_buildings": len(appear),
        "appear_frame": appear,
        "appear_s": [round(k / fps, 6) for k in appear],
        "buildings_start": len(sc.before.buildings),
        "buildings_end": len(end),
        "boxes_end": [b.box() for b in end],
        "new_boxes": [b.box() for b in sc.after.new_buildings],
    }
    out = {"construction": (encode_mp4(frames, fps), construction)}
    direction = DIRECTIONS[int(rng.integers(0, len(DIRECTIONS)))]
    frames, offs = flight_frames(sc, n_frames, direction)
    after = sc.after.layout.buildings
    flight = {
        "direction": direction,
        "offsets": offs,
        "window": [int(frames[0].shape[1]), int(frames[0].shape[0])],  # width, height
        "buildings": len(after),
        "boxes": [b.box() for b in after],
    }
    out["flight"] = (encode_mp4(frames, fps), flight)
    return out


def synthesize_videos(
    out_dir,
    n: int,
    seed: int = 0,
    size: int = 224,
    langs=("zh", "en"),
    split="train=0.8,test=0.2",
    max_buildings: int = 6,
    fmt: str = "parquet",
    image_scenes: int = 0,
    fps: float = 4.0,
    seconds: float = 4.0,
    progress: bool = True,
) -> dict:
    """Clips of scenes ``0 … n−1`` and their zh/en questions into ``out_dir`` (see the module docstring).
    ``image_scenes``: how many scenes the image samples of the same run have — those scenes keep their
    split. Returns a summary (also written to ``video_summary.json``)."""
    from tqdm import tqdm

    from .write import SynthError, assign_splits, parse_langs, parse_split

    if not isinstance(n, int) or n < 1:
        raise SynthError(f"--video must be a positive number of scenes, got {n!r}")
    n_frames = int(round(fps * seconds))
    if n_frames < 8:
        raise SynthError(f"video clips need at least 8 frames (fps × seconds), got {n_frames}")
    langs = parse_langs(langs)
    splits = parse_split(split)
    out = Path(out_dir)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    image_split = assign_splits(image_scenes, splits, seed) if image_scenes else []
    own_split = assign_splits(n, splits, seed)
    writers = {name: DatasetWriter(out / f"{name}_video.{fmt}") for name, _ in splits}
    counts = {"task": Counter(), "lang": Counter(), "answers": {}}
    with ExitStack() as stack:
        for w in writers.values():
            stack.enter_context(w)
        for i in tqdm(range(n), desc="synth videos", unit="scene", file=sys.stderr, disable=not progress):
            sc = make_scene(seed, i, size, max_buildings)
            name = image_split[i] if i < len(image_split) else own_split[i]
            for kind, (mp4, truth) in scene_clips(sc, seed, fps, n_frames).items():
                rel = f"videos/{sc.id}-{kind}.mp4"
                (out / rel).write_bytes(mp4)
                for lang in langs:
                    for j, (task, qtype, q, a, gt, choices) in enumerate(_questions(kind, truth, lang)):
                        meta = {
                            "generator": "geovl.synth.video",
                            "seed": seed,
                            "scene": sc.id,
                            "kind": kind,
                            "task": task,
                            "lang": lang,
                            "video_file": rel,
                            "fps": fps,
                            "frames": n_frames,
                            "gt": gt,
                        }
                        if choices:
                            meta["choices"] = choices
                        sample = make_sample(
                            f"{sc.id}-{kind}-{lang}-{j}",
                            q,
                            a,
                            videos=[mp4],
                            qtype=qtype,
                            source=f"synth-video-seed{seed}#{sc.id}/{kind}/{lang}/{j}",
                            meta=meta,
                        )
                        writers[name].read_one()
                        if writers[name].write(sample):
                            counts["task"][task] += 1
                            counts["lang"][lang] += 1
                            counts["answers"].setdefault(task, Counter())[a] += 1
    summary = {
        "generator": "geovl.synth.video",
        "args": {"video_scenes": n, "seed": seed, "size": size, "fps": fps, "seconds": seconds, "frames": n_frames},
        "splits": {name: w.counts.as_dict() for name, w in writers.items()},
        "samples": sum(w.counts.written for w in writers.values()),
        "by_task": dict(sorted(counts["task"].items())),
        "by_lang": dict(sorted(counts["lang"].items())),
        "answers": {k: dict(sorted(v.items())) for k, v in sorted(counts["answers"].items())},
        "files": {name: f"{name}_video.{fmt}" for name, _ in splits} | {"videos": "videos"},
    }
    (out / "video_summary.json").write_text(json.dumps(summary, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return summary
