"""Questions and answers in Chinese and English about a time series (:mod:`.series`), from its exact truth.

Every question shows all N images of the place, in date order, and the prompt names each image's date:
"影像1（2019-06-01）、影像2（2020-06-01）……" / "Image 1 (2019-06-01), Image 2 (2020-06-01), …".

Tasks (``task`` -> ``qtype``), each asked once per place and language when its truth exists:

- ``series_building_year`` (date): "这里的耕地是哪一年开始被建筑占用的？" / "In which year do buildings first
  appear on the cropland here?" -> the year of the first date whose image shows buildings on what was
  cropland at the first date ("2020年" / "2020"); asked when that happens
- ``series_cropland_loss`` (area): cropland lost between the first and the last date, exact pixel count
  x pixel area rounded half up like every synthetic area (:func:`.qa.format_area`); asked when the
  first date has cropland
- ``series_forest_interval`` (date): the interval in which the forest shrank, as the years of its two
  dates ("2019年至2021年" / "2019–2021"); asked when it shrank in exactly one interval
- ``series_builtup_growth`` (yes_no): did the built-up land (built-up land + buildings) grow between
  every two consecutive dates?
"""

from __future__ import annotations

import numpy as np

from .qa import UNITS, UNITS_BY_LANG, YES_NO, Question, _pick, format_area

SERIES_TASKS = ("series_building_year", "series_cropland_loss", "series_forest_interval", "series_builtup_growth")
SERIES_QTYPE = {
    "series_building_year": "date",
    "series_cropland_loss": "area",
    "series_forest_interval": "date",
    "series_builtup_growth": "yes_no",
}


class SeriesQuestion(Question):
    @property
    def qtype(self) -> str:
        return SERIES_QTYPE[self.task]


def date_preamble(dates: list[str], lang: str) -> str:
    """The prompt's first sentence: each image's number and date, in order."""
    if lang == "zh":
        items = "、".join(f"影像{i}（{d}）" for i, d in enumerate(dates, 1))
        return f"{items}是同一地点按时间顺序拍摄的影像。"
    items = [f"Image {i} ({d})" for i, d in enumerate(dates, 1)]
    joined = ", ".join(items[:-1]) + f" and {items[-1]}"
    return f"{joined} show the same place in time order. "


def year_answer(year: int, lang: str) -> str:
    return f"{year}年" if lang == "zh" else str(year)


def interval_answer(y0: int, y1: int, lang: str) -> str:
    return f"{y0}年至{y1}年" if lang == "zh" else f"{y0}–{y1}"


def available(truth: dict) -> list[str]:
    """The tasks this place has a truth for, in :data:`SERIES_TASKS` order."""
    out = []
    if truth["occupation"]["first_index"] is not None:
        out.append("series_building_year")
    if truth["cropland"]["pixels"][0] > 0:
        out.append("series_cropland_loss")
    if len(truth["forest"]["loss_intervals"]) == 1:
        out.append("series_forest_interval")
    out.append("series_builtup_growth")
    return out


def select(truth: dict, k: int, offset: int, tasks=SERIES_TASKS) -> list[str]:
    """Up to ``k`` of the place's available tasks among ``tasks``, rotating the start by ``offset``."""
    order = [SERIES_TASKS[(offset + i) % len(SERIES_TASKS)] for i in range(len(SERIES_TASKS))]
    have = set(available(truth))
    return [t for t in order if t in tasks and t in have][:k]


def ask_series(rng: np.random.Generator, task: str, truth: dict, lang: str, pixel_size_m: float) -> SeriesQuestion:
    """One question of ``task`` about a place (``truth`` from :func:`.series.make_series`) in ``lang``."""
    zh = lang == "zh"
    dates = truth["dates"]
    years = [int(d[:4]) for d in dates]
    head = date_preamble(dates, lang)
    if task == "series_building_year":
        occ = truth["occupation"]
        q = (
            _pick(rng, ["这里的耕地是哪一年开始被建筑占用的？", "这块耕地上的建筑最早出现在哪一年？"])
            if zh
            else _pick(
                rng,
                [
                    "In which year do buildings first appear on the cropland here?",
                    "In which year did building first appear on this cropland?",
                ],
            )
        )
        q += "请回答年份。" if zh else " Answer with the year."
        gt = {
            "first_index": occ["first_index"],
            "first_date": occ["first_date"],
            "year": occ["first_year"],
            "occupied_pixels": occ["pixels"],
            "rule": "year of the first date with building pixels on first-date cropland",
        }
        return SeriesQuestion(task, tuple(dates), head + q, year_answer(occ["first_year"], lang), gt)
    if task == "series_cropland_loss":
        crop = truth["cropland"]
        unit = _pick(rng, UNITS_BY_LANG[lang])
        u = UNITS[unit]
        q = (
            f"从第一期（{dates[0]}）到最后一期（{dates[-1]}），耕地减少了多少{u.zh}？"
            if zh
            else f"How much cropland was lost between the first date ({dates[0]}) and the last ({dates[-1]}), "
            f"in {u.en_long}?"
        )
        answer, gt = format_area(crop["lost_pixels"], pixel_size_m, unit, lang)
        gt |= {
            "class": "cropland",
            "first_pixels": crop["pixels"][0],
            "last_pixels": crop["pixels"][-1],
            "lost_pixels": crop["lost_pixels"],
            "gained_pixels": crop["gained_pixels"],
        }
        return SeriesQuestion(task, tuple(dates), head + q, answer, gt)
    if task == "series_forest_interval":
        (k,) = truth["forest"]["loss_intervals"]
        q = (
            _pick(rng, ["森林是在哪个时间段减少的？", "林地在哪两期影像之间减少了？"]) + "请回答起止年份。"
            if zh
            else _pick(rng, ["In which interval was forest lost?", "Between which dates did the forest shrink?"])
            + " Answer with the start and end years."
        )
        gt = {
            "interval": k,
            "from_date": dates[k - 1],
            "to_date": dates[k],
            "forest_pixels": truth["forest"]["pixels"],
            "lost_pixels": truth["forest"]["pixels"][k - 1] - truth["forest"]["pixels"][k],
        }
        return SeriesQuestion(task, tuple(dates), head + q, interval_answer(years[k - 1], years[k], lang), gt)
    if task == "series_builtup_growth":
        yes, no = YES_NO[lang]
        q = (
            "建设用地（含建筑）是否在每相邻两期影像之间都有增加？"
            if zh
            else "Did the built-up area (including buildings) grow between every two consecutive dates?"
        )
        b = truth["builtup"]
        gt = {"builtup_pixels": b["pixels"], "grew_every_interval": b["grew_every_interval"]}
        return SeriesQuestion(task, tuple(dates), head + q, yes if b["grew_every_interval"] else no, gt)
    raise ValueError(f"unknown time-series task {task!r}")
