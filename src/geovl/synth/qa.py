"""Questions and answers in Chinese and English from a scene's exact ground truth.

Tasks (``task`` -> ``qtype``), single-image ones asked on the "before" or the "after" image:

- ``presence`` (yes_no): "图中是否有水体？" / "Is there water in the image?" -> 是/否, yes/no
- ``count`` (count): "图中有多少栋建筑？" / "How many buildings are in the image?" -> digits
- ``area`` (area): "耕地面积约为多少公顷？" -> "12.34公顷" / "12.34 ha"
- ``compare`` (yes_no): "耕地面积是否大于林地面积？" / "Is there more cropland than forest?"
- ``rural_urban`` (choice): 农村/城镇, rural/urban — urban when the built-up share
  (built-up land + buildings) is at least :data:`~.classes.URBAN_THRESHOLD`
- two images (before, then after) in one user turn: ``change_count`` (count, new buildings),
  ``change_increase`` (yes_no, has cropland grown), ``change_area`` (area, new cropland)
- boxes (:data:`BOX_TASKS`, qtype ``grounding``, not in the default ``all``; see :mod:`.boxes`):
  ``box_buildings``, ``box_new_buildings``, ``box_water`` — exact boxes in ``meta["boxes"]``
- grounded (:data:`GROUNDED_TASKS`, not in the default ``all``; questions in :mod:`.grounded`):
  ``grounded_area`` / ``grounded_change`` (area) — the measured figures in the prompt, as
  ``geovl ask`` gives them, and the measured number quoted in the answer

Areas are computed exactly (pixel count x pixel area, with fractions) and then rounded
**half up** to a fixed number of decimals per unit (:data:`UNITS`): km² (平方公里) 3 decimals,
hectares (公顷) 2, mu (亩, Chinese questions only) 1. 1 km² = 100 公顷 = 1500 亩 = 1e6 m².
The answer always states its unit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from ..units import AREA_UNITS
from ..units import round_half_up as _round_half_up
from .classes import AREA_KEYS, BY_KEY, PRESENCE_KEYS, URBAN_THRESHOLD

TASKS = ("presence", "count", "area", "compare", "rural_urban", "change_count", "change_increase", "change_area")
QTYPE = {
    "presence": "yes_no",
    "count": "count",
    "area": "area",
    "compare": "yes_no",
    "rural_urban": "choice",
    "change_count": "count",
    "change_increase": "yes_no",
    "change_area": "area",
}
GROUNDED_TASKS = ("grounded_area", "grounded_change")
ALL_TASKS = TASKS + GROUNDED_TASKS
QTYPE |= {"grounded_area": "area", "grounded_change": "area"}
BOX_TASKS = ("box_buildings", "box_new_buildings", "box_water")  # qtype grounding, see .boxes
KNOWN_TASKS = ALL_TASKS + BOX_TASKS
QTYPE |= {t: "grounding" for t in BOX_TASKS}
DATES = ("before", "after")
LANGS = ("zh", "en")


@dataclass(frozen=True)
class Unit:
    key: str
    m2: Fraction  # square metres per unit
    decimals: int
    zh: str  # answer suffix and question word in Chinese
    en: str | None  # answer suffix in English (None: not used in English)
    en_long: str | None


def _unit(key: str, decimals: int, english: bool = True) -> Unit:
    u = AREA_UNITS[key]  # geovl.units: the one table of area units
    return Unit(key, u.m2, decimals, u.zh, u.en if english else None, u.en_long if english else None)


UNITS = {"km2": _unit("km2", 3), "ha": _unit("ha", 2), "mu": _unit("mu", 1, english=False)}
UNITS_BY_LANG = {"zh": ("km2", "ha", "mu"), "en": ("km2", "ha")}
YES_NO = {"zh": ("是", "否"), "en": ("yes", "no")}
RURAL_URBAN = {"zh": ("农村", "城镇"), "en": ("rural", "urban")}


def area_value(pixels: int, pixel_size_m: float, unit: str) -> Fraction:
    """Exact area of ``pixels`` square pixels of side ``pixel_size_m`` metres in ``unit``."""
    return Fraction(int(pixels)) * Fraction(pixel_size_m) ** 2 / UNITS[unit].m2


def round_half_up(value: Fraction, decimals: int) -> str:
    """Non-negative ``value`` rounded half up to ``decimals`` places (:func:`geovl.units.round_half_up`),
    as fixed-point text."""
    if value < 0:
        raise ValueError("areas are non-negative")
    return str(_round_half_up(value, decimals))


def format_area(pixels: int, pixel_size_m: float, unit: str, lang: str) -> tuple[str, dict]:
    """(answer text, ground-truth dict) for an area of ``pixels`` pixels."""
    u = UNITS[unit]
    exact = area_value(pixels, pixel_size_m, unit)
    text = round_half_up(exact, u.decimals)
    answer = f"{text}{u.zh}" if lang == "zh" else f"{text} {u.en}"
    gt = {
        "pixels": int(pixels),
        "pixel_area_m2": float(Fraction(pixel_size_m) ** 2),
        "area_m2": float(Fraction(int(pixels)) * Fraction(pixel_size_m) ** 2),
        "unit": unit,
        "value": float(exact),
        "decimals": u.decimals,
        "rounding": "half_up",
        "answer_value": text,
    }
    return answer, gt


@dataclass
class Question:
    task: str
    dates: tuple[str, ...]
    text: str
    answer: str
    gt: dict
    choices: list[str] = field(default_factory=list)
    question: str | None = None  # grounded tasks: the bare question (``text`` is the whole prompt)
    images: list[bytes] | None = None  # grounded tasks: the rendered GeoTIFFs (else the scene PNGs)
    boxes: list[dict] | None = None  # box tasks: meta["boxes"] (geovl.data.boxes)
    grounding: str | None = None  # box tasks: "all" or "referring"

    @property
    def qtype(self) -> str:
        return QTYPE[self.task]


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(0, len(options)))]


def _name(key: str, lang: str) -> str:
    c = BY_KEY[key]
    return c.zh if lang == "zh" else c.en


def candidates(truth: dict, presence_keys=PRESENCE_KEYS) -> dict[str, list[tuple]]:
    """All distinct question specs of a scene, per task. ``truth[date]["class_pixels"]`` etc."""
    from .boxes import candidates as box_candidates
    from .grounded import candidates as grounded_candidates

    out: dict[str, list[tuple]] = {t: [] for t in TASKS}
    for d in DATES:
        px = truth[d]["class_pixels"]
        out["presence"] += [(d, k) for k in presence_keys]
        out["count"].append((d,))
        out["area"] += [(d, k) for k in AREA_KEYS if px[k] > 0]
        out["compare"] += [
            (d, a, b) for a in AREA_KEYS for b in AREA_KEYS if a != b and px[a] != px[b] and max(px[a], px[b]) > 0
        ]
        out["rural_urban"].append((d,))
    out["change_count"].append(())
    out["change_increase"].append(())
    out["change_area"].append(())
    return out | grounded_candidates(truth) | box_candidates(truth)


def select(
    rng: np.random.Generator, truth: dict, k: int, offset: int, tasks=TASKS, presence_keys=PRESENCE_KEYS
) -> list[tuple[str, tuple]]:
    """``k`` distinct (task, spec) pairs: tasks round-robin starting at ``offset``, specs at random.

    With ``k = len(TASKS)`` every task is asked once; a larger ``k`` asks the single-image tasks
    again (other classes / the other date). Fewer than ``k`` come back only when the scene has no
    more distinct questions (more than 20 per scene and language).
    """
    pool = candidates(truth, presence_keys)
    base = ALL_TASKS if any(t in GROUNDED_TASKS for t in tasks) else TASKS  # same rotation as before without them
    if any(t in BOX_TASKS for t in tasks):
        base = base + BOX_TASKS
    order = [base[(offset + i) % len(base)] for i in range(len(base))]
    order = [t for t in order if t in tasks]
    chosen: list[tuple[str, tuple]] = []
    i = 0
    while len(chosen) < k and any(pool[t] for t in order):
        task = order[i % len(order)]
        i += 1
        if pool[task]:
            chosen.append((task, pool[task].pop(int(rng.integers(0, len(pool[task]))))))
    return chosen


def ask(rng: np.random.Generator, task: str, spec: tuple, truth: dict, lang: str, pixel_size_m: float) -> Question:
    """One question of ``task`` about ``spec`` (see :func:`candidates`) in ``lang``."""
    yes, no = YES_NO[lang]
    zh = lang == "zh"
    if task in ("change_count", "change_increase", "change_area"):
        return _ask_change(rng, task, truth, lang, pixel_size_m)
    date = spec[0]
    t = truth[date]
    px = t["class_pixels"]
    if task == "presence":
        key = spec[1]
        c = BY_KEY[key]
        text = (
            _pick(rng, ["图中是否有{}？", "这张影像中有{}吗？"]).format(c.zh)
            if zh
            else _pick(rng, ["Is there {} in the image?", "Does the image contain {}?"]).format(c.en_phrase)
        )
        present = px[key] > 0
        return Question(
            task, (date,), text, yes if present else no, {"class": key, "pixels": px[key], "present": present}
        )
    if task == "count":
        text = (
            _pick(rng, ["图中有多少栋建筑？", "影像中能数出几栋建筑？"])
            if zh
            else _pick(rng, ["How many buildings are in the image?", "How many buildings can you count in this image?"])
        )
        n = t["buildings"]["count"]
        return Question(task, (date,), text, str(n), {"buildings": n, "boxes": t["buildings"]["boxes"]})
    if task == "area":
        key = spec[1]
        unit = _pick(rng, UNITS_BY_LANG[lang])
        u = UNITS[unit]
        text = (
            f"{_name(key, lang)}面积约为多少{u.zh}？"
            if zh
            else f"What is the area of {_name(key, lang)} in {u.en_long}?"
        )
        answer, gt = format_area(px[key], pixel_size_m, unit, lang)
        return Question(task, (date,), text, answer, {"class": key} | gt)
    if task == "compare":
        a, b = spec[1], spec[2]
        text = (
            f"{_name(a, lang)}面积是否大于{_name(b, lang)}面积？"
            if zh
            else f"Is there more {_name(a, lang)} than {_name(b, lang)}?"
        )
        more = px[a] > px[b]
        return Question(
            task, (date,), text, yes if more else no, {"a": a, "b": b, "pixels_a": px[a], "pixels_b": px[b]}
        )
    if task == "rural_urban":
        rural, urban = RURAL_URBAN[lang]
        text = (
            "这是农村地区还是城镇地区？请回答农村或城镇。"
            if zh
            else "Is this a rural or an urban area? Answer rural or urban."
        )
        share = t["builtup_share"]
        gt = {
            "builtup_pixels": t["builtup_pixels"],
            "share": share,
            "threshold": URBAN_THRESHOLD,
            "label": t["rural_urban"],
        }
        return Question(task, (date,), text, urban if t["rural_urban"] == "urban" else rural, gt, [rural, urban])
    raise ValueError(f"unknown task {task!r}")


def _ask_change(rng: np.random.Generator, task: str, truth: dict, lang: str, pixel_size_m: float) -> Question:
    zh = lang == "zh"
    ch = truth["change"]
    b, a = truth["before"], truth["after"]
    dates = ("before", "after")
    if task == "change_count":
        text = (
            "第二张图相比第一张图新增了多少栋建筑？"
            if zh
            else "How many new buildings appear in the second image compared with the first?"
        )
        gt = {
            "new_buildings": ch["new_buildings"],
            "before_buildings": b["buildings"]["count"],
            "after_buildings": a["buildings"]["count"],
            "new_building_pixels": ch["new_building_pixels"],
        }
        return Question(task, dates, text, str(ch["new_buildings"]), gt)
    crop_b, crop_a = b["class_pixels"]["cropland"], a["class_pixels"]["cropland"]
    if task == "change_increase":
        yes, no = YES_NO[lang]
        text = (
            "第二张图相比第一张图，耕地面积是否增加？"
            if zh
            else "Has the cropland area increased in the second image compared with the first?"
        )
        gt = {"before_pixels": crop_b, "after_pixels": crop_a, "net_pixels": crop_a - crop_b}
        return Question(task, dates, text, yes if crop_a > crop_b else no, gt)
    unit = _pick(rng, UNITS_BY_LANG[lang])
    u = UNITS[unit]
    text = (
        f"第二张图相比第一张图，新增耕地面积是多少{u.zh}？"
        if zh
        else f"How much new cropland is there in the second image compared with the first, in {u.en_long}?"
    )
    answer, gt = format_area(ch["cropland_gain_pixels"], pixel_size_m, unit, lang)
    gt |= {
        "class": "cropland",
        "before_pixels": crop_b,
        "after_pixels": crop_a,
        "gain_pixels": ch["cropland_gain_pixels"],
    }
    return Question(task, dates, text, answer, gt)
