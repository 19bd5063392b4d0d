"""The ``geovl data synth --dates N`` driver: time series of places -> images, GeoTIFFs, Q/A dataset files.

Layout of the output directory (as :mod:`.write`, one file set per date instead of before/after)::

    classes.json                     class table and every documented rule
    scenes.jsonl                     one line per place: split, dates, paths, exact truth per date and series
    summary.json                     arguments and counts of this run
    <split>.parquet|jsonl            Q/A samples, split by place: N images each, ``meta["dates"]`` ISO
    scenes/<id>/<YYYY-MM-DD>.png             RGB image of that date (the bytes stored in the samples)
    scenes/<id>/<YYYY-MM-DD>.tif             4-band uint16 reflectance x 10000 (B2, B3, B4, B8)
    scenes/<id>/<YYYY-MM-DD>_classes.tif     uint8 class map, nodata 0

Deterministic: the same arguments give byte-identical files. Questions: :mod:`.series_qa`.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from ..data.io import DatasetWriter
from ..data.schema import assistant_turn, user_turn
from ..imagery.geotiff import Raster, write_raster
from . import qa, series_qa
from .classes import BAND_NAMES, NODATA
from .render import png_bytes
from .series import MAX_DATES, MIN_DATES, Series, make_series


def parse_series_tasks(tasks) -> tuple[str, ...]:
    """None/"all" → every time-series task; else a comma-separated string or list of them."""
    from .write import SynthError

    if tasks is None or tasks == "all":
        return series_qa.SERIES_TASKS
    items = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t.strip()]
    items = [x for t in items for x in (series_qa.SERIES_TASKS if t == "all" else (t,))]
    bad = [t for t in items if t not in series_qa.SERIES_TASKS]
    if bad or not items:
        raise SynthError(
            f"--dates: unknown time-series task(s) {bad or tasks!r}; choose from all, {', '.join(series_qa.SERIES_TASKS)}"
        )
    return tuple(dict.fromkeys(items))


def check_dates(dates) -> int:
    from .write import SynthError

    if isinstance(dates, bool) or not isinstance(dates, int) or not MIN_DATES <= dates <= MAX_DATES:
        raise SynthError(f"--dates must be an integer between {MIN_DATES} and {MAX_DATES}, got {dates!r}")
    return dates


def _write_files(out: Path, s: Series, crs: str, transform: tuple) -> tuple[dict, list[bytes]]:
    d = out / "scenes" / s.id
    d.mkdir(parents=True, exist_ok=True)
    rel = f"scenes/{s.id}"
    paths: dict = {"images": {}, "geotiffs": {}, "class_maps": {}}
    pngs = []
    for date, rgb, refl, layout in zip(s.dates, s.rgb, s.reflectance, s.layouts):
        png = png_bytes(rgb)
        pngs.append(png)
        (d / f"{date}.png").write_bytes(png)
        write_raster(d / f"{date}.tif", Raster(refl, crs, transform, None, list(BAND_NAMES)))
        write_raster(
            d / f"{date}_classes.tif", Raster(layout.classes[None], crs, transform, NODATA, ["land cover class"])
        )
        paths["images"][date] = f"{rel}/{date}.png"
        paths["geotiffs"][date] = f"{rel}/{date}.tif"
        paths["class_maps"][date] = f"{rel}/{date}_classes.tif"
    return paths, pngs


def _sample(s: Series, q, j: int, lang: str, pngs: list[bytes], paths: dict, common: dict) -> dict:
    meta = dict(common) | {
        "lang": lang,
        "scene": s.id,
        "task": q.task,
        "dates": list(s.dates),
        "geotiff": [paths["geotiffs"][d] for d in s.dates],
        "class_map": [paths["class_maps"][d] for d in s.dates],
        "image_files": [paths["images"][d] for d in s.dates],
        "gt": q.gt,
    }
    return {
        "id": f"{s.id}-{lang}-{j:02d}",
        "messages": [user_turn(q.text, len(s.dates)), assistant_turn(q.answer)],
        "images": list(pngs),
        "qtype": q.qtype,
        "answer": q.answer,
        "source": f"synth-seed{common['seed']}-dates{len(s.dates)}#{s.id}/{lang}/{j}",
        "meta": meta,
    }


def classes_doc(base: dict, n_dates: int) -> dict:
    """The two-date ``classes.json`` (:func:`.write._classes_doc`) with the time-series readme and rules."""
    doc = dict(base)
    doc["readme"] = {
        "en": f"Synthetic Chinese-county places on {n_dates} dates (a time series) with exact ground truth. "
        "Class ids below are the values of the *_classes.tif maps (0 = nodata, never used).",
        "zh": f"合成县域地点的 {n_dates} 期时间序列影像，附精确真值。下表的类别编号即 *_classes.tif 地类图中的像元值（0 为无数据，不出现）。",
        "files": {
            "scenes.jsonl": "one line per place: split, dates, paths, per-date class pixels, series truth",
            "<split>.parquet": "Q/A samples (all images of the place in date order; meta.dates ISO), split by place",
            "scenes/<id>/<date>.png": "RGB image of that date",
            "scenes/<id>/<date>.tif": "4-band uint16 reflectance x 10000 (B2 blue, B3 green, B4 red, B8 NIR)",
            "scenes/<id>/<date>_classes.tif": "uint8 class map on the same grid",
        },
    }
    doc["tasks"] = dict(series_qa.SERIES_QTYPE)
    doc["series_rules"] = {
        "building_year": "year of the first date with building pixels on cropland of the first date",
        "cropland_loss": "pixels cropland at the first date and not at the last x pixel area (no land becomes cropland)",
        "forest_interval": "the one interval (date k-1 to date k) in which forest pixels decreased, as years",
        "builtup_growth": "yes when built-up + building pixels increase between every two consecutive dates",
    }
    return doc


def synthesize_series(
    out: Path,
    scenes: int,
    n_dates: int,
    *,
    seed: int,
    size: int,
    langs: tuple[str, ...],
    pixel_size: float,
    questions_per_scene: int,
    splits: list[tuple[str, float]],
    max_buildings: int,
    crs: str,
    origin: tuple[float, float],
    progress: bool,
    tasks,
    fmt: str,
    base_doc: dict,
) -> dict:
    """Called by :func:`.write.synthesize` with checked arguments and a prepared ``out``."""
    from tqdm import tqdm

    from .write import GENERATOR, assign_splits, scene_transform, write_summary

    split_of = assign_splits(scenes, splits, seed)
    common = {"generator": GENERATOR, "seed": seed, "size": size, "pixel_size_m": pixel_size, "crs": crs}
    counts = {"qtype": Counter(), "task": Counter(), "lang": Counter(), "split_scenes": Counter()}
    answers: dict[str, Counter] = {}
    writers = {name: DatasetWriter(out / f"{name}.{fmt}") for name, _ in splits}
    (out / "classes.json").write_text(
        json.dumps(classes_doc(base_doc, n_dates), ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
    )
    with ExitStack() as stack:
        for w in writers.values():
            stack.enter_context(w)
        with open(out / "scenes.jsonl", "w", encoding="utf-8") as index_file:
            for i in tqdm(range(scenes), desc="synth series", unit="place", file=sys.stderr, disable=not progress):
                s = make_series(seed, i, size, max_buildings, n_dates)
                transform = scene_transform(i, size, pixel_size, origin)
                paths, pngs = _write_files(out, s, crs, transform)
                name = split_of[i]
                counts["split_scenes"][name] += 1
                rec = {
                    "id": s.id,
                    "index": i,
                    "split": name,
                    "size": size,
                    "pixel_size_m": pixel_size,
                    "crs": crs,
                    "transform": list(transform),
                    **paths,
                    **s.truth,
                }
                index_file.write(json.dumps(rec, ensure_ascii=False, sort_keys=True) + "\n")
                w = writers[name]
                for lang in langs:
                    rng = np.random.default_rng([seed, i, 2, qa.LANGS.index(lang) + 1])
                    for j, task in enumerate(series_qa.select(s.truth, questions_per_scene, i, tasks)):
                        q = series_qa.ask_series(rng, task, s.truth, lang, pixel_size)
                        w.read_one()
                        if w.write(_sample(s, q, j, lang, pngs, paths, common)):
                            counts["qtype"][q.qtype] += 1
                            counts["task"][q.task] += 1
                            counts["lang"][lang] += 1
                            if q.qtype in ("yes_no", "date"):
                                answers.setdefault(q.task, Counter())[q.answer] += 1

    args = {
        "scenes": scenes,
        "dates": n_dates,
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
    }
    return write_summary(out, args, splits, writers, counts, answers, fmt)
