"""``geovl spectral synth``: write synthetic alteration scenes, their ground truth and zh/en Q/A.

Layout of ``DIR``::

    scenes/<id>/cube.img + cube.hdr   ENVI BSQ int16 reflectance × 10000 (wavelengths, fwhm, bbl, CRS)
    scenes/<id>/cube.tif              the same cube as GeoTIFF (band tags wavelength/fwhm, bbl)
    scenes/<id>/minerals.tif          uint8 ground-truth mineral map (0 background, 1..7 = classes.json)
    scenes/<id>/abundance.tif         float32 abundances (7 alteration minerals, then background)
    scenes/<id>/probability.tif       float32 mineralisation probability map
    scenes/<id>/rendering.png         the false-colour rendering stored in the Q/A samples
    scenes.jsonl                      one line per scene: split, paths, answers, pixel counts
    classes.json                      mineral table (zh/en), weights and formulas, sensor, citation
    rendering.json                    the rendering spec used for the PNGs (bands resolved)
    <split>.parquet                   Q/A in the geovl dataset format, split by scene

Each scene gets three questions per language: ``yes_no`` 是否存在蚀变？/ Is there alteration?,
``choice`` main alteration mineral (answer = mineral name; options in ``meta.choices``), and
``number`` mineralisation probability (0–1, two decimals). ``meta.cube`` is the cube path relative
to ``DIR`` so a spectral projector can load all bands; ``meta.rendering`` names the rendering and ``meta.rendering_spec`` holds its spec.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np

from ..fileio import iter_jsonl, write_json, write_text
from . import SpectralError
from .cube import array_cube
from .envi import write_envi
from .library import ALTERATION, BACKGROUND, CITATION, mineral_table
from .readers import write_cube_geotiff, write_geotiff
from .render import png_bytes, preset, render, resolve
from .sensors import get_sensor
from .synth import (
    ALTERED_THRESHOLD,
    COPPER_WEIGHT,
    K_PIXEL,
    K_SCENE,
    MINERAL_KEYS,
    P_ALTERED,
    REFLECTANCE_SCALE,
    endmembers,
    make_scene,
)

GENERATOR = "geovl spectral synth v1"
LANGS = ("zh", "en")
YES_NO = {"zh": ("是", "否"), "en": ("yes", "no")}
NONE = {"zh": "无", "en": "none"}
NAMES = {m.key: {"zh": m.zh, "en": m.en} for m in ALTERATION}
QUESTIONS = {
    "alteration": {
        "zh": "图中是否存在蚀变？请回答是或否。",
        "en": "Is there alteration in this image? Answer yes or no.",
    },
    "main_mineral": {"zh": "主要蚀变矿物是什么？选项：{}。", "en": "What is the main alteration mineral? Options: {}."},
    "probability": {
        "zh": "该区域的成矿概率是多少？请给出0到1之间的数值，保留两位小数。",
        "en": "What is the mineralisation probability of this area? Give a number from 0 to 1 with two decimals.",
    },
}
QTYPE = {"alteration": "yes_no", "main_mineral": "choice", "probability": "number"}
DEFAULT_RENDERING = {"name": "alteration", "stretch": {"mode": "fixed", "min": 0.05, "max": 0.75}}
FORMATS = ("envi", "geotiff")
EPSG = "EPSG:32650"  # UTM 50N


def choices(lang: str) -> list[str]:
    return [NAMES[k][lang] for k in MINERAL_KEYS] + [NONE[lang]]


def mineral_answer(key: str, lang: str) -> str:
    return NONE[lang] if key == "none" else NAMES[key][lang]


def questions(truth: dict, lang: str) -> list[tuple[str, str, str, str]]:
    """(task, qtype, question, answer) for one scene in one language."""
    yes, no = YES_NO[lang]
    sep = "、" if lang == "zh" else ", "
    return [
        ("alteration", "yes_no", QUESTIONS["alteration"][lang], yes if truth["alteration"] else no),
        (
            "main_mineral",
            "choice",
            QUESTIONS["main_mineral"][lang].format(sep.join(choices(lang))),
            mineral_answer(truth["main_mineral"], lang),
        ),
        ("probability", "number", QUESTIONS["probability"][lang], f"{truth['probability']:.2f}"),
    ]


def parse_split(text: str) -> list[tuple[str, float]]:
    try:
        parts = [(k.strip(), float(v)) for k, v in (p.split("=") for p in text.split(",") if p.strip())]
    except ValueError:
        raise SpectralError(f"--split: expected NAME=FRACTION,... got {text!r}") from None
    total = sum(f for _, f in parts)
    if not parts or total <= 0 or any(f < 0 for _, f in parts):
        raise SpectralError(f"--split: fractions must be >= 0 and sum > 0, got {text!r}")
    return [(k, f / total) for k, f in parts]


def assign_splits(n: int, split: str, seed: int) -> list[str]:
    parts = parse_split(split)
    order = np.random.default_rng([seed, 2**31 - 1]).permutation(n)
    names = [None] * n
    bounds = np.round(np.cumsum([f for _, f in parts]) * n).astype(int)
    start = 0
    for (name, _), end in zip(parts, bounds):
        for i in order[start:end]:
            names[i] = name
        start = end
    return names


def _rendering_spec(rendering) -> dict:
    if isinstance(rendering, dict) and "kind" in rendering:
        return rendering
    r = DEFAULT_RENDERING if rendering in (None, "alteration") else {"name": rendering, "stretch": None}
    return preset(r["name"], r.get("stretch"))


def synthesize(
    out_dir,
    scenes: int,
    sensor: str = "gf5b",
    size: int = 64,
    seed: int = 0,
    split: str = "train=0.8,test=0.2",
    rendering=None,
    formats=FORMATS,
    langs=LANGS,
    noise: float = 0.004,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    from tqdm import tqdm

    from geovl.data.io import DatasetWriter
    from geovl.data.schema import SampleError, make_sample

    out = Path(out_dir)
    if scenes < 1 or size < 8:
        raise SpectralError("--scenes must be >= 1 and --size >= 8")
    formats = tuple(formats.split(",")) if isinstance(formats, str) else tuple(formats)
    langs = tuple(langs.split(",")) if isinstance(langs, str) else tuple(langs)
    if not formats or set(formats) - set(FORMATS):
        raise SpectralError(f"--formats: choose from {', '.join(FORMATS)}")
    if not langs or set(langs) - set(LANGS):
        raise SpectralError(f"--lang: choose from {', '.join(LANGS)}")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise SpectralError(f"{out}: directory is not empty (use --overwrite)")
        shutil.rmtree(out / "scenes", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    sens = get_sensor(sensor)
    E = endmembers(sens)
    spec = _rendering_spec(rendering)
    splits = assign_splits(scenes, split, seed)
    meta_common = {
        "generator": GENERATOR,
        "seed": seed,
        "sensor": sens.name,
        "bands": sens.bands,
        "crs": EPSG,
        "pixel_size_m": sens.pixel_size_m,
        "rendering": spec.get("name", spec["kind"]),
        "rendering_spec": spec,
    }
    writers = {name: DatasetWriter(out / f"{name}.parquet") for name in dict.fromkeys(splits)}
    for w in writers.values():
        w.__enter__()
    index_lines, stats = [], Counter()
    ok = False
    try:
        for i in tqdm(range(scenes), desc="scenes", unit="scene", disable=not progress):
            sc = make_scene(seed, i, size, sens, E, noise)
            sid = f"sp{seed}-{i:05d}"
            rel = f"scenes/{sid}"
            d = out / rel
            d.mkdir(parents=True, exist_ok=True)
            x0, y0 = 500000.0 + 5000.0 * (i % 40), 4500000.0 - 5000.0 * (i // 40)
            transform = (sens.pixel_size_m, 0.0, x0, 0.0, -sens.pixel_size_m, y0)
            geo = dict(crs=EPSG, transform=transform)
            bandmeta = dict(wavelengths=sens.centres, fwhm=sens.fwhm, good_bands=sens.good, scale=REFLECTANCE_SCALE)
            paths = {}
            if "envi" in formats:
                write_envi(d / "cube.img", sc.cube, **bandmeta, **geo)
                paths["cube"] = f"{rel}/cube.hdr"
            if "geotiff" in formats:
                write_cube_geotiff(d / "cube.tif", sc.cube, **bandmeta, **geo)
                paths["cube_geotiff"] = f"{rel}/cube.tif"
            paths.setdefault("cube", paths.get("cube_geotiff"))
            write_geotiff(d / "minerals.tif", sc.mineral_map, nodata=255, band_names=["mineral class"], **geo)
            write_geotiff(
                d / "abundance.tif", sc.abundance, band_names=MINERAL_KEYS + [m.key for m in BACKGROUND], **geo
            )
            write_geotiff(d / "probability.tif", sc.probability_map, band_names=["mineralisation probability"], **geo)
            cube = array_cube(sc.cube, sens.centres, fwhm=sens.fwhm, good_bands=sens.good, scale=REFLECTANCE_SCALE)
            png = png_bytes(render(cube, spec))
            (d / "rendering.png").write_bytes(png)
            paths |= {
                "mineral_map": f"{rel}/minerals.tif",
                "abundance": f"{rel}/abundance.tif",
                "probability_map": f"{rel}/probability.tif",
                "image": f"{rel}/rendering.png",
            }
            truth = {"alteration": sc.alteration, "main_mineral": sc.main_mineral, "probability": sc.probability}
            index_lines.append(
                json.dumps(
                    {"id": sid, "split": splits[i], **paths, **truth, "mineral_pixels": sc.mineral_pixels},
                    ensure_ascii=False,
                )
            )
            stats[f"main:{sc.main_mineral}"] += 1
            for lang in langs:
                for task, qtype, q, a in questions(truth, lang):
                    w = writers[splits[i]]
                    w.read_one()
                    meta = meta_common | {"lang": lang, "scene": sid, "task": task, "gt": truth, **paths}
                    if qtype == "choice":
                        meta["choices"] = choices(lang)
                    try:
                        sample = make_sample(
                            f"{sid}-{lang}-{task}",
                            q,
                            a,
                            [png],
                            qtype,
                            f"spectral-synth-seed{seed}#{sid}/{lang}/{task}",
                            meta,
                        )
                    except SampleError as e:
                        w.reject(f"{sid}/{lang}/{task}", e.reason, e.detail)
                        continue
                    w.write(sample)
        ok = True
    finally:
        for w in writers.values():
            w.close(ok=ok)
    cube0 = array_cube(sc.cube, sens.centres, fwhm=sens.fwhm, good_bands=sens.good, scale=REFLECTANCE_SCALE)
    resolved = resolve(cube0, spec)
    _write_json(out / "rendering.json", resolved)
    _write_json(out / "classes.json", _classes_doc(sens, size))
    write_text(out / "scenes.jsonl", "\n".join(index_lines) + "\n")
    return {
        "out_dir": str(out),
        "scenes": scenes,
        "sensor": sens.name,
        "bands": sens.bands,
        "size": size,
        "seed": seed,
        "splits": {k: w.counts.as_dict() for k, w in writers.items()},
        "samples": sum(w.counts.written for w in writers.values()),
        "main_mineral": {k[5:]: v for k, v in sorted(stats.items())},
        "rendering": resolved,
    }


def _write_json(path: Path, obj) -> None:
    write_json(path, obj, indent=1)


def _classes_doc(sens, size: int) -> dict:
    table = mineral_table(ALTERATION)
    for i, m in enumerate(table, 1):
        m["value"] = i
        m["copper_weight"] = COPPER_WEIGHT[m["key"]]
    return {
        "generator": GENERATOR,
        "minerals": table,
        "background": mineral_table(BACKGROUND),
        "mineral_map": {"0": "background", "255": "nodata (never used)"} | {str(m["value"]): m["key"] for m in table},
        "none_answer": NONE,
        "rules": {
            "altered_threshold": ALTERED_THRESHOLD,
            "mineral_map": "class of the alteration mineral with the largest abundance where it is >= altered_threshold, else 0",
            "alteration": "yes when any pixel's total alteration abundance >= altered_threshold",
            "main_mineral": "alteration mineral with the largest abundance summed over the scene; none without alteration",
            "pixel_probability": f"1 - exp(-{K_PIXEL} * sum_m copper_weight_m * abundance_m)",
            "scene_probability": f"1 - exp(-{K_SCENE} * mean over pixels of sum_m copper_weight_m * abundance_m), "
            "rounded half up to 2 decimals",
            "p_altered_scene": P_ALTERED,
        },
        "sensor": sens.describe(),
        "size": size,
        "crs": EPSG,
        "reflectance_scale": REFLECTANCE_SCALE,
        "spectra": CITATION,
    }


def load_scenes(synth_dir, split: str = "test") -> list[dict]:
    """The scenes of one split (``all``: every scene) from a synth folder's ``scenes.jsonl``."""
    d = Path(synth_dir)
    index = d / "scenes.jsonl"
    if not index.is_file():
        raise SpectralError(f"{d}: no scenes.jsonl (not a `geovl spectral synth` folder) / 不是合成场景目录")
    scenes = [s for _, s in iter_jsonl(index, objects=True, error_class=SpectralError)]
    scenes = [s for s in scenes if split in ("all", s["split"])]
    if not scenes:
        raise SpectralError(f"{index}: no scenes in split {split!r} / 该划分没有场景")
    return scenes
