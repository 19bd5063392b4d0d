"""``geovl spectral compare``: the spectral VLM vs the spectral angle mapper on held-out synthetic scenes.

Inputs: a ``geovl spectral synth`` folder (ground truth in ``scenes.jsonl``) and the predictions file
of ``geovl eval`` on its ``<split>.parquet`` (records ``{id, qtype, question, reference, prediction,
lang, meta{scene, task, ...}}``).

**VLM answers** are matched to scenes by ``meta.scene`` + ``meta.task``; each language is a separate
answer (columns ``VLM`` = all languages, ``VLM <lang>`` per language). Read with the scoring rules'
normalisers (:mod:`geovl.evaluate.normalize`): alteration with :func:`parse_yes_no`; the main mineral
with :func:`normalize_choice` against the offered options, then mapped to a mineral key through the
zh/en mineral names (an English name answering a Chinese question still counts); the probability with
:func:`geovl.spectral.vlm_map.parse_probability` (a number in [0, 1]). An answer that cannot be read
is ``unparsed`` and wrong (for the probability: outside ±0.1 and left out of the MAE). Expected answers
are every split scene × task × language seen in the file; the ones without a record are reported as
``missing`` (and not in the denominators). Records of scenes outside the split are counted, not used.

**SAM answers** per scene, as :func:`geovl.spectral.sam.evaluate_sam` computes them: SAM class map of
the cube (library ``minerals+background``, ``max_angle``), main mineral = the most frequent alteration
class (``none`` below ``min_pixels`` pixels), alteration = main mineral ≠ none, and the probability
from the synth scene formula with one-hot abundances: ``1 − exp(−K_SCENE · mean_x w(class(x)))`` over
the valid pixels (``w`` = copper weight of the pixel's alteration mineral, 0 for background and
unclassified pixels), rounded to 2 decimals like the ground truth.

Table rows: alteration accuracy, main-mineral accuracy, probability MAE, share of probabilities
within ±0.1 of the truth; the ``n`` columns give the answers (VLM) and scenes (SAM) behind them.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np

from . import SpectralError

TASKS = ("alteration", "main_mineral", "probability")
METRICS = (  # (key, task, label)
    ("alteration_accuracy", "alteration", "alteration accuracy / 蚀变判断准确率"),
    ("main_mineral_accuracy", "main_mineral", "main-mineral accuracy / 主要矿物准确率"),
    ("probability_mae", "probability", "probability MAE / 成矿概率平均绝对误差"),
    ("probability_within_0.1", "probability", "probability within ±0.1 / 误差≤0.1占比"),
)
WITHIN = 0.1
EPS = 1e-9


# -- ground truth and SAM ------------------------------------------------------------------------


def sam_probability(cls: np.ndarray, names: list[str]) -> float | None:
    """Scene probability from a SAM class map (values 1..K = ``names``, 0 unclassified, −1 no data) with
    one-hot abundances; None when no pixel is valid."""
    from .sam import NODATA
    from .synth import COPPER_WEIGHT, K_SCENE, round2

    valid = cls != NODATA
    if not valid.any():
        return None
    w = np.zeros(len(names) + 1)
    for i, n in enumerate(names):
        w[i + 1] = COPPER_WEIGHT.get(n, 0.0)
    score = w[np.clip(cls[valid], 0, len(names)).astype(np.int64)]
    return round2(1.0 - math.exp(-K_SCENE * float(score.mean())))


def sam_scene(cube, lib, max_angle: float, min_pixels: int) -> dict:
    """SAM's answers for one scene cube: alteration, main mineral, probability."""
    from .sam import classify_block, main_mineral, prepare

    L, bidx = prepare(cube, lib)
    cls, _ = classify_block(cube.read_float(bidx), L, max_angle)
    main = main_mineral(cls, lib.names, min_pixels)
    return {"alteration": main != "none", "main_mineral": main, "probability": sam_probability(cls, lib.names)}


def sam_answers(synth_dir, scenes: list[dict], library: str, max_angle: float, min_pixels: int) -> dict[str, dict]:
    from .library import named_library
    from .readers import open_cube

    lib = named_library(library)
    out = {}
    for s in scenes:
        with open_cube(Path(synth_dir) / s["cube"]) as cube:
            out[s["id"]] = sam_scene(cube, lib, max_angle, min_pixels)
    return out


# -- VLM answers ---------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _mineral_lookup() -> dict[str, str]:
    """Normalised zh/en mineral name (and none answer) → mineral key."""
    from geovl.evaluate.normalize import normalize_choice

    from .synth_write import LANGS, NAMES, NONE

    table = {}
    for lang in LANGS:
        for key, names in NAMES.items():
            table[normalize_choice(names[lang])] = key
        table[normalize_choice(NONE[lang])] = "none"
    return table


