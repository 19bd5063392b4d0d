"""What the "测量与地图 / Measurements & maps" panel shows, without any Gradio: the Markdown of a
:class:`~geovl.geo.measure.Measurement` and the map preview image.

Markdown (page language, class names in both languages): the inputs (which file is before/after and
why), CRS / pixel / grid, where the classes come from (uploaded class rasters, or derived from
spectral indices — then it says so), one areas table per date (m², km², 公顷, 亩, share; numbers
printed by :func:`geovl.geo.units.fmt`, exactly as in the model's grounded prompt), and for two
dates the changed area, the net change per class, the change matrix and the largest patches; then
the method, the uncertainty statement and the notes of the measurement.

Preview (:func:`render_preview`): the true-colour rendering of the (later) GeoTIFF, scaled so its
longest side is ``max_side`` px (nearest neighbour when enlarging), with the change patches outlined
in yellow (the largest ``number`` numbered like the patch list) and flagged tiles of a flags map
tinted and outlined in red.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..geo import report
from ..geo.units import all_units, fmt, fmt_signed
from .i18n import t

PATCH_RGB = (255, 214, 0)
FLAG_RGB = (230, 30, 30)
NUMBERED = 5  # patches numbered on the map = patches listed in the panel (and in the model context)
MAX_OUTLINED = 300  # patches outlined on the preview, largest first


def class_name(info, lang: str) -> str:
    """Both names, the page language first: ``耕地 cropland`` / ``cropland 耕地``."""
    if info.zh == info.en:
        return info.en
    return f"{info.zh} {info.en}" if lang == "zh" else f"{info.en} {info.zh}"


def _row(cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _table(head: list[str], rows: list[list[str]], right_from: int = 1) -> list[str]:
    align = ["---" if i < right_from else "---:" for i in range(len(head))]
    return [_row(head), _row(align), *(_row(r) for r in rows)]


def _area_cells(m2: float) -> list[str]:
    u = all_units(m2)
    return [fmt(u[k], k) for k in ("m2", "km2", "ha", "mu")]


def areas_table(d, table, lang: str) -> list[str]:
    """Markdown rows of one date: every class with area, largest first, then the total."""
    head = [t("geo_col_class", lang), "m²", "km²", "公顷 ha", "亩 mu", t("geo_col_share", lang)]
    rows = [
        [class_name(table.info(c.code), lang), *_area_cells(c.m2), fmt(c.share, "share")]
        for c in sorted((c for c in d.classes if c.pixels), key=lambda c: (-c.m2, c.code))
    ]
    rows.append([f"**{t('geo_total', lang)}**", *_area_cells(d.valid_m2), fmt(1.0 if d.valid_m2 else 0.0, "share")])
    return _table(head, rows)


def date_label(label: str, lang: str) -> str:
    return t({"image": "geo_image", "before": "geo_before", "after": "geo_after"}[label], lang)


def change_sections(m, lang: str) -> list[str]:
    c = m.change
    lines: list[str] = []
    if not c.changed_pixels:
        return [t("geo_no_change", lang)]
    share = c.changed_m2 / float(c.m2.sum()) if c.m2.sum() else 0.0
    lines.append(
        t("geo_changed", lang, area=f"{fmt(all_units(c.changed_m2)['ha'], 'ha')} 公顷 ha", share=fmt(share, "share"))
    )
    rows = []
    for r in report.per_class_change(m):
        if r["gain_pixels"] or r["loss_pixels"]:
            rows.append(
                [
                    class_name(m.table.info(r["code"]), lang),
                    fmt(r["before"]["ha"], "ha"),
                    fmt(r["after"]["ha"], "ha"),
                    fmt(r["gain"]["ha"], "ha"),
                    fmt(r["loss"]["ha"], "ha"),
                    fmt_signed(r["net"]["ha"], "ha"),
                    fmt_signed(r["net"]["mu"], "mu"),
                ]
            )
    lines += ["", t("geo_net_heading", lang), ""]
    lines += _table(
        [
            t("geo_col_class", lang),
            t("geo_col_before", lang),
            t("geo_col_after", lang),
            t("geo_col_gain", lang),
            t("geo_col_loss", lang),
            t("geo_col_net", lang),
            t("geo_col_net_mu", lang),
        ],
        rows,
    )
    # change matrix over the classes present on either date
    keep = [i for i in range(len(c.codes)) if c.pixels[i, :].sum() or c.pixels[:, i].sum()]
    short = (lambda code: m.table.info(code).zh) if lang == "zh" else (lambda code: m.table.info(code).en)
    head = [t("geo_matrix_corner", lang), *(short(c.codes[j]) for j in keep)]
    rows = [[short(c.codes[i]), *(fmt(all_units(float(c.m2[i, j]))["ha"], "ha") for j in keep)] for i in keep]
    lines += ["", t("geo_matrix_heading", lang), ""] + _table(head, rows)
    if c.patches:
        lines += ["", t("geo_patches_heading", lang), ""]
        for rank, p in enumerate(c.patches[:NUMBERED], 1):
            a, b = m.table.info(p.from_code), m.table.info(p.to_code)
            pair = f"{a.zh}→{b.zh} {a.en}→{b.en}" if lang == "zh" else f"{a.en}→{b.en} {a.zh}→{b.zh}"
            at = (
                f"{p.lonlat[0]:.4f}E {p.lonlat[1]:.4f}N" if p.lonlat else f"x={p.centroid[0]:.0f} y={p.centroid[1]:.0f}"
            )
            u = all_units(p.m2)
            lines.append(
                t(
                    "geo_patch_line",
                    lang,
                    rank=rank,
                    pair=pair,
                    ha=fmt(u["ha"], "ha"),
                    mu=fmt(u["mu"], "mu"),
                    px=p.pixels,
                    at=at,
                )
            )
    return lines


def measurement_markdown(m, inputs: dict, lang: str) -> str:
    """The panel text of a measurement. ``inputs``: ``{"order": [(label, name), …], "how": key,
    "classes": [names] (uploaded class rasters, may be empty)}``."""
    meth = report.method(m)
    names = " → ".join(f"{date_label(lab, lang)} `{name}`" for lab, name in inputs["order"])
    if len(inputs["order"]) == 2:
        names += f"（{t(inputs['how'], lang)}）" if lang == "zh" else f" ({t(inputs['how'], lang)})"
    lines = [
        t("geo_inputs", lang, inputs=names),
        "",
        t("geo_grid", lang, crs=m.crs_text() or "-", pixel=meth["pixel_size"], width=m.shape[1], height=m.shape[0]),
        "",
    ]
    if m.current.source == "supplied":
        files = "、".join(f"`{n}`" for n in inputs["classes"]) if inputs["classes"] else "-"
        lines.append(t("geo_classes_supplied", lang, files=files, table=m.table.name))
    else:
        lines.append(t("geo_classes_derived", lang))
    for d in filter(None, (m.current, m.before)):  # the later date first: it is what the map shows
        lines += ["", t("geo_areas_heading", lang, date=date_label(d.label, lang)), ""] + areas_table(d, m.table, lang)
        zero = [class_name(m.table.info(c.code), lang) for c in d.classes if not c.pixels and c.code in m.table.classes]
        if zero:
            lines += ["", t("geo_zero_classes", lang, names="、".join(zero) if lang == "zh" else ", ".join(zero))]
    if m.change is not None:
        lines += [""] + change_sections(m, lang)
    unc = report.uncertainty(m)
    lines += [
        "",
        t("geo_method_heading", lang),
        "",
        "- " + t("geo_method", lang, text=meth[lang]),
        "- " + t("geo_uncertainty", lang, text=unc[lang]),
    ]
    lines += ["- " + t("geo_note", lang, text=n[lang]) for n in m.notes]
    return "\n".join(lines)


def map_markdown(summary: dict, lang: str) -> str:
    a = summary["answers"]
    how = t(
        "geo_map_how_choice"
        if summary.get("engine_requests", {}).get("choice_logprobs")
        and not summary.get("engine_requests", {}).get("generate")
        else "geo_map_how_text",
        lang,
    )
    g = summary["grid"]
    return "\n".join(
        [
            t("geo_map_heading", lang),
            "",
            t(
                "geo_map_summary",
                lang,
                question=summary["question"],
                tiles=summary["tiles"],
                tile=g["tile"],
                overlap=g["overlap"],
                yes=a["yes"],
                no=a["no"],
                unknown=a["unknown"],
                nodata=summary["nodata"],
                flagged=summary["flagged"],
                how=how,
            ),
            "",
            f"*{t('geo_map_warning', lang)}*",
        ]
    )


# ------------------------------------------------------------------------------------------- preview
def _scale(width: int, height: int, max_side: int) -> float:
    return max_side / max(width, height)


def render_preview(
    raster, out, patches=(), transform=None, flags_geojson=None, max_side: int = 768, number: int = NUMBERED
) -> dict:
    """Write the preview PNG ``out`` (see the module docstring); returns ``{"width", "height",
    "outlined", "flagged"}``. ``patches``: :class:`geovl.geo.change.Patch` list in the raster CRS of
    ``transform``; ``flags_geojson``: the GeoJSON written by :func:`geovl.geo.mapper.map_raster`."""
    import rasterio
    from PIL import Image, ImageDraw, ImageFont

    from ..geo.tiles import read_rgb, render_spec

    with rasterio.open(raster) as ds:
        w0, h0 = ds.width, ds.height
        s = _scale(w0, h0, max_side)
        w, h = max(1, round(w0 * s)), max(1, round(h0 * s))
        spec = render_spec(ds.count, ds.descriptions, colorinterp=ds.colorinterp)
        read_shape = (h, w) if s < 1 else None  # decimated read for large rasters, full read for small ones
        rgb, _ = read_rgb(ds, spec, out_shape=read_shape)
        inv = ~(transform if transform is not None else ds.transform)
    img = Image.fromarray(rgb, mode="RGB")
    if img.size != (w, h):
        img = img.resize((w, h), Image.Resampling.NEAREST)
    img = img.convert("RGBA")
    overlay = Image.new("RGBA", img.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    flagged = 0
    if flags_geojson is not None:
        feats = json.loads(Path(flags_geojson).read_text(encoding="utf-8"))["features"]
        boxes = []
        for f in feats:
            p = f["properties"]
            x, y, ww, hh = p["x_off"], p["y_off"], p["width_px"], p["height_px"]
            boxes.append((x * s, y * s, (x + ww) * s - 1, (y + hh) * s - 1))
        for b in boxes:
            draw.rectangle(b, fill=(*FLAG_RGB, 60))
        for b in boxes:
            draw.rectangle(b, outline=(*FLAG_RGB, 255), width=2)
        flagged = len(boxes)
    line = max(1, min(3, round(s)))
    outlined = list(patches)[:MAX_OUTLINED]
    for p in outlined:
        for ring in p.geometry["coordinates"]:
            pts = [tuple(v * s for v in inv @ (float(x), float(y))) for x, y in ring]
            draw.line(pts + pts[:1], fill=(*PATCH_RGB, 255), width=line)
    if outlined and number:
        font = ImageFont.load_default(size=max(12, min(28, round(max(w, h) / 28))))
        for rank, p in enumerate(outlined[:number], 1):
            cx, cy = (v * s for v in inv @ p.centroid)
            draw.text(
                (cx, cy),
                str(rank),
                fill=(255, 255, 255, 255),
                font=font,
                anchor="mm",
                stroke_width=2,
                stroke_fill=(0, 0, 0, 255),
            )
    img = Image.alpha_composite(img, overlay).convert("RGB")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    img.save(out, format="PNG")
    return {"width": w, "height": h, "outlined": len(outlined), "flagged": flagged}
