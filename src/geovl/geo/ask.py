"""Grounded answers (``geovl ask``): measure the rasters, put the measured figures into the model's
context in one fixed form, and ask the question.

The prompt — ONE user turn, identical in ``geovl ask`` and in the ``grounded_area`` /
``grounded_change`` tasks of ``geovl data synth`` (so a model is trained on exactly what it is
asked with)::

    <image>                      the earlier date (only with a before image)
    <image>                      the (later) image
    第1张图为前时相，第2张图为后时相。                                  (two images only)
    测量结果（来自地理配准影像，非模型估计）：
    <Measurement.context_text("zh"), see geovl.geo.report>
    问题：<question>

and in English::

    Image 1 is the earlier date, image 2 the later date.              (two images only)
    Measurements (from the georeferenced rasters, not model estimates):
    <Measurement.context_text("en")>
    Question: <question>

Lines are joined with ``\\n``; the language is the question's (any CJK character → ``zh``) unless
given. Images are rendered by :func:`geovl.geo.tiles.image_for_model` (true colour for 4+ band
rasters, the model's preprocessing config when training wrote one) and sent as PNG.

Python API (for the web app / HTTP API)::

    from geovl.inference import open_engine
    from geovl.geo.ask import grounded_answer, stream_grounded_answer
    engine = open_engine(model="out/final")
    ga = grounded_answer(engine, "after.tif", "耕地面积约为多少公顷？", before_path="before.tif",
                         classes="after_classes.tif", before_classes="before_classes.tif")
    ga.answer, ga.measurement.current.get("cropland").ha, ga.context, ga.prompt, ga.to_json()

    s = stream_grounded_answer(engine, "after.tif", "How much cropland is there?", classes="c.tif")
    s.measurement, s.context, s.prompt            # available before generation starts
    for delta in s: ...                           # text deltas
    s.result()                                    # → GroundedAnswer once the stream is consumed

Every input problem raises :class:`~geovl.geo.errors.MeasureError` (a ``ValueError``) whose
message names the file and what is wrong.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterator

from ..inference.capabilities import input_spec
from .errors import MeasureError

HEADER = {
    "zh": "测量结果（来自地理配准影像，非模型估计）：",
    "en": "Measurements (from the georeferenced rasters, not model estimates):",
}
QUESTION = {"zh": "问题：", "en": "Question: "}
TWO_IMAGES = {"zh": "第1张图为前时相，第2张图为后时相。", "en": "Image 1 is the earlier date, image 2 the later date."}
LANGS = ("zh", "en")
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3000-\u303f\uff00-\uffef]")


def detect_lang(text: str) -> str:
    """``"zh"`` when the text has any CJK character (or full-width punctuation), else ``"en"``."""
    return "zh" if _CJK.search(text or "") else "en"


def prompt_text(context: str, question: str, lang: str, n_images: int) -> str:
    """The fixed user text (see the module docstring) around a measurement context."""
    if lang not in LANGS:
        raise MeasureError(f"language must be zh or en, got {lang!r}")
    lines = [TWO_IMAGES[lang]] if n_images == 2 else []
    lines += [HEADER[lang], context, QUESTION[lang] + question.strip()]
    return "\n".join(lines)


@dataclass
class GroundedPrompt:
    """Everything sent to the model for one grounded question, before generation."""

    question: str
    lang: str
    measurement: object  # geovl.geo.measure.Measurement
    context: str
    prompt: str
    images: list[bytes] = field(repr=False, default_factory=list)
    image_paths: list[str] = field(default_factory=list)
    renders: list[dict] = field(default_factory=list)  # per image: how it was rendered (band order, size)

    def band_lines(self) -> list[str]:
        """Human-readable: the band order each raster was rendered with (none for plain PNG/JPEG)."""
        return [f"{p}: {r['band_order']}" for p, r in zip(self.image_paths, self.renders) if "band_order" in r]

    @property
    def messages(self) -> list[dict]:
        from ..data.schema import user_turn

        return [user_turn(self.prompt, len(self.images))]

    def request(self):
        from ..inference.engine import ChatRequest

        return ChatRequest(self.messages, list(self.images))


@dataclass
class GroundedAnswer:
    answer: str
    measurement: object  # geovl.geo.measure.Measurement
    context: str
    prompt: str
    question: str = ""
    lang: str = "zh"
    image_paths: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        """``{answer, measurement, context, prompt, question, lang, images}`` (measurement: ``Measurement.to_json()``)."""
        return {
            "answer": self.answer,
            "measurement": self.measurement.to_json(),
            "context": self.context,
            "prompt": self.prompt,
            "question": self.question,
            "lang": self.lang,
            "images": list(self.image_paths),
        }


def measure_inputs(
    image_path,
    before_path=None,
    classes=None,
    before_classes=None,
    class_table=None,
    aoi=None,
    aoi_crs=None,
    pixel_size=None,
    rules=None,
    bands=None,
):
    """The :class:`~geovl.geo.measure.Measurement` a grounded question is answered with."""
    from .indices import load_rules
    from .measure import measure_raster

    spec = bands if bands is None or isinstance(bands, str) else ",".join(bands)
    if rules is None and spec is not None and not spec.replace(",", "").replace(" ", "").isdigit():
        rules = load_rules(None, spec)  # band names: index classification too; numbers (3,2,1) choose rendering only
    return measure_raster(
        image_path,
        classes=classes,
        before=before_path,
        before_classes=before_classes,
        class_table=class_table,
        aoi=aoi,
        aoi_crs=aoi_crs,
        pixel_size=pixel_size,
        rules=rules,
    )


def build_grounded(
    image_path,
    question: str,
    before_path=None,
    classes=None,
    before_classes=None,
    class_table=None,
    aoi=None,
    aoi_crs=None,
    pixel_size=None,
    rules=None,
    bands=None,
    lang: str | None = None,
    preprocess=None,
    measurement=None,
    rendered=None,
) -> GroundedPrompt:
    """Measure (unless ``measurement`` is given), render the image(s) and build the fixed prompt.

    Images shown: ``before_path`` (when given) then ``image_path``. ``preprocess``: the model's
    :class:`~geovl.models.preprocess.PreprocessConfig` (``engine.preprocess``) for raster rendering;
    ``bands``: band order such as ``"blue,green,red,nir"`` (rendering and derived classes);
    ``rendered``: the ``(bytes, info)`` of :func:`render_images` when already rendered."""
    if not isinstance(question, str) or not question.strip():
        raise MeasureError("the question is empty")
    lang = lang or detect_lang(question)
    if lang not in LANGS:
        raise MeasureError(f"--lang must be zh or en, got {lang!r}")
    m = (
        measurement
        if measurement is not None
        else measure_inputs(
            image_path, before_path, classes, before_classes, class_table, aoi, aoi_crs, pixel_size, rules, bands
        )
    )
    paths = [str(p) for p in (before_path, image_path) if p is not None]
    rendered = rendered if rendered is not None else render_images(image_path, before_path, preprocess, bands)
    images = [b for b, _ in rendered]
    context = m.context_text(lang)
    return GroundedPrompt(
        question.strip(),
        lang,
        m,
        context,
        prompt_text(context, question, lang, len(images)),
        images,
        paths,
        [info for _, info in rendered],
    )


def render_images(image_path, before_path=None, preprocess=None, bands=None) -> list[tuple[bytes, dict]]:
    """``(encoded image, info)`` of the image(s) shown (before, then after), rendered as the model
    sees them (:func:`geovl.geo.tiles.image_for_model`); raises :class:`MeasureError`."""
    from .tiles import image_for_model

    return [image_for_model(str(p), preprocess, bands) for p in (before_path, image_path) if p is not None]


def _prepare(engine, image_path, question, before_path, classes, lang, measure_kw) -> GroundedPrompt:
    return build_grounded(
        image_path,
        question,
        before_path=before_path,
        classes=classes,
        lang=lang,
        preprocess=input_spec(engine).preprocess,
        **measure_kw,
    )


def grounded_answer(
    engine,
    image_path,
    question: str,
    before_path=None,
    classes=None,
    lang: str | None = None,
    params=None,
    **measure_kw,
) -> GroundedAnswer:
    """Answer ``question`` about ``image_path`` with the measured figures in the model's context.

    ``engine``: any :class:`geovl.inference.Engine` (local or remote). ``measure_kw``: ``before_classes``,
    ``class_table``, ``aoi``, ``aoi_crs``, ``pixel_size``, ``rules``, ``bands``, ``measurement``."""
    from ..inference.engine import GenerationParams

    gp = _prepare(engine, image_path, question, before_path, classes, lang, measure_kw)
    answer = engine.generate([gp.request()], params or GenerationParams())[0]
    return _answer(gp, answer)


def _answer(gp: GroundedPrompt, text: str) -> GroundedAnswer:
    return GroundedAnswer(text.strip(), gp.measurement, gp.context, gp.prompt, gp.question, gp.lang, gp.image_paths)


class GroundedStream:
    """Iterate for the answer's text deltas; ``measurement``/``context``/``prompt`` are set before
    generation starts; :meth:`result` gives the :class:`GroundedAnswer` once iteration is done."""

    def __init__(self, engine, gp: GroundedPrompt, params):
        self.grounded = gp
        self.measurement, self.context, self.prompt = gp.measurement, gp.context, gp.prompt
        self.lang, self.question = gp.lang, gp.question
        self._engine, self._params = engine, params
        self._pieces: list[str] = []
        self._done = False
        self._gen = None

    def _run(self) -> Iterator[str]:
        for delta in self._engine.stream(self.grounded.request(), self._params):
            self._pieces.append(delta)
            yield delta
        self._done = True

    def __iter__(self) -> Iterator[str]:
        if self._gen is None:
            self._gen = self._run()
        return self._gen

    @property
    def text(self) -> str:
        """The answer so far."""
        return "".join(self._pieces)

    def result(self) -> GroundedAnswer:
        """The whole answer (consumes what is left of the stream)."""
        for _ in iter(self):
            pass
        return _answer(self.grounded, self.text)


def stream_grounded_answer(
    engine,
    image_path,
    question: str,
    before_path=None,
    classes=None,
    lang: str | None = None,
    params=None,
    **measure_kw,
) -> GroundedStream:
    """The streaming variant of :func:`grounded_answer` (same arguments). Measurement and rendering
    happen here (errors raise at once); generation starts when the stream is iterated."""
    from ..inference.engine import GenerationParams

    gp = _prepare(engine, image_path, question, before_path, classes, lang, measure_kw)
    return GroundedStream(engine, gp, params or GenerationParams())