def mineral_key(answer: str, lang: str | None, choices=None) -> str | None:
    """The mineral key (``kaolinite``, …, ``none``) an answer names, or None."""
    from geovl.evaluate.normalize import normalize_choice

    from .synth_write import LANGS
    from .synth_write import choices as offered

    lookup = _mineral_lookup()
    langs = [lang] if lang in LANGS else []
    langs += [lg for lg in LANGS if lg not in langs]
    for opts in ([choices] if choices else []) + [offered(lg) for lg in langs]:
        key = lookup.get(normalize_choice(answer, opts))
        if key is not None:
            return key
    return None


def read_answer(task: str, record: dict):
    """A prediction record's answer as bool (alteration), mineral key or float; None = unparsed."""
    from geovl.evaluate.normalize import parse_yes_no
    from geovl.evaluate.score import record_choices, record_lang

    from .vlm_map import parse_probability

    text = record["prediction"]
    if task == "alteration":
        return parse_yes_no(text)
    if task == "main_mineral":
        return mineral_key(text, record_lang(record), record_choices(record))
    return parse_probability(text)


def vlm_answers(predictions, scene_ids: list[str]) -> tuple[dict, dict]:
    """({(scene, task, lang): answer}, counts) from a predictions file; see the module docstring."""
    from geovl.evaluate.score import PredictionsFileError, read_predictions, record_lang

    try:
        records = read_predictions(predictions)
    except PredictionsFileError as e:
        raise SpectralError(str(e)) from None
    wanted = set(scene_ids)
    answers: dict = {}
    counts = {"records": len(records), "not_synth": 0, "outside_split": 0, "duplicates": 0}
    for rec in records:
        scene, task = rec["meta"].get("scene"), rec["meta"].get("task")
        if scene is None or task not in TASKS:
            counts["not_synth"] += 1
            continue
        if scene not in wanted:
            counts["outside_split"] += 1
            continue
        key = (scene, task, record_lang(rec) or "?")
        if key in answers:
            counts["duplicates"] += 1
            continue
        answers[key] = read_answer(task, rec)
    if not answers:
        raise SpectralError(
            f"{predictions}: no prediction matches a scene of this split (meta.scene + meta.task of "
            f"`geovl eval` on the synth folder's parquet) / 预测文件与该划分的场景不匹配"
        )
    return answers, counts


# -- metrics -------------------------------------------------------------------------------------


def task_metrics(task: str, pairs: list[tuple]) -> dict:
    """Metrics of (prediction, truth) pairs of one task; a None prediction is unparsed."""
    n = len(pairs)
    parsed = [(p, t) for p, t in pairs if p is not None]
    out: dict = {"n": n, "unparsed": n - len(parsed)}
    if task == "probability":
        errs = [abs(p - t) for p, t in parsed]
        out["probability_mae"] = sum(errs) / len(errs) if errs else None
        out["probability_within_0.1"] = sum(e <= WITHIN + EPS for e in errs) / n if n else None
    else:
        out[f"{task}_accuracy"] = sum(p == t for p, t in parsed) / n if n else None
    return out


def metrics(pairs_by_task: dict[str, list[tuple]]) -> dict:
    return {task: task_metrics(task, pairs_by_task.get(task, [])) for task in TASKS}


def _truth(scene: dict, task: str):
    return {
        "alteration": bool(scene["alteration"]),
        "main_mineral": scene["main_mineral"],
        "probability": float(scene["probability"]),
    }[task]


def vlm_pairs(answers: dict, scenes: list[dict], lang: str | None = None) -> dict[str, list[tuple]]:
    by_id = {s["id"]: s for s in scenes}
    pairs: dict[str, list[tuple]] = {t: [] for t in TASKS}
    for (scene, task, lg), pred in answers.items():
        if lang is None or lg == lang:
            pairs[task].append((pred, _truth(by_id[scene], task)))
    return pairs


def sam_pairs(sam: dict[str, dict], scenes: list[dict]) -> dict[str, list[tuple]]:
    return {t: [(sam[s["id"]][t], _truth(s, t)) for s in scenes] for t in TASKS}


def missing_answers(answers: dict, scenes: list[dict], langs: list[str]) -> list[dict]:
    return [
        {"scene": s["id"], "task": t, "lang": lg}
        for s in scenes
        for lg in langs
        for t in TASKS
        if (s["id"], t, lg) not in answers
    ]


# -- the comparison ------------------------------------------------------------------------------


