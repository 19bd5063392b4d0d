"""The grounded tasks of ``geovl data synth``: the user turn carries the figures measured on the
scene's GeoTIFFs in the fixed form of ``geovl ask`` (:func:`geovl.geo.ask.prompt_text`), so a model
is trained on exactly what it is asked with. Not part of the default ``--tasks all``; select them
with ``--tasks grounded`` (both), ``grounded_area``, ``grounded_change`` or e.g. ``all,grounded``.

- ``grounded_area`` (qtype ``area``, one image, "before" or "after"): context of
  ``measure_raster(<date>.tif, classes=<date>_classes.tif, class_table="synth")``; the question of
  the ``area`` task ("耕地面积约为多少公顷？" / "What is the area of cropland in hectares?").
- ``grounded_change`` (qtype ``area``, two images: before, then after): context of the two-date
  measurement; the gain or loss of a class that changed, or the total changed area
  ("第二张图相比第一张图，新增耕地面积是多少公顷？", "How much forest was lost between …").

Answers quote the measured number exactly as the context prints it (:func:`geovl.geo.units.fmt`:
km² 4 decimals, 公顷 2, 亩 1, rounded half up, thousands separated by commas) with its unit:
"约12.34公顷" / "about 12.34 ha". ``meta["gt"]``: ``m2`` (the measured area in m²), ``unit``,
``value`` (unrounded, in the unit), ``answer_value`` (as written), ``decimals``, ``pixels`` (from
the scene's exact truth), ``kind`` (area / gain / loss / changed), ``class``. ``meta["question"]``
is the bare question. The images are the GeoTIFFs rendered by
:func:`geovl.geo.tiles.image_for_model` (what ``geovl ask`` sends) — not the PNGs of the other
tasks — and ``meta["image_files"]`` names those GeoTIFFs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import qa
from .classes import BY_KEY

MEASURE = "geovl.geo.measure.measure_raster (class_table=synth)"


class GroundedScene:
    """Measurements and model images of one written scene, computed once and reused."""

    def __init__(self, out_dir, paths: dict):
        self.out = Path(out_dir)
        self.paths = paths
        self._m: dict = {}
        self._img: dict = {}

    def file(self, kind: str, date: str) -> Path:
        return self.out / self.paths[kind][date]

    def measurement(self, dates: tuple[str, ...]):
        from ..geo.measure import measure_raster

        if dates not in self._m:
            after = dates[-1]
            kw = {}
            if len(dates) == 2:
                kw = {"before": self.file("geotiffs", dates[0]), "before_classes": self.file("class_maps", dates[0])}
            self._m[dates] = measure_raster(
                self.file("geotiffs", after), classes=self.file("class_maps", after), class_table="synth", **kw
            )
        return self._m[dates]

    def image(self, date: str) -> bytes:
        from ..geo.tiles import image_for_model

        if date not in self._img:
            self._img[date] = image_for_model(self.file("geotiffs", date))[0]
        return self._img[date]


def transition_pixels(truth: dict) -> dict[str, dict[str, int]]:
    """{"gain": {key: px}, "loss": {key: px}} from the scene's exact transitions."""
    out: dict[str, dict[str, int]] = {"gain": {}, "loss": {}}
    for pair, px in truth["change"]["transitions"].items():
        a, b = pair.split("->")
        out["loss"][a] = out["loss"].get(a, 0) + int(px)
        out["gain"][b] = out["gain"].get(b, 0) + int(px)
    return out


def candidates(truth: dict) -> dict[str, list[tuple]]:
    px = transition_pixels(truth)
    change = [(kind, k) for kind in ("gain", "loss") for k in BY_KEY if px[kind].get(k, 0) > 0]
    return {
        "grounded_area": [(d, k) for d in qa.DATES for k in qa.AREA_KEYS if truth[d]["class_pixels"][k] > 0],
        "grounded_change": change + [("changed",)],
    }


def _answer(m2: float, unit: str, lang: str) -> tuple[str, dict]:
    from ..geo.units import DECIMALS, all_units, fmt

    value = all_units(m2)[unit]
    num = fmt(value, unit)
    u = qa.UNITS[unit]
    text = f"约{num}{u.zh}" if lang == "zh" else f"about {num} {u.en}"
    return text, {
        "m2": float(m2),
        "unit": unit,
        "value": value,
        "answer_value": num,
        "decimals": DECIMALS[unit],
        "rounding": "half_up",
        "measure": MEASURE,
    }


def ask_grounded(
    rng: np.random.Generator, task: str, spec: tuple, truth: dict, lang: str, scene: GroundedScene
) -> qa.Question:
    """One grounded question (see the module docstring)."""
    from ..geo.ask import prompt_text

    zh = lang == "zh"
    unit = qa._pick(rng, qa.UNITS_BY_LANG[lang])
    u = qa.UNITS[unit]
    if task == "grounded_area":
        date, key = spec
        dates = (date,)
        m = scene.measurement(dates)
        text = (
            f"{qa._name(key, lang)}面积约为多少{u.zh}？"
            if zh
            else f"What is the area of {qa._name(key, lang)} in {u.en_long}?"
        )
        m2 = m.current.get(key).m2
        gt = {"kind": "area", "class": key, "date": date, "pixels": truth[date]["class_pixels"][key]}
    elif task == "grounded_change":
        dates = qa.DATES
        m = scene.measurement(dates)
        if spec[0] == "changed":
            text = (
                f"两期之间发生变化的总面积是多少{u.zh}？"
                if zh
                else f"What is the total changed area between the two images, in {u.en_long}?"
            )
            m2 = m.change.changed_m2
            gt = {"kind": "changed", "class": None, "pixels": truth["change"]["changed_pixels"]}
        else:
            kind, key = spec
            name = qa._name(key, lang)
            if kind == "gain":
                text = (
                    f"第二张图相比第一张图，新增{name}面积是多少{u.zh}？"
                    if zh
                    else f"How much new {name} is there in the second image compared with the first, in {u.en_long}?"
                )
            else:
                text = (
                    f"第二张图相比第一张图，{name}减少了多少{u.zh}？"
                    if zh
                    else f"How much {name} was lost between the first and the second image, in {u.en_long}?"
                )
            m2 = m.gain_loss(key)[f"{kind}_m2"]
            gt = {"kind": kind, "class": key, "pixels": transition_pixels(truth)[kind][key]}
    else:
        raise ValueError(f"unknown grounded task {task!r}")
    answer, num = _answer(m2, unit, lang)
    prompt = prompt_text(m.context_text(lang), text, lang, len(dates))
    return qa.Question(task, dates, prompt, answer, gt | num, question=text, images=[scene.image(d) for d in dates])
