"""The web app (Gradio 6): county land-use Q&A over remote-sensing images, Chinese by default.

Layout: a chat column (chatbot, a message box that takes text + several images, quick-question
buttons, retry/clear) and a side column (the "测量与地图 / Measurements & maps" panel, generation
settings, cards saying what the system does and its limits). A language switch relabels everything.

The conversation lives in a ``gr.State`` as geovl-schema messages + image bytes (``Conversation``):
every turn's images stay in place, so a follow-up question is answered with the earlier images in
the prompt. Answers stream from ``engine.stream`` (any engine: local model or an OpenAI-compatible
server). The measurement panel is filled by an optional ``panel_hook(PanelContext) -> PanelResult``
called after every answer.

An optional ``extension`` (``ChatApp(engine, extension=ext)``; :class:`geovl.ui.geo_panel.GeoPanel`
is the one geovl ships) adds controls to the panel and may take over a turn:

- ``ext.build(app, lang)`` — called inside the panel group: create components;
- ``ext.inputs`` — components whose values are passed to ``ext.route`` (appended to the inputs of
  the send / quick-question / retry events);
- ``ext.wire(app, parts)`` — attach the extension's own events; ``parts`` names the page's components
  (``msg``, ``chatbot``, ``conv``, ``panel_content``, ``panel_map``, ``lang_switch``) and ``run``
  (the keyword arguments that serialise engine use);
- ``ext.route(TurnContext) -> Route | None`` — called before generation: ``Route.deltas`` replaces
  ``engine.stream(conversation)`` as the answer's text deltas (``None`` keeps the plain path) and
  ``Route.panel`` is shown before generation starts;
- ``ext.panel_hook`` — used as the panel hook when none is given.

Per-conversation data of an extension lives in ``Conversation.extras`` (cleared with the chat).

Videos: a video attached in the message box (MP4, WebM, MOV, MKV, AVI, …: told from images by its bytes)
is checked and sampled like the API's (:mod:`geovl.serve.videos`: the model folder's video settings under
the app's limits), shown in the chat as a player (browser-playable files as uploaded, others as an MP4 of
the sampled frames) and sent as a ``{"type": "video"}`` part; its bytes stay in the conversation.

Time series: the "时间序列 / Time series" card takes several dated GeoTIFFs (dates typed, else from file
names or tags: :mod:`geovl.ui.timeseries`), previews them in date order with their dates, and asks the
message box's question about them as one multi-image turn whose text names each image's date.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..data.schema import assistant_turn, text_part, user_turn
from ..inference.capabilities import cube_reader, input_spec
from ..inference.engine import ChatRequest, GenerationParams
from ..serve.images import ImageLimits, ImageRefError, check_image, image_format
from ..serve.videos import SERVER_VIDEO_LIMITS, decode_video, engine_settings, request_settings
from .i18n import LANGS, quick_questions, t
from .timeseries import SeriesError, date_series, series_prompt

BROWSER_VIDEO = (".mp4", ".m4v", ".webm", ".ogv")  # shown as uploaded; other containers: an MP4 of the frames

log = logging.getLogger("geovl.ui")


@dataclass
class PanelContext:
    """What a panel hook sees after an answer."""

    images: list[bytes]  # every image of the conversation, in order
    messages: list[dict]  # geovl-schema conversation including the new answer
    question: str
    answer: str
    lang: str
    extras: dict = field(default_factory=dict)  # Conversation.extras (extension data of this conversation)


@dataclass
class PanelResult:
    markdown: str = ""
    image: Any = None  # PIL image, numpy array or file path (a map); None hides the map


PanelHook = Callable[[PanelContext], "PanelResult | None"]


@dataclass
class Conversation:
    messages: list[dict] = field(default_factory=list)
    images: list[bytes] = field(default_factory=list)
    extras: dict = field(default_factory=dict)  # per-conversation data of an extension
    videos: list[bytes] = field(default_factory=list)  # encoded videos, in video-part order

    def request(self) -> ChatRequest:
        return ChatRequest(list(self.messages), list(self.images), list(self.videos))


@dataclass
class TurnContext:
    """What an extension's ``route`` sees before an answer is generated."""

    files: list[str]  # files uploaded with this turn (empty for follow-ups and retries)
    question: str
    conv: Conversation  # including the new user turn
    lang: str
    params: GenerationParams
    extra: tuple = ()  # values of ``extension.inputs``


