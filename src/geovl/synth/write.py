"""The ``geovl data synth`` driver: scenes -> images, GeoTIFFs, Q/A dataset files and indexes.

Layout of the output directory::

    classes.json                 class table and every documented rule (units, rounding, threshold)
    scenes.jsonl                 one line per scene: split, paths, exact ground truth, changes
    summary.json                 arguments and counts of this run
    <split>.parquet              Q/A samples (geovl dataset format), split by scene
    <split>.rejects.jsonl        records that failed validation (normally empty)
    scenes/<id>/{before,after}.png             RGB images (the bytes stored in the samples)
    scenes/<id>/{before,after}.tif             4-band uint16 reflectance x 10000 (B2, B3, B4, B8)
    scenes/<id>/{before,after}_classes.tif     uint8 class map, nodata 0

Everything is deterministic: the same arguments give byte-identical files.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from ..data.io import DatasetWriter
from ..data.schema import assistant_turn, user_turn
from ..errors import GeoVLError
from ..imagery.geotiff import Raster, write_raster
from . import qa
from .boxes import ask_boxes
from .classes import (
    AREA_KEYS,
    BAND_NAMES,
    DEFAULT_CRS,
    DEFAULT_ORIGIN,
    DEFAULT_PIXEL_SIZE,
    NODATA,
    PRESENCE_KEYS,
    REFLECTANCE_SCALE,
    SCENES_PER_ROW,
    URBAN_THRESHOLD,
    class_table,
)
from .grounded import GroundedScene, ask_grounded
from .render import MATERIALS, png_bytes
from .scene import Scene, make_scene

GENERATOR = "geovl.data.synth"  # the files' generator id (unchanged since the generator moved to geovl.synth: older outputs carry it)
DEFAULT_SPLIT = "train=0.8,test=0.2"
DEFAULT_QUESTIONS = len(qa.TASKS)  # one question of every task per scene and language


class SynthError(GeoVLError, ValueError):
    """Bad arguments or an output directory that cannot be used."""


def parse_split(spec: str | dict) -> list[tuple[str, float]]:
    """``"train=0.8,test=0.2"`` (or a dict) -> [(name, fraction)], fractions normalised to sum 1."""
    items = list(spec.items()) if isinstance(spec, dict) else []
    if not isinstance(spec, dict):
        for part in str(spec).split(","):
            if not part.strip():
                continue
            name, sep, frac = part.partition("=")
            if not sep:
                raise SynthError(f"--split: {part!r} is not NAME=FRACTION (e.g. train=0.8,test=0.2)")
            try:
                items.append((name.strip(), float(frac)))
            except ValueError:
                raise SynthError(f"--split: {frac!r} is not a number") from None
    names = [n for n, _ in items]
    if not items or any(not n or not n.replace("_", "").replace("-", "").isalnum() for n in names):
        raise SynthError(f"--split: need NAME=FRACTION pairs with simple names, got {spec!r}")
    if len(set(names)) != len(names):
        raise SynthError(f"--split: repeated split name in {spec!r}")
    fracs = [f for _, f in items]
    if any(not math.isfinite(f) or f < 0 for f in fracs) or sum(fracs) <= 0:
        raise SynthError(f"--split: fractions must be >= 0 and not all 0, got {spec!r}")
    total = sum(fracs)
    return [(n, f / total) for n, f in items]


def split_counts(n: int, splits: list[tuple[str, float]]) -> list[int]:
    """Scenes per split: largest remainders; every split with a share gets one when n allows."""
    raw = [f * n for _, f in splits]
    counts = [math.floor(r) for r in raw]
    for i in sorted(range(len(raw)), key=lambda i: (-(raw[i] - counts[i]), i))[: n - sum(counts)]:
        counts[i] += 1
    for i, (_, f) in enumerate(splits):
        if f > 0 and counts[i] == 0:
            donor = max(range(len(counts)), key=lambda j: (counts[j], -j))
            if counts[donor] > 1:
                counts[donor] -= 1
                counts[i] += 1
    return counts


def assign_splits(n: int, splits: list[tuple[str, float]], seed: int) -> list[str]:
    """Split name of each scene index (a seeded permutation, so splits mix scene kinds)."""
    perm = np.random.default_rng([seed, 0, 0, 0, 1]).permutation(n)
    names = [name for (name, _), c in zip(splits, split_counts(n, splits)) for _ in range(c)]
    out = [""] * n
    for pos, idx in enumerate(perm):
        out[int(idx)] = names[pos]
    return out


def parse_langs(langs) -> tuple[str, ...]:
    items = [x.strip() for x in (langs.split(",") if isinstance(langs, str) else langs) if x.strip()]
    bad = [x for x in items if x not in qa.LANGS]
    if not items or bad:
        raise SynthError(f"--lang: choose from {','.join(qa.LANGS)} (got {langs!r})")
    return tuple(dict.fromkeys(items))


def _check_args(scenes, seed, size, pixel_size, questions_per_scene, max_buildings) -> None:
    if not isinstance(seed, int) or seed < 0:
        raise SynthError(f"--seed must be a non-negative integer, got {seed!r}")
    if not isinstance(scenes, int) or scenes < 1:
        raise SynthError(f"--scenes must be a positive integer, got {scenes!r}")
    if not isinstance(size, int) or not 64 <= size <= 2048:
        raise SynthError(f"--size must be an integer between 64 and 2048 pixels, got {size!r}")
    if not (isinstance(pixel_size, (int, float)) and math.isfinite(pixel_size) and 0 < pixel_size <= 10_000):
        raise SynthError(f"--pixel-size must be a positive number of metres, got {pixel_size!r}")
    if not isinstance(questions_per_scene, int) or questions_per_scene < 1:
        raise SynthError(f"--questions-per-scene must be a positive integer, got {questions_per_scene!r}")
    if not isinstance(max_buildings, int) or not 0 <= max_buildings <= 20:
        raise SynthError(f"--max-buildings must be between 0 and 20, got {max_buildings!r}")


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise SynthError(f"{out}: exists and is not a directory")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise SynthError(f"{out}: directory is not empty (pass --overwrite to replace its synthetic data)")
        if (out / "scenes").is_dir():
            shutil.rmtree(out / "scenes")
    out.mkdir(parents=True, exist_ok=True)


def scene_transform(index: int, size: int, pixel_size: float, origin=DEFAULT_ORIGIN) -> tuple:
    """Affine (a, b, c, d, e, f) of scene ``index``: tiles east then south of ``origin``."""
    extent = size * pixel_size
    row, col = divmod(index, SCENES_PER_ROW)
    return (float(pixel_size), 0.0, origin[0] + col * extent, 0.0, -float(pixel_size), origin[1] - row * extent)


def _write_scene_files(out: Path, sc: Scene, crs: str, transform: tuple) -> tuple[dict, dict]:
    """Write PNGs and GeoTIFFs; returns (relative paths, PNG bytes) per date."""
    d = out / "scenes" / sc.id
    d.mkdir(parents=True, exist_ok=True)
    rel = f"scenes/{sc.id}"
    paths: dict = {"images": {}, "geotiffs": {}, "class_maps": {}}
    pngs = {}
    for date in qa.DATES:
        pngs[date] = png_bytes(sc.rgb[date])
        (d / f"{date}.png").write_bytes(pngs[date])
        write_raster(d / f"{date}.tif", Raster(sc.reflectance[date], crs, transform, None, list(BAND_NAMES)))
        classes = sc.layout(date).classes[None]
        write_raster(d / f"{date}_classes.tif", Raster(classes, crs, transform, NODATA, ["land cover class"]))
        paths["images"][date] = f"{rel}/{date}.png"
        paths["geotiffs"][date] = f"{rel}/{date}.tif"
        paths["class_maps"][date] = f"{rel}/{date}_classes.tif"
    return paths, pngs


def _sample(sc: Scene, q: qa.Question, j: int, lang: str, pngs: dict, paths: dict, common: dict) -> dict:
    grounded = q.images is not None
    meta = dict(common) | {
        "lang": lang,
        "scene": sc.id,
        "date": "+".join(q.dates),
        "dates": list(q.dates),
        "task": q.task,
        "geotiff": [paths["geotiffs"][d] for d in q.dates],
        "class_map": [paths["class_maps"][d] for d in q.dates],
        "image_files": [paths["geotiffs" if grounded else "images"][d] for d in q.dates],
        "gt": q.gt,
    }
    if q.choices:
        meta["choices"] = list(q.choices)
    if q.question is not None:
        meta["question"] = q.question
    if q.boxes is not None:
        meta["boxes"] = q.boxes
        meta["grounding"] = q.grounding
    return {
        "id": f"{sc.id}-{lang}-{j:02d}",
        "messages": [user_turn(q.text, len(q.dates)), assistant_turn(q.answer)],
        "images": list(q.images) if grounded else [pngs[d] for d in q.dates],
        "qtype": q.qtype,
        "answer": q.answer,
        "source": f"synth-seed{common['seed']}#{sc.id}/{lang}/{j}",
        "meta": meta,
    }


def _classes_doc(size: int, pixel_size: float, crs: str) -> dict:
    return {
        "generator": GENERATOR,
        "readme": {
            "en": "Synthetic Chinese-county scenes on two dates (before/after) with exact ground truth. "
            "Class ids below are the values of the *_classes.tif maps (0 = nodata, never used).",
            "zh": "合成县域场景（前后两个时相），附精确真值。下表的类别编号即 *_classes.tif 地类图中的像元值（0 为无数据，不出现）。",
            "files": {
                "scenes.jsonl": "one line per scene: split, paths, class pixel counts, buildings (count, boxes), changes",
                "<split>.parquet": "Q/A samples in the geovl dataset format (images = the scene PNG bytes), split by scene",
                "scenes/<id>/{before,after}.png": "RGB images",
                "scenes/<id>/{before,after}.tif": "4-band uint16 reflectance x 10000 (B2 blue, B3 green, B4 red, B8 NIR)",
                "scenes/<id>/{before,after}_classes.tif": "uint8 class map on the same grid",
            },
        },
        "classes": class_table(),
        "nodata": NODATA,
        "presence_classes": list(PRESENCE_KEYS),
        "area_classes": list(AREA_KEYS),
        "rural_urban": {
            "rule": "urban (城镇) when (built-up land + building pixels) / all pixels >= threshold, else rural (农村)",
            "threshold": URBAN_THRESHOLD,
        },
        "area_units": {
            k: {"m2": float(u.m2), "decimals": u.decimals, "zh": u.zh, "en": u.en} for k, u in qa.UNITS.items()
        },
        "area_rule": "exact pixel count x pixel area, converted to the unit, rounded half up to the unit's decimals",
        "tasks": dict(qa.QTYPE),
        "bands": list(BAND_NAMES),
        "reflectance_scale": REFLECTANCE_SCALE,
        "materials": [{"name": n, "rgb": list(c), "reflectance": list(r)} for n, c, r in MATERIALS],
        "size": size,
        "pixel_size_m": pixel_size,
        "crs": crs,
    }


def parse_tasks(tasks) -> tuple[str, ...]:
    """None/"all" → the eight default tasks; else a comma-separated string or a list of task names,
    where ``all`` stands for the default tasks and ``grounded`` for :data:`qa.GROUNDED_TASKS`."""
    if tasks is None or tasks == "all":
        return qa.TASKS
    items = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t.strip()]
    groups = {"all": qa.TASKS, "grounded": qa.GROUNDED_TASKS, "boxes": qa.BOX_TASKS}
    items = [x for t in items for x in groups.get(t, (t,))]
    bad = [t for t in items if t not in qa.KNOWN_TASKS]
    if bad or not items:
        raise SynthError(
            f"unknown task(s) {bad or tasks!r}; choose from all, grounded, boxes, {', '.join(qa.KNOWN_TASKS)}"
        )
    return tuple(dict.fromkeys(items))


def write_summary(out: Path, args: dict, splits, writers: dict, counts: dict, answers: dict, fmt: str) -> dict:
    """Write ``summary.json`` of a synth run (its arguments, counts per split/qtype/task/lang, answer histograms,
    the files written) and return it with the absolute ``paths`` added; shared by the scene and time-series
    drivers."""
    summary = {
        "generator": GENERATOR,
        "args": args,
        "splits": {
            name: {"scenes": counts["split_scenes"][name], **writers[name].counts.as_dict()} for name, _ in splits
        },
        "samples": sum(w.counts.written for w in writers.values()),
        "by_qtype": dict(sorted(counts["qtype"].items())),
        "by_task": dict(sorted(counts["task"].items())),
        "by_lang": dict(sorted(counts["lang"].items())),
        "answers": {k: dict(sorted(v.items())) for k, v in sorted(answers.items())},
        "files": {
            "classes": "classes.json",
            "scenes_index": "scenes.jsonl",
            "scene_dir": "scenes",
            **{name: f"{name}.{fmt}" for name, _ in splits},
        },
    }
    (out / "summary.json").write_text(json.dumps(summary, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    summary["out_dir"] = str(out.resolve())
    summary["paths"] = {k: str((out / v).resolve()) for k, v in summary["files"].items()} | {
        "summary": str((out / "summary.json").resolve())
    }
    return summary


def _synthesize_series(
    out_dir, scenes, dates, seed, size, langs, pixel_size, questions_per_scene, split, max_buildings,
    crs, origin, overwrite, progress, tasks, fmt, presence_classes,
) -> dict:  # fmt: skip
    from .series_write import check_dates, parse_series_tasks, synthesize_series

    n_dates = check_dates(dates)
    tasks = parse_series_tasks(tasks)
    if presence_classes:
        raise SynthError("--presence-classes applies to the two-date questions, not to --dates time series")
    if fmt not in ("parquet", "jsonl"):
        raise SynthError(f"format must be parquet or jsonl, got {fmt!r}")
    langs = parse_langs(langs)
    splits = parse_split(split)
    pixel_size = float(pixel_size)
    out = Path(out_dir)
    _prepare_out(out, overwrite)
    return synthesize_series(
        out,
        scenes,
        n_dates,
        seed=seed,
        size=size,
        langs=langs,
        pixel_size=pixel_size,
        questions_per_scene=questions_per_scene,
        splits=splits,
        max_buildings=max_buildings,
        crs=crs,
        origin=origin,
        progress=progress,
        tasks=tasks,
        fmt=fmt,
        base_doc=_classes_doc(size, pixel_size, crs),
    )


def synthesize(
    out_dir,
    scenes: int,
    seed: int = 0,
    size: int = 224,
    langs=("zh", "en"),
    pixel_size: float = DEFAULT_PIXEL_SIZE,
    questions_per_scene: int = DEFAULT_QUESTIONS,
    split=DEFAULT_SPLIT,
    max_buildings: int = 6,
    crs: str = DEFAULT_CRS,
    origin: tuple[float, float] = DEFAULT_ORIGIN,
    overwrite: bool = False,
    progress: bool = True,
    tasks=None,
    fmt: str = "parquet",
    presence_classes=None,
    dates: int | None = None,
) -> dict:
    """Generate ``scenes`` synthetic county scenes (two dates each) and their Q/A into ``out_dir``.

    With ``dates`` (N >= 2): ``scenes`` places on N dates each, one N-image sample per question
    (:mod:`.series_write`, tasks :data:`.series_qa.SERIES_TASKS`); without it nothing changes.

    Returns a summary: arguments, counts per split/qtype/task/lang, answer histograms of the
    categorical tasks, and the paths written (``paths``, absolute).
    """
    from tqdm import tqdm

    _check_args(scenes, seed, size, pixel_size, questions_per_scene, max_buildings)
    if dates is not None:
        return _synthesize_series(
            out_dir, scenes, dates, seed, size, langs, pixel_size, questions_per_scene, split, max_buildings,
            crs, origin, overwrite, progress, tasks, fmt, presence_classes,
        )  # fmt: skip
    tasks = parse_tasks(tasks)
    presence_keys = PRESENCE_KEYS
    if presence_classes:
        presence_keys = tuple(
            c.strip()
            for c in (presence_classes.split(",") if isinstance(presence_classes, str) else presence_classes)
            if c.strip()
        )
        bad = [c for c in presence_keys if c not in PRESENCE_KEYS]
        if bad or not presence_keys:
            raise SynthError(
                f"unknown presence class(es) {bad or presence_classes!r}; choose from {', '.join(PRESENCE_KEYS)}"
            )
    if fmt not in ("parquet", "jsonl"):
        raise SynthError(f"format must be parquet or jsonl, got {fmt!r}")
    langs = parse_langs(langs)
    splits = parse_split(split)
    pixel_size = float(pixel_size)
    out = Path(out_dir)
    _prepare_out(out, overwrite)
    split_of = assign_splits(scenes, splits, seed)
    common = {"generator": GENERATOR, "seed": seed, "size": size, "pixel_size_m": pixel_size, "crs": crs}
    counts = {"qtype": Counter(), "task": Counter(), "lang": Counter(), "split_scenes": Counter()}
    answers: dict[str, Counter] = {}
    writers = {name: DatasetWriter(out / f"{name}.{fmt}") for name, _ in splits}
    (out / "classes.json").write_text(
        json.dumps(_classes_doc(size, pixel_size, crs), ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
    )
    with ExitStack() as stack:
        for w in writers.values():
            stack.enter_context(w)  # a failure leaves *.partial files, never a half-written dataset
        with open(out / "scenes.jsonl", "w", encoding="utf-8") as index_file:
            for i in tqdm(range(scenes), desc="synth scenes", unit="scene", file=sys.stderr, disable=not progress):
                sc = make_scene(seed, i, size, max_buildings)
                transform = scene_transform(i, size, pixel_size, origin)
                paths, pngs = _write_scene_files(out, sc, crs, transform)
                name = split_of[i]
                counts["split_scenes"][name] += 1
                rec = {
                    "id": sc.id,
                    "index": i,
                    "split": name,
                    "size": size,
                    "pixel_size_m": pixel_size,
                    "crs": crs,
                    "transform": list(transform),
                    **paths,
                    **sc.truth,
                }
                index_file.write(json.dumps(rec, ensure_ascii=False, sort_keys=True) + "\n")
                w = writers[name]
                gs = GroundedScene(out, paths)  # measures / renders only if a grounded task is asked
                for lang in langs:
                    rng = np.random.default_rng([seed, i, 1, qa.LANGS.index(lang) + 1])
                    for j, (task, spec) in enumerate(
                        qa.select(rng, sc.truth, questions_per_scene, i, tasks, presence_keys)
                    ):
                        if task in qa.GROUNDED_TASKS:
                            q = ask_grounded(rng, task, spec, sc.truth, lang, gs)
                        elif task in qa.BOX_TASKS:
                            q = ask_boxes(rng, task, spec, sc.truth, lang)
                        else:
                            q = qa.ask(rng, task, spec, sc.truth, lang, pixel_size)
                        w.read_one()
                        if w.write(_sample(sc, q, j, lang, pngs, paths, common)):
                            counts["qtype"][q.qtype] += 1
                            counts["task"][q.task] += 1
                            counts["lang"][lang] += 1
                            if q.qtype in ("yes_no", "count", "choice"):
                                key = q.task + (f":{q.gt['class']}" if q.task == "presence" else "")
                                answers.setdefault(key, Counter())[q.answer] += 1

    args = {
        "scenes": scenes,
        "seed": seed,
        "size": size,
        "langs": list(langs),
        "pixel_size_m": pixel_size,
        "questions_per_scene": questions_per_scene,
        "split": dict(splits),
        "max_buildings": max_buildings,
        "crs": crs,
        "origin": list(origin),
        "tasks": list(tasks),
        "format": fmt,
        "presence_classes": list(presence_keys),
    }
    return write_summary(out, args, splits, writers, counts, answers, fmt)
