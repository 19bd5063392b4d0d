"""GeoTIFF measurement and maps in the web app: the "测量与地图 / Measurements & maps" panel.

:class:`GeoPanel` is a :class:`~geovl.ui.webapp.ChatApp` extension (``ChatApp(engine,
extension=GeoPanel(engine))``; ``geovl ui`` does this unless ``--no-geo``):

- **Uploads.** GeoTIFFs attached in the chat with a CRS join the conversation's *geo session* (the
  two most recent are kept: one date, or before/after). The date order comes from the panel's
  selector: automatic (``TIFFTAG_DATETIME`` tags of both files, else upload order), upload order
  (first = earlier) or reversed. TIFFs without a CRS and PNG/JPEG images are plain images.
- **Grounded chat.** A turn that uploads georeferenced GeoTIFFs, or a follow-up (or retry) without
  new images while the session has some, is answered by
  :func:`geovl.geo.ask.stream_grounded_answer` with the panel's :class:`~geovl.geo.measure.Measurement`
  — the SAME object the panel shows, so every number in the panel is the number in the prompt. A
  turn with only plain images keeps the plain chat path (the whole conversation).
- **Classes.** Optional class rasters (single-band categorical GeoTIFFs; for two dates before then
  after, in upload order) and a class table (selector, or a ``classes.json`` uploaded with them).
  Without them the index-derived classes are used and the panel says so.
- **Panel.** Areas per class and date (m², km², 公顷, 亩, share; zh/en names), changed area, net
  change per class, change matrix, largest patches, method, uncertainty and notes
  (:mod:`geovl.ui.geo_view`), and a map preview: the true-colour later image with the change
  patches outlined.
- **"生成疑似问题图 / Map flagged tiles".** :func:`geovl.geo.mapper.map_raster` over the later image
  with the question in the message box (else the last question asked): forced yes/no choice for a
  local model, generated text for a remote one. The preview then also shows the flagged tiles, and
  the flags GeoTIFF, its GeoJSON and PNG, the measurement JSON and the change-patch GeoJSON are
  offered for download.

Measurement problems (no CRS, grids that cannot be aligned, a class raster with several bands …)
are shown in the panel with the file named; the answer then takes the plain path.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections import OrderedDict
from pathlib import Path

from ..geo.errors import MeasureError
from ..imagery.decode import TIFF_MAGICS
from .i18n import t
from .webapp import PanelResult, Route

ORDERS = ("auto", "upload", "reversed")
TABLES = ("auto", "synth", "worldcover", "dynamicworld")
TABLE_NAMES = {"synth": "geovl synth", "worldcover": "ESA WorldCover", "dynamicworld": "Dynamic World"}


def session(conv) -> dict:
    """The geo session of a conversation (created on first use)."""
    return conv.extras.setdefault(
        "geo",
        {
            "id": uuid.uuid4().hex[:12],
            "rasters": [],
            "panel_md": None,
            "preview": None,
            "grounded": False,
            "map": None,
            "notes": [],
        },
    )


def inspect_upload(path: str) -> dict:
    """``{"kind": "geo" | "no_crs" | "image", "path", "name", "count", "datetime"}`` of an uploaded file."""
    name = Path(path).name
    with open(path, "rb") as f:
        head = f.read(4)
    if head not in TIFF_MAGICS:
        return {"kind": "image", "path": path, "name": name}
    import warnings

    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as ds:
            crs, count, when = ds.crs, ds.count, ds.tags().get("TIFFTAG_DATETIME")
    return {"kind": "geo" if crs else "no_crs", "path": path, "name": name, "count": count, "datetime": when}


def _names(items) -> str:
    return ", ".join(f"`{i['name']}`" for i in items)


def _clean(message: str, paths) -> str:
    """An error message with upload paths replaced by file names (temporary folders mean nothing to users)."""
    for p in sorted({str(p) for p in paths if p}, key=len, reverse=True):
        message = message.replace(p, Path(p).name)
    return message


class GeoPanel:
    def __init__(self, engine, work_dir=None, max_side: int = 768, cache_size: int = 8, map_batch_size: int = 8):
        self.engine = engine
        self.work = Path(work_dir) if work_dir else None
        self.max_side, self.cache_size, self.map_batch_size = max_side, cache_size, map_batch_size
        self._cache: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self.inputs: list = []

    # -- files ---------------------------------------------------------------------------------------
    def _dir(self, geo: dict) -> Path:
        if self.work is None:
            import tempfile

            self.work = Path(tempfile.mkdtemp(prefix="geovl-geo-"))
        d = self.work / geo["id"]
        d.mkdir(parents=True, exist_ok=True)
        return d

    # -- measuring -----------------------------------------------------------------------------------
    def ordered(self, geo: dict, order: str = "auto") -> tuple[dict | None, dict, str | None]:
        """(before, after, how) of the session's rasters; ``how`` is an i18n key (None for one date)."""
        rs = geo["rasters"]
        if len(rs) == 1:
            return None, rs[0], None
        a, b = rs
        if order == "reversed":
            return b, a, "geo_how_reversed"
        if order == "auto" and a.get("datetime") and b.get("datetime") and a["datetime"] != b["datetime"]:
            first, second = sorted((a, b), key=lambda r: r["datetime"])
            return first, second, "geo_how_date"
        return a, b, "geo_how_upload"

    def measure(self, geo: dict, classes=None, order: str = "auto", table: str = "auto"):
        """(Measurement, inputs) for the session with the panel's class rasters / order / table."""
        from ..geo.ask import measure_inputs

        before, after, how = self.ordered(geo, order or "auto")
        files = [str(f if isinstance(f, str) else f.get("path")) for f in (classes or [])]
        tables = [f for f in files if f.lower().endswith(".json")]
        rasters = [f for f in files if not f.lower().endswith(".json")]
        n_dates = 1 if before is None else 2
        if rasters and len(rasters) != n_dates:
            raise MeasureError(
                f"{len(rasters)} class raster(s) uploaded for {n_dates} date(s): give one class raster per date "
                "(before, then after), or none / 地类图数量须与时相数一致"
            )
        if len(tables) > 1:
            raise MeasureError("upload at most one class-table JSON / 最多上传一个类别表 JSON")
        supplied = bool(rasters) or all(r.get("count") == 1 for r in (before, after) if r)
        spec = tables[0] if tables else (table if table and table != "auto" else None)
        spec = spec if supplied else None
        c_before, c_after = (rasters[0], rasters[1]) if len(rasters) == 2 else (None, rasters[0] if rasters else None)
        key = (before and before["path"], after["path"], c_before, c_after, spec)
        all_paths = [r["path"] for r in (before, after) if r] + files
        with self._lock:
            m = self._cache.get(key)
            if m is not None:
                self._cache.move_to_end(key)
        if m is None:
            try:
                if (
                    supplied and spec is None
                ):  # auto: from the codes, not from files that happen to lie near the uploads
                    from ..geo.tables import auto_class_table

                    spec = auto_class_table(
                        [c for c in (c_before, c_after) if c] or [r["path"] for r in (before, after) if r]
                    )
                m = measure_inputs(after["path"], before and before["path"], c_after, c_before, class_table=spec)
            except MeasureError as e:
                raise MeasureError(_clean(str(e), all_paths)) from None
            with self._lock:
                self._cache[key] = m
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        order_list = [("before", before["name"]), ("after", after["name"])] if before else [("image", after["name"])]
        inputs = {
            "order": order_list,
            "how": how,
            "classes": [Path(f).name for f in files],
            "before_path": before and before["path"],
            "after_path": after["path"],
            "classes_before": c_before,
            "classes_after": c_after,
            "paths": all_paths,
        }
        return m, inputs

    def panel_text(self, geo: dict, m, inputs: dict, lang: str) -> str:
        from .geo_view import map_markdown, measurement_markdown

        md = measurement_markdown(m, inputs, lang)
        mp = geo.get("map")
        if mp and mp["raster"] == inputs["after_path"]:
            md += "\n\n" + map_markdown(mp["summary"], lang)
        md += "\n\n" + t("geo_preview_caption" if m.change is not None else "geo_preview_caption_one", lang)
        return _clean(md, inputs["paths"])  # notes name files: upload folders mean nothing to users

    def preview(self, geo: dict, m, inputs: dict) -> str:
        from .geo_view import render_preview

        mp = geo.get("map")
        flags = mp["geojson"] if mp and mp["raster"] == inputs["after_path"] else None
        out = self._dir(geo) / f"preview-{uuid.uuid4().hex[:8]}.png"
        patches = m.change.patches if m.change is not None else ()
        render_preview(inputs["after_path"], out, patches, m.transform, flags, self.max_side)
        return str(out)

    def show(self, geo: dict, classes, order, table, lang: str) -> tuple:
        """(measurement, inputs, panel markdown, preview path); remembers the panel in the session."""
        m, inputs = self.measure(geo, classes, order, table)
        md, img = self.panel_text(geo, m, inputs, lang), self.preview(geo, m, inputs)
        geo["panel_md"], geo["preview"] = md, img
        return m, inputs, md, img

    # -- the ChatApp extension interface ---------------------------------------------------------------
    def route(self, ctx) -> Route | None:
        from ..geo.ask import stream_grounded_answer

        geo = session(ctx.conv)
        classes, order, table = (list(ctx.extra) + [None, "auto", "auto"])[:3]
        lang = ctx.lang
        ups = [inspect_upload(p) for p in ctx.files]
        new = [u for u in ups if u["kind"] == "geo"]
        no_crs = [u for u in ups if u["kind"] == "no_crs"]
        plain = [u for u in ups if u["kind"] == "image"]
        notes = geo["notes"] = [t("geo_no_crs", lang, names=_names(no_crs))] if no_crs else []  # this turn's notes
        if new:
            geo["rasters"] = geo["rasters"] + new
            if len(geo["rasters"]) > 2:
                geo["rasters"] = geo["rasters"][-2:]
                notes.append(t("geo_kept_two", lang, names=_names(geo["rasters"])))
            geo["map"] = None
            if plain:
                notes.append(t("geo_mixed_images", lang, names=_names(plain)))
        geo["grounded"] = False
        if not geo["rasters"] or (ups and not new):  # nothing georeferenced, or a turn with plain images only
            return Route(None, PanelResult(self._text(geo, lang), geo.get("preview"))) if notes else None
        try:
            m, inputs, _, img = self.show(geo, classes, order, table, lang)
        except MeasureError as e:
            geo["panel_md"], geo["preview"] = None, None
            notes.append(t("geo_measure_failed", lang, why=str(e)))
            return Route(None, PanelResult(self._text(geo, lang), None))
        if not ctx.question.strip():  # images without a question: measured, answered as plain images
            return Route(None, PanelResult(self._text(geo, lang), img))
        try:
            stream = stream_grounded_answer(
                self.engine,
                inputs["after_path"],
                ctx.question,
                before_path=inputs["before_path"],
                classes=inputs["classes_after"],
                before_classes=inputs["classes_before"],
                measurement=m,
                params=ctx.params,
            )
        except MeasureError as e:
            notes.append(
                t("geo_measure_failed", lang, why=_clean(str(e), [inputs["after_path"], inputs["before_path"]]))
            )
            return Route(None, PanelResult(self._text(geo, lang), img))
        geo["grounded"] = True
        return Route(iter(stream), PanelResult(self._text(geo, lang) + "\n\n*" + t("geo_generating", lang) + "*", img))

    @staticmethod
    def _text(geo: dict, lang: str, grounded: bool = False) -> str:
        """This turn's notes, the measurement panel, and (after a grounded answer) the grounding line."""
        parts = list(geo.get("notes") or []) + ([geo["panel_md"]] if geo.get("panel_md") else [])
        return "\n\n".join(parts + ([t("geo_grounded", lang)] if grounded else []))

    def panel_hook(self, ctx) -> PanelResult | None:
        """After an answer: the session's panel, saying whether this answer used the measurements."""
        geo = ctx.extras.get("geo")
        if not geo or not (geo.get("panel_md") or geo.get("notes")):
            return None
        return PanelResult(
            self._text(geo, ctx.lang, geo.get("grounded", False)), geo.get("preview") if geo.get("panel_md") else None
        )

    # -- the map button, refreshes, language ------------------------------------------------------------
    def make_map(self, conv, message, classes, order, table, tile, lang):
        """The "Map flagged tiles" button: (panel markdown, map image, downloads)."""
        import gradio as gr

        from ..geo.mapper import map_raster
        from ..inference.capabilities import can_score_choices
        from ..inference.engine import GenerationParams

        geo = conv.extras.get("geo") if conv is not None else None
        if not geo or not geo["rasters"]:
            raise gr.Error(t("geo_need_geotiff", lang))
        question = ((message or {}).get("text") or "").strip() or _last_question(conv.messages)
        if not question:
            raise gr.Error(t("geo_need_question", lang))
        tile = int(tile or 224)
        try:
            m, inputs = self.measure(geo, classes, order, table)
            d = self._dir(geo) / f"map-{uuid.uuid4().hex[:8]}"
            local = can_score_choices(self.engine)
            summary = map_raster(
                self.engine,
                inputs["after_path"],
                question,
                d / "flags.tif",
                tile=tile,
                overlap=min(32, tile // 4),
                batch_size=self.map_batch_size,
                geojson=d / "flags.geojson",
                png=d / "overview.png",
                answer_from="choice" if local else "text",
                progress=False,
                params=GenerationParams(max_new_tokens=8),
            )
        except MeasureError as e:  # MapError is one
            raise gr.Error(t("geo_map_failed", lang, why=_clean(str(e), [r["path"] for r in geo["rasters"]]))) from None
        geo["map"] = {
            "raster": inputs["after_path"],
            "geojson": str(d / "flags.geojson"),
            "summary": summary | {"question": question},
        }
        (d / "measurement.json").write_text(json.dumps(m.to_json(), ensure_ascii=False, indent=1), encoding="utf-8")
        files = [str(d / "flags.tif"), str(d / "flags.geojson"), str(d / "overview.png"), str(d / "measurement.json")]
        if m.change is not None:
            (d / "changes.geojson").write_text(json.dumps(m.geojson(), ensure_ascii=False), encoding="utf-8")
            files.append(str(d / "changes.geojson"))
        md, img = self.panel_text(geo, m, inputs, lang), self.preview(geo, m, inputs)
        geo["panel_md"], geo["preview"] = md, img
        return md, gr.Image(value=img, visible=True), gr.File(value=files, visible=True)

    def refresh(self, conv, classes, order, table, lang):
        """Class rasters, order or table changed: measure again (the next answer uses the new figures)."""
        import gradio as gr

        geo = conv.extras.get("geo") if conv is not None else None
        if not geo or not geo["rasters"]:
            return gr.skip(), gr.skip()
        try:
            _, _, md, img = self.show(geo, classes, order, table, lang)
        except MeasureError as e:
            geo["panel_md"], geo["preview"] = None, None
            return t("geo_measure_failed", lang, why=str(e)), gr.Image(value=None, visible=False)
        return md, gr.Image(value=img, visible=True)

    def _order_choices(self, lang: str) -> list:
        return [(t(f"geo_order_{k}", lang), k) for k in ORDERS]

    def _table_choices(self, lang: str) -> list:
        return [(t("geo_table_auto", lang) if k == "auto" else TABLE_NAMES[k], k) for k in TABLES]

    def relabel(self, lang, conv, classes, order, table):
        import gradio as gr

        geo = conv.extras.get("geo") if conv is not None else None
        panel = gr.skip()
        if geo and geo["rasters"] and geo.get("panel_md"):
            try:
                m, inputs = self.measure(geo, classes, order, table)
                geo["panel_md"] = self.panel_text(geo, m, inputs, lang)
                panel = geo["panel_md"] + ("\n\n" + t("geo_grounded", lang) if geo.get("grounded") else "")
            except MeasureError:
                pass
        return (
            gr.File(label=t("geo_classes_label", lang)),
            gr.Radio(choices=self._order_choices(lang), label=t("geo_order_label", lang)),
            gr.Dropdown(choices=self._table_choices(lang), label=t("geo_table_label", lang)),
            gr.Slider(label=t("geo_tile_label", lang)),
            gr.Button(t("geo_map_button", lang)),
            gr.File(label=t("geo_files_label", lang)),
            panel,
        )

    def build(self, app, lang: str) -> None:
        import gradio as gr

        if self.work is None:
            self.work = Path(app.preview_dir) / "geo"  # served: launch() allows app.preview_dir
        self.classes = gr.File(
            label=t("geo_classes_label", lang),
            file_count="multiple",
            file_types=[".tif", ".tiff", ".json"],
            elem_id="geo-classes",
            height=120,
        )
        with gr.Row():
            self.order = gr.Radio(
                self._order_choices(lang), value="auto", label=t("geo_order_label", lang), elem_id="geo-order"
            )
            self.table = gr.Dropdown(
                self._table_choices(lang), value="auto", label=t("geo_table_label", lang), elem_id="geo-table"
            )
        with gr.Row(equal_height=True):
            self.tile = gr.Slider(
                32, 1024, value=224, step=16, label=t("geo_tile_label", lang), elem_id="geo-tile", scale=3
            )
            self.map_btn = gr.Button(
                t("geo_map_button", lang), elem_id="geo-map-btn", variant="primary", scale=1, min_width=120
            )
        self.files = gr.File(
            label=t("geo_files_label", lang),
            file_count="multiple",
            interactive=False,
            visible=False,
            elem_id="geo-files",
        )
        self.inputs = [self.classes, self.order, self.table]

    def wire(self, app, parts: dict) -> None:
        conv, lang_switch = parts["conv"], parts["lang_switch"]
        panel = [parts["panel_content"], parts["panel_map"]]
        settings = [self.classes, self.order, self.table]
        self.map_btn.click(
            self.make_map, [conv, parts["msg"], *settings, self.tile, lang_switch], [*panel, self.files], **parts["run"]
        )
        for comp in settings:
            comp.change(self.refresh, [conv, *settings, lang_switch], panel)
        lang_switch.change(
            self.relabel,
            [lang_switch, conv, *settings],
            [self.classes, self.order, self.table, self.tile, self.map_btn, self.files, parts["panel_content"]],
        )


def _last_question(messages: list[dict]) -> str:
    for msg in reversed(messages or []):
        if msg["role"] == "user":
            return "".join(p.get("text") or "" for p in msg["content"] if p.get("type") == "text").strip()
    return ""