def compare(
    synth_dir,
    predictions,
    split: str = "test",
    library: str | None = None,
    max_angle: float | None = None,
    min_pixels: int = 10,
) -> dict:
    """VLM vs SAM vs ground truth on the scenes of ``split`` (see the module docstring)."""
    from .sam import DEFAULT_LIBRARY, DEFAULT_MAX_ANGLE

    library = library or DEFAULT_LIBRARY
    max_angle = DEFAULT_MAX_ANGLE if max_angle is None else max_angle
    from .synth_write import load_scenes

    scenes = load_scenes(synth_dir, split)
    answers, counts = vlm_answers(predictions, [s["id"] for s in scenes])
    langs = sorted({lg for _, _, lg in answers})
    sam = sam_answers(synth_dir, scenes, library, max_angle, min_pixels)
    missing = missing_answers(answers, scenes, langs)
    result = {
        "synth_dir": str(synth_dir),
        "predictions": str(predictions),
        "split": split,
        "scenes": len(scenes),
        "langs": langs,
        "sam_options": {"library": library, "max_angle_rad": max_angle, "min_pixels": min_pixels},
        "vlm": metrics(vlm_pairs(answers, scenes)),
        "vlm_by_lang": {lg: metrics(vlm_pairs(answers, scenes, lg)) for lg in langs},
        "sam": metrics(sam_pairs(sam, scenes)),
        "counts": counts | {"answers": len(answers), "missing": len(missing)},
        "missing": missing,
        "rows": [_scene_row(s, sam[s["id"]], answers, langs) for s in scenes],
    }
    result["table"] = table_rows(result)
    return result


def _scene_row(scene: dict, sam: dict, answers: dict, langs: list[str]) -> dict:
    vlm = {lg: {t: answers.get((scene["id"], t, lg), "missing") for t in TASKS} for lg in langs}
    return {"scene": scene["id"], "truth": {t: _truth(scene, t) for t in TASKS}, "sam": sam, "vlm": vlm}


def table_rows(result: dict) -> list[dict]:
    """One row per metric: label, vlm, vlm per language, sam, n VLM answers, n SAM scenes."""
    rows = []
    for key, task, label in METRICS:
        rows.append(
            {
                "metric": key,
                "label": label,
                "vlm": result["vlm"][task][key],
                "vlm_by_lang": {lg: m[task][key] for lg, m in result["vlm_by_lang"].items()},
                "sam": result["sam"][task][key],
                "n_vlm": result["vlm"][task]["n"],
                "n_sam": result["sam"][task]["n"],
                "unparsed_vlm": result["vlm"][task]["unparsed"],
            }
        )
    return rows


def _cell(metric: str, v) -> str:
    if v is None:
        return "—"
    return f"{v:.3f}" if metric == "probability_mae" else f"{100 * v:.1f} %"


def _header(result: dict) -> list[str]:
    return (
        ["metric / 指标", "VLM"]
        + [f"VLM {lg}" for lg in result["langs"]]
        + ["SAM", "n VLM (answers/回答)", "n SAM (scenes/场景)"]
    )


def _cells(result: dict) -> list[list[str]]:
    out = []
    for r in result["table"]:
        m = r["metric"]
        out.append(
            [r["label"], _cell(m, r["vlm"])]
            + [_cell(m, r["vlm_by_lang"][lg]) for lg in result["langs"]]
            + [_cell(m, r["sam"]), str(r["n_vlm"]), str(r["n_sam"])]
        )
    return out


def _footer(result: dict) -> list[str]:
    c = result["counts"]
    unparsed = ", ".join(f"{t} {result['vlm'][t]['unparsed']}" for t in TASKS)
    lines = [
        f"{result['scenes']} scenes of split {result['split']!r} · {c['answers']} VLM answers "
        f"({', '.join(result['langs'])}) · unparsed: {unparsed}"
    ]
    if c["missing"]:
        shown = ", ".join(f"{m['scene']}/{m['task']}/{m['lang']}" for m in result["missing"][:5])
        more = f" … (+{c['missing'] - 5})" if c["missing"] > 5 else ""
        lines.append(f"missing VLM predictions / 缺少预测: {c['missing']} ({shown}{more})")
    if c["outside_split"] or c["not_synth"] or c["duplicates"]:
        lines.append(
            f"ignored records / 未使用的记录: {c['outside_split']} outside the split, "
            f"{c['not_synth']} without meta.scene/task, {c['duplicates']} duplicates"
        )
    return lines


def format_table(result: dict) -> str:
    """Plain-text table (column widths by display length; CJK counted as 2)."""
    import unicodedata

    def width(s: str) -> int:
        return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in s)

    rows = [_header(result)] + _cells(result)
    widths = [max(width(r[i]) for r in rows) for i in range(len(rows[0]))]
    fmt = lambda r: "  ".join(c + " " * (w - width(c)) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    sep = "-" * (sum(widths) + 2 * (len(widths) - 1))
    return "\n".join([fmt(rows[0]), sep] + [fmt(r) for r in rows[1:]] + [sep] + _footer(result))


def markdown_table(result: dict) -> str:
    head = _header(result)
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in _cells(result)]
    return "\n".join(lines + [""] + [f"{x}  " for x in _footer(result)]) + "\n"


def write_text(path, text: str) -> None:
    from ..fileio import write_text as _write_text

    _write_text(path, text)