@dataclass
class Route:
    deltas: Any = None  # iterable of the answer's text deltas; None: engine.stream(conversation)
    panel: PanelResult | None = None  # shown before generation starts


class ChatApp:
    def __init__(
        self,
        engine,
        lang: str = "zh",
        panel_hook: PanelHook | None = None,
        max_upload_bytes: int = 20 * 1024 * 1024,
        max_images: int = 8,
        max_new_tokens: int = 256,
        where: str | None = None,
        extension=None,
        max_videos: int = 2,
        max_video_bytes: int = 64 * 1024 * 1024,
    ):
        self.engine = engine
        self.lang = lang if lang in LANGS else "zh"
        self.extension = extension
        self.panel_hook = panel_hook if panel_hook is not None else getattr(extension, "panel_hook", None)
        self.limits = ImageLimits(max_image_bytes=max_upload_bytes, max_images=max_images)
        self.max_videos = int(max_videos)
        self.video_limits = dataclasses.replace(SERVER_VIDEO_LIMITS, max_bytes=int(max_video_bytes))
        self.max_new_tokens = int(max_new_tokens)
        self.where = where  # None: local model
        self.preview_dir = Path(tempfile.mkdtemp(prefix="geovl-ui-"))

    # -- texts -------------------------------------------------------------------------------
    def limits_card(self, lang: str) -> str:
        where = t("where_local", lang) if self.where is None else t("where_remote", lang, url=self.where)
        card = t(
            "limits_card",
            lang,
            where=where,
            max_mb=f"{self.limits.max_image_bytes / 1024 / 1024:.0f}",
            max_images=self.limits.max_images,
        )
        v = self.video_limits
        return card + t(
            "limits_video",
            lang,
            max_mb=f"{v.max_bytes / 1024 / 1024:.0f}",
            max_videos=self.max_videos,
            max_minutes=f"{v.max_duration_s / 60:g}",
        )

    # -- images ------------------------------------------------------------------------------
    def load_image(self, path: str, lang: str) -> tuple[bytes, str]:
        """(bytes for the engine, a browser-viewable path for the chat) of an uploaded file."""
        from ..imagery.decode import ImageError, encode_png, load_image_bytes

        name = Path(path).name
        try:
            size = os.path.getsize(path)
            if size > self.limits.max_image_bytes:
                raise ImageRefError(f"{size} bytes > {self.limits.max_image_bytes}", "image_too_large")
            with open(path, "rb") as f:
                raw = f.read()
            check_image(raw, self.limits)
            spec, cubes = input_spec(self.engine), cube_reader(self.engine)
            if cubes is not None:  # the model reads the cube itself (a multi-band GeoTIFF); the chat shows bands 1-3
                if image_format(raw) != "TIFF":
                    raise ImageError(
                        "bad_cube",
                        f"this model reads {spec.n_bands}-band GeoTIFF cubes, not {image_format(raw)} pictures "
                        f"/ 此模型读取 {spec.n_bands} 波段 GeoTIFF 高光谱数据",
                    )
                cubes.cube(raw)  # band count and wavelengths checked now, named in the error
                data, shown = (
                    raw,
                    load_image_bytes(
                        raw, self.limits.max_pixels, name=name, max_decoded_bytes=self.limits.max_decoded_bytes
                    ).data,
                )
            else:  # rasters rendered with the model's settings (geovl.imagery.render): what it sees is shown
                from ..imagery.render import RenderSettings

                render = RenderSettings.from_preprocess(spec.preprocess)
                data = shown = load_image_bytes(
                    raw,
                    self.limits.max_pixels,
                    name=name,
                    max_decoded_bytes=self.limits.max_decoded_bytes,
                    render=render,
                ).data  # EXIF-upright, rasters → PNG
        except ImageRefError as e:
            raise _user_error(t("err_bad_image", lang, name=name, why=e.message)) from None
        except (ImageError, OSError) as e:
            raise _user_error(t("err_bad_image", lang, name=name, why=str(e))) from None
        if shown is raw or image_format(raw) in ("PNG", "JPEG", "GIF", "WEBP"):
            return data, path
        preview = self.preview_dir / f"{len(os.listdir(self.preview_dir))}.png"
        preview.write_bytes(shown if shown[:4] == b"\x89PNG" else encode_png(_open(shown)))
        return data, str(preview)

    # -- videos ------------------------------------------------------------------------------
    @staticmethod
    def is_video(path: str) -> bool:
        """Whether an upload is to be read as a video: any file whose first bytes are not an image's."""
        with open(path, "rb") as f:
            head = f.read(64)
        return bool(head) and image_format(head) is None

    def load_video(self, path: str, lang: str) -> tuple[bytes, str]:
        """(bytes for the engine, a browser-playable path for the chat) of an uploaded video, checked and
        sampled as the API does (bad video: a :class:`gradio.Error` naming the file and the reason)."""
        from ..imagery.video import encode_mp4

        name = Path(path).name
        settings = request_settings(engine_settings(self.engine), self.video_limits)
        try:
            size = os.path.getsize(path)
            if size > settings.max_bytes:
                raise ImageRefError(f"{size} bytes > {settings.max_bytes} / 视频文件过大", "video_too_many_bytes")
            with open(path, "rb") as f:
                data = f.read(settings.max_bytes + 1)
            clip = decode_video(data, settings)
        except ImageRefError as e:
            raise _user_error(t("err_bad_video", lang, name=name, why=e.message)) from None
        except OSError as e:
            raise _user_error(t("err_bad_video", lang, name=name, why=str(e))) from None
        if Path(path).suffix.lower() in BROWSER_VIDEO:
            return data, path
        h, w = (d - d % 2 for d in clip.frames[0].shape[:2])  # H.264 needs even sides
        preview = self.preview_dir / f"{len(os.listdir(self.preview_dir))}.mp4"
        preview.write_bytes(encode_mp4((f[:h, :w] for f in clip.frames), fps=max(clip.fps, 0.5)))
        return data, str(preview)

    # -- chat ----------------------------------------------------------------------------------
    def _params(self, temperature, max_new) -> GenerationParams:
        return GenerationParams(
            max_new_tokens=int(max_new or self.max_new_tokens), temperature=float(temperature or 0.0)
        )

    def _route(
        self, files: list[str], question: str, conv: Conversation, lang: str, params: GenerationParams, extra: tuple
    ):
        if self.extension is None:
            return None
        return self.extension.route(TurnContext(list(files), question, conv, lang, params, tuple(extra)))

    def _stream(
        self,
        history: list,
        conv: Conversation,
        lang: str,
        params: GenerationParams,
        question: str,
        clear_box: bool = True,
        route: Route | None = None,
    ):
        """Append the answer to ``history`` as it streams; yields the handler outputs."""
        import gradio as gr

        history.append({"role": "assistant", "content": ""})
        panel = (gr.skip(), gr.skip())
        if route is not None and route.panel is not None:
            panel = (route.panel.markdown, gr.Image(value=route.panel.image, visible=route.panel.image is not None))
        yield gr.MultimodalTextbox(value=None) if clear_box else gr.skip(), history, conv, *panel
        answer = ""
        try:
            deltas = (
                route.deltas
                if route is not None and route.deltas is not None
                else self.engine.stream(conv.request(), params)
            )
            for delta in deltas:
                answer += delta
                history[-1] = {"role": "assistant", "content": answer}
                yield gr.skip(), history, conv, gr.skip(), gr.skip()
        except Exception as e:  # noqa: BLE001 - engine or server failure: shown in the chat, turn kept for retry
            log.warning("generation failed: %s", e)
            history[-1] = {"role": "assistant", "content": t("error_prefix", lang) + str(e)[:500]}
            yield gr.skip(), history, conv, gr.skip(), gr.skip()
            return
        conv.messages.append(assistant_turn(answer))
        if not answer.strip():
            history[-1] = {"role": "assistant", "content": t("empty_answer", lang)}
        panel_md, panel_img = self._panel(conv, question, answer, lang)
        yield gr.skip(), history, conv, panel_md, panel_img

    def _panel(self, conv: Conversation, question: str, answer: str, lang: str):
        import gradio as gr

        res = None
        if self.panel_hook is not None:
            try:
                res = self.panel_hook(
                    PanelContext(list(conv.images), list(conv.messages), question, answer, lang, conv.extras)
                )
            except Exception as e:  # noqa: BLE001 - a failing hook must not break the chat
                log.exception("panel hook failed")
                return t("error_prefix", lang) + str(e)[:300], gr.Image(value=None, visible=False)
        if res is None:
            res = self.box_panel(conv.images, answer, lang)
        if res is None:
            return gr.skip(), gr.skip()
        return res.markdown, gr.Image(value=res.image, visible=res.image is not None)

    def box_panel(self, images: list[bytes], answer: str, lang: str) -> PanelResult | None:
        """When the answer locates objects: the last image with the boxes drawn, and their GeoJSON
        (pixel coordinates) to download (:mod:`geovl.inference.answer_boxes`); None otherwise."""
        import json

        from PIL import Image

        from ..evaluate.box_draw import draw_boxes
        from ..inference.answer_boxes import answer_boxes, boxes_geojson

        info = answer_boxes(self.engine, images, answer)
        if info is None:
            return None
        import io

        drawn = Image.open(
            io.BytesIO(draw_boxes(images[info["image"]], None, info["boxes"], scale=2 if info["width"] < 512 else 1))
        )
        path = self.preview_dir / f"boxes-{len(os.listdir(self.preview_dir))}.geojson"
        path.write_text(json.dumps(boxes_geojson(info), ensure_ascii=False), encoding="utf-8")
        md = t("boxes_found", lang, n=len(info["boxes"]), image=info["image"] + 1, url=f"/gradio_api/file={path}")
        return PanelResult(md, drawn)

    def respond(self, message, history, conv, lang, temperature, max_new, *extra):
        """Send the message box (text + attached images); ``extra``: values of ``extension.inputs``."""
        message = message or {}
        text = (message.get("text") or "").strip()
        files = [f if isinstance(f, str) else f.get("path") for f in message.get("files") or []]
        history = list(history or [])
        conv = conv if isinstance(conv, Conversation) else Conversation()
        if not text and not files:
            raise _user_error(t("err_no_input", lang))
        kinds = ["video" if self._is_video(p, lang) else "image" for p in files]
        n_img, n_vid = kinds.count("image"), kinds.count("video")
        if len(conv.images) + n_img > self.limits.max_images:
            raise _user_error(t("err_too_many", lang, n=len(conv.images), max=self.limits.max_images))
        if len(conv.videos) + n_vid > self.max_videos:
            raise _user_error(t("err_too_many_videos", lang, n=len(conv.videos), max=self.max_videos))
        loaded = [
            (k, *(self.load_video(p, lang) if k == "video" else self.load_image(p, lang))) for k, p in zip(kinds, files)
        ]
        params = self._params(temperature, max_new)
        conv = _without_failed_turn(conv)
        turn = {"role": "user", "content": [{"type": k} for k, _, _ in loaded] + [text_part(text)]}
        conv = Conversation(
            conv.messages + [turn],
            conv.images + [b for k, b, _ in loaded if k == "image"],
            conv.extras,
            conv.videos + [b for k, b, _ in loaded if k == "video"],
        )
        content = [{"path": shown} for _, _, shown in loaded] + ([text] if text else [])
        history.append({"role": "user", "content": content})
        route = self._route(files, text, conv, lang, params, extra)
        yield from self._stream(history, conv, lang, params, text, route=route)

    def _is_video(self, path: str, lang: str) -> bool:
        try:
            return self.is_video(path)
        except OSError as e:
            raise _user_error(t("err_bad_image", lang, name=Path(path).name, why=str(e))) from None

    # -- time series -----------------------------------------------------------------------------
    def _series(self, files, dates_text: str, lang: str):
        """(items in date order, their loaded (bytes, shown path)); :class:`gradio.Error` when unusable."""
        paths = [f if isinstance(f, str) else getattr(f, "name", None) or f.get("path") for f in files or []]
        try:
            items = date_series(paths, dates_text or "", self.limits.max_images)
        except SeriesError as e:
            raise _user_error(t(e.key, lang, **e.fmt)) from None
        return items, [self.load_image(it.path, lang) for it in items]

    def series_preview(self, files, dates_text, lang):
        """The card's status (files, dates and where each date came from, or what is wrong) and the gallery's
        (image, caption) pairs in date order (None: empty)."""
        import gradio as gr

        if not files:
            return t("ts_empty", lang), None
        try:
            items, loaded = self._series(files, dates_text, lang)
        except gr.Error as e:
            return t("error_prefix", lang) + str(e.message if hasattr(e, "message") else e), None
        rows = [t("ts_table_head", lang)] + [
            f"| {i} | {it.date} | `{it.name}` | {t('ts_source_' + it.source, lang)} |" for i, it in enumerate(items, 1)
        ]
        gallery = [
            (shown, t("ts_caption", lang, i=i, date=it.date))
            for i, (it, (_, shown)) in enumerate(zip(items, loaded), 1)
        ]
        return "\n".join(rows), gallery

    def ask_series(self, files, dates_text, message, history, conv, lang, temperature, max_new, *extra):
        """Ask the message box's question (or the default one) about the dated images, in date order."""
        history = list(history or [])
        conv = conv if isinstance(conv, Conversation) else Conversation()
        items, loaded = self._series(files, dates_text, lang)
        if len(conv.images) + len(items) > self.limits.max_images:
            raise _user_error(t("err_too_many", lang, n=len(conv.images), max=self.limits.max_images))
        question = ((message or {}).get("text") or "").strip() or t("ts_default_question", lang)
        text = series_prompt([it.date for it in items], question, lang)
        conv = _without_failed_turn(conv)
        conv = Conversation(
            conv.messages + [user_turn(text, len(items))],
            conv.images + [b for b, _ in loaded],
            conv.extras,
            conv.videos,
        )
        history.append({"role": "user", "content": [{"path": shown} for _, shown in loaded] + [text]})
        params = self._params(temperature, max_new)
        yield from self._stream(history, conv, lang, params, question, route=None)

    def quick(self, question, message, history, conv, lang, temperature, max_new, *extra):
        """A quick-question button: its text plus the images attached in the message box."""
        files = (message or {}).get("files") or []
        yield from self.respond({"text": question, "files": files}, history, conv, lang, temperature, max_new, *extra)

    def retry(self, history, conv, lang, temperature, max_new, *extra):
        conv = conv if isinstance(conv, Conversation) else Conversation()
        history = list(history or [])
        if not any(m["role"] == "user" for m in conv.messages):
            raise _user_error(t("err_nothing_to_retry", lang))
        msgs = list(conv.messages)
        if msgs[-1]["role"] == "assistant":
            msgs.pop()
        conv = Conversation(msgs, list(conv.images), conv.extras, list(conv.videos))
        while history and history[-1]["role"] == "assistant":
            history.pop()
        question = "".join(p.get("text") or "" for p in msgs[-1]["content"] if p.get("type") == "text")
        params = self._params(temperature, max_new)
        route = self._route([], question, conv, lang, params, extra)
        yield from self._stream(history, conv, lang, params, question, clear_box=False, route=route)

    def clear(self, lang):
        import gradio as gr

        return (
            gr.MultimodalTextbox(value=None),
            [],
            Conversation(),
            t("panel_empty", lang),
            gr.Image(value=None, visible=False),
        )

    # -- the page --------------------------------------------------------------------------------
    def build(self):
        import gradio as gr

        lang = self.lang
        qs = quick_questions(lang)
        with gr.Blocks(title=f"{t('page_title', 'zh')} · {t('page_title', 'en')}", analytics_enabled=False) as demo:
            conv = gr.State(Conversation())
            with gr.Row(equal_height=False):
                title = gr.Markdown(t("title", lang), elem_id="title")
                lang_switch = gr.Radio(
                    [("中文", "zh"), ("English", "en")],
                    value=lang,
                    label=t("lang_label", lang),
                    elem_id="lang-switch",
                    scale=0,
                    min_width=220,
                )
            with gr.Row(equal_height=False):
                with gr.Column(scale=3):
                    chatbot = gr.Chatbot(
                        label=t("chat_label", lang),
                        placeholder=t("chat_placeholder", lang),
                        elem_id="chatbot",
                        height=520,
                        buttons=["copy"],
                    )
                    msg = gr.MultimodalTextbox(
                        placeholder=t("input_placeholder", lang),
                        file_count="multiple",
                        file_types=["image", ".tif", ".tiff", "video"],
                        show_label=False,
                        elem_id="msg-input",
                    )
                    quick_heading = gr.Markdown(t("quick_heading", lang), elem_id="quick-heading")
                    with gr.Row():
                        quick = [gr.Button(q, size="sm", elem_id=f"quick-{i}") for i, q in enumerate(qs)]
                    with gr.Row():
                        retry = gr.Button(t("retry", lang), elem_id="retry-btn", size="sm")
                        clear = gr.Button(t("clear", lang), elem_id="clear-btn", size="sm", variant="stop")
                with gr.Column(scale=2):
                    with gr.Group(elem_id="panel"):
                        panel_heading = gr.Markdown(t("panel_heading", lang), elem_id="panel-heading")
                        panel_content = gr.Markdown(t("panel_empty", lang), elem_id="panel-content")
                        panel_map = gr.Image(visible=False, interactive=False, show_label=False, elem_id="panel-map")
                        if self.extension is not None:
                            self.extension.build(self, lang)
                    with gr.Group(elem_id="ts-card"):
                        ts_heading = gr.Markdown(t("ts_heading", lang), elem_id="ts-heading")
                        ts_files = gr.File(
                            label=t("ts_files_label", lang),
                            file_count="multiple",
                            file_types=[".tif", ".tiff"],
                            elem_id="ts-files",
                        )
                        ts_dates = gr.Textbox(
                            label=t("ts_dates_label", lang),
                            placeholder=t("ts_dates_placeholder", lang),
                            elem_id="ts-dates",
                        )
                        ts_status = gr.Markdown(t("ts_empty", lang), elem_id="ts-status")
                        ts_gallery = gr.Gallery(
                            show_label=False, columns=4, height=180, interactive=False, elem_id="ts-gallery"
                        )
                        ts_ask = gr.Button(t("ts_ask", lang), elem_id="ts-ask", size="sm", variant="primary")
                    with gr.Accordion(t("settings", lang), open=False, elem_id="settings") as settings:
                        temperature = gr.Slider(
                            0.0, 1.5, value=0.0, step=0.05, label=t("temperature", lang), elem_id="temperature"
                        )
                        max_new = gr.Slider(
                            8,
                            2048,
                            value=self.max_new_tokens,
                            step=8,
                            label=t("max_new_tokens", lang),
                            elem_id="max-new-tokens",
                        )
                    about = gr.Markdown(t("about_card", lang), elem_id="about-card")
                    limits = gr.Markdown(self.limits_card(lang), elem_id="limits-card")
                    model_line = gr.Markdown(
                        t("model_line", lang, name=getattr(self.engine, "name", "?")), elem_id="model-line"
                    )

            outs = [msg, chatbot, conv, panel_content, panel_map]
            settings_in = [
                lang_switch,
                temperature,
                max_new,
                *(self.extension.inputs if self.extension is not None else []),
            ]
            run = dict(
                concurrency_limit=1, concurrency_id="engine"
            )  # one generation at a time: the engine is not re-entrant
            msg.submit(self.respond, [msg, chatbot, conv, *settings_in], outs, **run)
            for b in quick:
                b.click(self.quick, [b, msg, chatbot, conv, *settings_in], outs, **run)
            retry.click(self.retry, [chatbot, conv, *settings_in], outs, **run)
            ts_in = [ts_files, ts_dates, lang_switch]
            ts_files.change(self.series_preview, ts_in, [ts_status, ts_gallery])
            ts_dates.submit(self.series_preview, ts_in, [ts_status, ts_gallery])
            ts_dates.blur(self.series_preview, ts_in, [ts_status, ts_gallery])
            ts_ask.click(self.ask_series, [ts_files, ts_dates, msg, chatbot, conv, *settings_in], outs, **run)
            clear.click(self.clear, [lang_switch], outs)
            chatbot.clear(self.clear, [lang_switch], outs)  # the chatbot's own trash button resets the conversation too

            def switch(new_lang, panel_text, ts_text):
                other = [t("panel_empty", x) for x in LANGS]
                return (
                    t("title", new_lang),
                    gr.Radio(label=t("lang_label", new_lang)),
                    gr.Chatbot(label=t("chat_label", new_lang), placeholder=t("chat_placeholder", new_lang)),
                    gr.MultimodalTextbox(placeholder=t("input_placeholder", new_lang)),
                    t("quick_heading", new_lang),
                    *[gr.Button(q) for q in quick_questions(new_lang)],
                    gr.Button(t("retry", new_lang)),
                    gr.Button(t("clear", new_lang)),
                    t("panel_heading", new_lang),
                    t("panel_empty", new_lang) if panel_text in other else gr.skip(),
                    gr.Accordion(label=t("settings", new_lang)),
                    gr.Slider(label=t("temperature", new_lang)),
                    gr.Slider(label=t("max_new_tokens", new_lang)),
                    t("about_card", new_lang),
                    self.limits_card(new_lang),
                    t("model_line", new_lang, name=getattr(self.engine, "name", "?")),
                    t("ts_heading", new_lang),
                    gr.File(label=t("ts_files_label", new_lang)),
                    gr.Textbox(label=t("ts_dates_label", new_lang), placeholder=t("ts_dates_placeholder", new_lang)),
                    t("ts_empty", new_lang) if ts_text in [t("ts_empty", x) for x in LANGS] else gr.skip(),
                    gr.Button(t("ts_ask", new_lang)),
                )

            lang_switch.change(
                switch,
                [lang_switch, panel_content, ts_status],
                [
                    title,
                    lang_switch,
                    chatbot,
                    msg,
                    quick_heading,
                    *quick,
                    retry,
                    clear,
                    panel_heading,
                    panel_content,
                    settings,
                    temperature,
                    max_new,
                    about,
                    limits,
                    model_line,
                    ts_heading,
                    ts_files,
                    ts_dates,
                    ts_status,
                    ts_ask,
                ],
            )
            if self.extension is not None:
                parts = dict(
                    msg=msg,
                    chatbot=chatbot,
                    conv=conv,
                    panel_content=panel_content,
                    panel_map=panel_map,
                    lang_switch=lang_switch,
                )
                self.extension.wire(self, parts | {"run": run})
        self.demo = demo
        return demo


def _n_parts(message: dict, kind: str = "image") -> int:
    return sum(1 for p in message["content"] if p.get("type") == kind)


def _without_failed_turn(conv: Conversation) -> Conversation:
    """``conv`` without a last user turn that got no answer (an earlier turn failed: it is replaced)."""
    if not (conv.messages and conv.messages[-1]["role"] == "user"):
        return conv
    last = conv.messages[-1]
    return Conversation(
        conv.messages[:-1],
        conv.images[: len(conv.images) - _n_parts(last, "image")],
        conv.extras,
        conv.videos[: len(conv.videos) - _n_parts(last, "video")],
    )


def _open(data: bytes):
    import io

    from PIL import Image

    return Image.open(io.BytesIO(data))


def _user_error(msg: str):
    import gradio as gr

    return gr.Error(msg)


CSS = """
#panel { min-height: 240px; border: 1px dashed var(--border-color-primary); padding: 8px 12px; }
#panel-heading h3 { margin-top: 0; }
#panel-content table { font-size: 0.85em; display: block; overflow-x: auto; max-width: 100%; }
#panel-content th, #panel-content td { white-space: nowrap; padding: 2px 6px; }
"""
THEME_FONTS = ["system-ui", "WenQuanYi Micro Hei", "Noto Sans CJK SC", "PingFang SC", "Microsoft YaHei", "sans-serif"]


def launch(app: ChatApp, host: str = "127.0.0.1", port: int = 7860, share: bool = False, block: bool = True):
    import gradio as gr

    demo = app.build()
    demo.queue(default_concurrency_limit=1)
    theme = gr.themes.Soft(
        primary_hue="green", font=THEME_FONTS, font_mono=["ui-monospace", "monospace"]
    )  # no web fonts (offline)
    return demo.launch(
        server_name=host,
        server_port=port,
        share=share,
        theme=theme,
        css=CSS,
        max_file_size=max(app.limits.max_image_bytes, app.video_limits.max_bytes),
        allowed_paths=[str(app.preview_dir)],
        prevent_thread_lock=not block,
        quiet=False,
        ssr_mode=False,
        pwa=False,
        mcp_server=False,
        footer_links=[],
    )
