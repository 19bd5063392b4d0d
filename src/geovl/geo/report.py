"""Text forms of a :class:`~.measure.Measurement`: JSON, a bilingual table, and a compact context.

``context_text(m, lang)`` is a FIXED form meant for a model's context (``geovl ask``), one fact per
line, numbers printed as in :mod:`.units` (km² 4 decimals, 公顷 2, 亩 1, shares 1 decimal %)::

    [geovl measure] <method: class source, table, area formula, ellipsoid ratio>; CRS <crs>
    <date> (<whole raster | AOI path>): valid <area>, <n> px, nodata <n> px     per date (before first)
    <date> classes: <class> <area> <share>; …                                   largest class first
    <date> classes with zero area: <class>, …                                   classes of the table absent here
    change before→after: changed <area>                                         two dates only, from here on
    per class: <class>: gain <area>, loss <area>, net <±area>; …                classes that changed
    transitions: <from>→<to> <area>; …                                          up to 8, largest first
    largest patches: <from>→<to> <area> at <lon>E <lat>N; …                     up to 5
    uncertainty: <accuracy statement with sources>

``<area>`` is ``<km²> km² (<ha> ha)`` in English and ``<km²>平方公里（<ha>公顷，<mu>亩）`` in Chinese;
the Chinese form (``lang="zh"``) has the same lines with Chinese labels.
"""

from __future__ import annotations

import unicodedata

from .indices import LIMITATIONS
from .units import ACCURACY_SOURCES, CLASS_ACCURACY, CLASS_ACCURACY_NAMES, PRODUCT_ACCURACY, all_units, fmt, fmt_signed

SCHEMA = "geovl.measure/1"


def method(m) -> dict:
    a = m.areas
    px = a.pixel_area_m2()
    t = m.transform
    if a.method == "pixel-size":
        size = f"{px:g} m²"
    elif t.b or t.d:
        size = "rotated grid"
    else:
        unit = (
            "°" if m.crs is not None and m.crs.is_geographic else f" {m.crs.linear_units}" if m.crs is not None else ""
        )
        size = f"{abs(t.a):g} x {abs(t.e):g}{unit}"
    how = {
        "planar": (
            "pixel count × pixel area |a·e − b·d| of the affine transform in the projected CRS ({px:g} m² per pixel)",
            "像元数 × 像元面积（投影坐标系下仿射变换 |a·e − b·d|，每像元 {px:g} 平方米）",
        ),
        "ellipsoidal": (
            "pixel count × pixel area on the WGS 84 ellipsoid (projection area distortion removed per block)",
            "像元数 × WGS 84 椭球面上的像元面积（按块消除投影面积变形）",
        ),
        "geodesic": (
            "sum of exact per-row cell areas on the ellipsoid (geographic CRS)",
            "按纬度逐行累加椭球面上的精确像元面积（地理坐标系）",
        ),
        "pixel-size": ("pixel count × the given pixel area ({px:g} m²)", "像元数 × 给定像元面积（{px:g} 平方米）"),
    }[a.method]
    src = m.current.source
    cls_en = "classes from a supplied land-cover map" if src == "supplied" else "classes derived from spectral indices"
    cls_zh = "地类来自提供的土地覆盖分类图" if src == "supplied" else "地类由光谱指数推导"
    en = f"{cls_en} (table: {m.table.name}); area = {how[0].format(px=px or 0)}"
    zh = f"{cls_zh}（类别表：{m.table.name}）；面积 = {how[1].format(px=px or 0)}"
    if a.ratio is not None and a.method == "planar":
        en += f"; ellipsoid/planar area ratio {a.ratio:.5f}"
        zh += f"；椭球面积/平面面积 = {a.ratio:.5f}"
    return {"en": en, "zh": zh, "pixel_size": size}


def uncertainty(m) -> dict:
    t = m.table
    sources = ["olofsson2014"]
    if t.kind == "truth":
        en = (
            "The class maps are the exact ground truth of geovl synthetic scenes, so the areas are exact "
            "(pixel count × pixel area); real land-cover maps carry classification errors."
        )
        zh = "地类图为 geovl 合成场景的精确真值，面积精确（像元数×像元面积）；真实土地覆盖图存在分类误差。"
        sources = []
    else:
        prod = PRODUCT_ACCURACY.get(t.name, PRODUCT_ACCURACY["generic"])
        sources = list(prod["sources"]) + sources
        if t.kind == "derived":
            en, zh = (
                LIMITATIONS["en"] + " For comparison, " + prod["en"] + ".",
                LIMITATIONS["zh"] + "作为参照，" + prod["zh"] + "。",
            )
        else:
            en, zh = f"Map accuracy: {prod['en']}.", f"分类图精度：{prod['zh']}。"
            keys = sorted(
                {c.accuracy_key for c in t.classes.values() if c.accuracy_key in CLASS_ACCURACY},
                key=lambda k: -CLASS_ACCURACY[k],
            )
            if keys:
                lst = ", ".join(f"{CLASS_ACCURACY_NAMES[k][0]} {CLASS_ACCURACY[k]}%" for k in keys)
                lst_zh = "、".join(f"{CLASS_ACCURACY_NAMES[k][1]}{CLASS_ACCURACY[k]}%" for k in keys)
                en += f" Class-level reliability of 10 m maps: {lst} (Venter et al. 2022)."
                zh += f"10米产品分类别可靠性：{lst_zh}（Venter et al. 2022）。"
                if "venter2022" not in sources:
                    sources.insert(0, "venter2022")
        en += (
            " Areas counted from a classified map are biased by its errors; unbiased area estimates need a "
            "reference sample (Olofsson et al. 2014)."
        )
        zh += "按分类图像元计数得到的面积会受分类误差影响而有偏；无偏面积估计需要参考样本（Olofsson et al. 2014）。"
        if m.change is not None:
            en += (
                " Change found by comparing two maps compounds the errors of both: part of the 'changes' can be "
                "classification noise — check the largest patches on the imagery."
            )
            zh += "两期分类图对比得到的变化叠加了两期的误差，部分“变化”可能是分类噪声，请在影像上核查最大的变化图斑。"
    return {"en": en, "zh": zh, "sources": [ACCURACY_SOURCES[s] for s in sources]}


def _class_rows(d) -> list:
    return sorted((c for c in d.classes if c.pixels), key=lambda c: (-c.m2, c.code))


def per_class_change(m) -> list[dict]:
    out = []
    for code in m.change.codes:
        g = m.gain_loss(code)
        if g["gain_pixels"] or g["loss_pixels"] or g["before_m2"] or g["after_m2"]:
            out.append(
                {k: g[k] for k in ("code", "key", "en", "zh", "gain_pixels", "loss_pixels")}
                | {k: all_units(g[f"{k}_m2"]) for k in ("before", "after", "gain", "loss", "net")}
            )
    return out


def to_json(m) -> dict:
    t = m.transform
    out = {
        "schema": SCHEMA,
        "inputs": {
            d.label: {"classes": d.classes_path, "image": d.image_path} for d in filter(None, (m.before, m.current))
        }
        | {"aoi": m.aoi.path if m.aoi else None},
        "crs": m.crs_text(),
        "crs_kind": None if m.crs is None else ("geographic" if m.crs.is_geographic else "projected"),
        "grid": {"width": m.shape[1], "height": m.shape[0], "transform": [t.a, t.b, t.c, t.d, t.e, t.f]},
        "area_method": m.areas.to_json(),
        "classes_source": m.current.source,
        "class_table": m.table.to_json(),
        "index_rules": m.rules.to_json() if m.rules else None,
        "aoi": (m.aoi.to_json() | {"area": all_units(m.aoi.area_m2)}) if m.aoi else None,
        "dates": {d.label: d.to_json() for d in filter(None, (m.before, m.current))},
        "change": None,
        "method": method(m),
        "uncertainty": uncertainty(m),
        "notes": m.notes,
    }
    c = m.change
    if c is not None:
        tr = []
        for a, b, px, m2 in c.transitions():
            ia, ib = m.table.info(a), m.table.info(b)
            tr.append(
                {
                    "from": a,
                    "to": b,
                    "from_key": ia.key,
                    "to_key": ib.key,
                    "from_en": ia.en,
                    "to_en": ib.en,
                    "from_zh": ia.zh,
                    "to_zh": ib.zh,
                    "pixels": px,
                    **all_units(m2),
                }
            )
        out["change"] = {
            "codes": c.codes,
            "matrix_pixels": c.pixels.tolist(),
            "matrix_m2": c.m2.tolist(),
            "common_pixels": c.common_pixels,
            "changed_pixels": c.changed_pixels,
            "changed_area": all_units(c.changed_m2),
            "transitions": tr,
            "per_class": per_class_change(m),
            "patches": {
                "total": c.patches_total,
                "written": len(c.patches),
                "connectivity": 4,
                "largest": [_patch_json(m, p) for p in c.patches[:10]],
            },
        }
    return out


def _patch_json(m, p) -> dict:
    out = {
        "from": p.from_code,
        "to": p.to_code,
        "from_key": m.table.info(p.from_code).key,
        "to_key": m.table.info(p.to_code).key,
        "pixels": p.pixels,
        **all_units(p.m2),
        "centroid": list(p.centroid),
    }
    if p.lonlat:
        out["lonlat"] = list(p.lonlat)
    return out


# ---------------------------------------------------------------------------------------------- text
def _w(s: str) -> int:
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in s)


def _pad(s: str, width: int, right: bool = False) -> str:
    fill = " " * max(0, width - _w(s))
    return fill + s if right else s + fill


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(_w(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(_pad(c, widths[i], i > 0) for i, c in enumerate(r)) for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _name(info) -> str:
    return f"{info.zh} {info.en}" if info.zh != info.en else info.en


def _area_cells(m2: float, signed: bool = False) -> list[str]:
    u = all_units(m2)
    f = fmt_signed if signed else fmt
    return [f(u[k], k) for k in ("m2", "km2", "ha", "mu")]


UNIT_HEAD = ["m²", "km² 平方公里", "公顷 ha", "亩 mu"]


def text_table(m, top: int = 10) -> str:
    meth = method(m)
    lines = ["geovl measure — 土地覆盖面积量算 / land-cover area measurement", ""]
    lines.append(
        f"坐标系 CRS: {m.crs_text() or '无 none'}    像元 pixel: {meth['pixel_size']}    网格 grid: {m.shape[1]} x {m.shape[0]}"
    )
    lines.append(f"方法 method: {meth['zh']}")
    lines.append(f"        {meth['en']}")
    if m.aoi:
        lines.append(
            f"范围 AOI: {m.aoi.path} ({m.aoi.to_json()['pixels']} px, {fmt(all_units(m.aoi.area_m2)['km2'], 'km2')} km²)"
        )
    for d in filter(None, (m.before, m.current)):
        title = {"image": "影像 image", "before": "前时相 before", "after": "后时相 after"}[d.label]
        src = f"{d.classes_path}" + (
            f" (image {d.image_path})" if d.image_path and d.image_path != d.classes_path else ""
        )
        lines += [
            "",
            f"[{title}] {src}",
            f"有效 valid: {d.valid_pixels} px = {fmt(all_units(d.valid_m2)['km2'], 'km2')} km²;  无数据 nodata: {d.nodata_pixels} px",
        ]
        rows = [
            [f"{c.code}", _name(c), str(c.pixels), *_area_cells(c.m2), fmt(c.share, "share")] for c in _class_rows(d)
        ]
        rows.append(
            ["", "合计 total", str(d.valid_pixels), *_area_cells(d.valid_m2), fmt(1.0 if d.valid_m2 else 0.0, "share")]
        )
        lines.append(_table(["code", "类别 class", "像元 px", *UNIT_HEAD, "占比 share"], rows))
    c = m.change
    if c is not None:
        head = (
            f"[变化 change before → after] 变化面积 changed: {c.changed_pixels} px = "
            f"{fmt(all_units(c.changed_m2)['km2'], 'km2')} km² (of {c.common_pixels} px valid on both dates)"
        )
        lines += ["", head]
        rows = [
            [f"{_name(m.table.info(a))} → {_name(m.table.info(b))}", str(px), *_area_cells(m2)]
            for a, b, px, m2 in c.transitions()
        ]
        if rows:
            lines.append(_table(["从 from → 到 to", "像元 px", *UNIT_HEAD], rows))
        lines += ["", "[各类净变化 net change per class] (km²; 亩 mu)"]
        rows = []
        for r in per_class_change(m):
            if r["gain_pixels"] or r["loss_pixels"]:
                rows.append(
                    [
                        _name(m.table.info(r["code"])),
                        fmt(r["before"]["km2"], "km2"),
                        fmt(r["after"]["km2"], "km2"),
                        fmt(r["gain"]["km2"], "km2"),
                        fmt(r["loss"]["km2"], "km2"),
                        fmt_signed(r["net"]["km2"], "km2"),
                        fmt_signed(r["net"]["mu"], "mu"),
                    ]
                )
        lines.append(
            _table(["类别 class", "前 before", "后 after", "新增 gain", "减少 loss", "净 net", "净 net 亩"], rows)
            if rows
            else "无变化 no change"
        )
        if c.patches:
            lines += ["", f"[最大变化图斑 largest change patches] {min(top, len(c.patches))} of {c.patches_total}"]
            rows = []
            for i, p in enumerate(c.patches[:top], 1):
                where = (
                    f"{p.lonlat[0]:.5f}E {p.lonlat[1]:.5f}N"
                    if p.lonlat
                    else f"x={p.centroid[0]:.1f} y={p.centroid[1]:.1f}"
                )
                u = all_units(p.m2)
                a, b = m.table.info(p.from_code), m.table.info(p.to_code)
                pair = f"{a.zh}→{b.zh} {a.en}→{b.en}"
                rows.append([str(i), pair, str(p.pixels), fmt(u["ha"], "ha"), fmt(u["mu"], "mu"), where])
            lines.append(_table(["#", "从→到 from→to", "像元 px", "公顷 ha", "亩 mu", "中心 centre"], rows))
    unc = uncertainty(m)
    lines += ["", f"精度说明: {unc['zh']}", f"Uncertainty: {unc['en']}"]
    lines += [f"  - {s}" for s in unc["sources"]]
    for n in m.notes:
        lines.append(f"注 note: {n['zh']}" + (f" / {n['en']}" if n["en"] != n["zh"] else ""))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- context
def _ctx_area(m2: float, lang: str, signed: bool = False) -> str:
    u = all_units(m2)
    f = fmt_signed if signed else fmt
    if lang == "zh":
        return f"{f(u['km2'], 'km2')}平方公里（{f(u['ha'], 'ha')}公顷，{f(u['mu'], 'mu')}亩）"
    return f"{f(u['km2'], 'km2')} km² ({f(u['ha'], 'ha')} ha)"


def context_text(m, lang: str = "zh") -> str:
    zh = lang == "zh"
    sep = "；" if zh else "; "
    meth = method(m)
    name = (lambda code: m.table.info(code).zh) if zh else (lambda code: m.table.info(code).en)
    lines = [
        f"[geovl measure] {meth['zh' if zh else 'en']}"
        + (f"{sep}坐标系 " if zh else f"{sep}CRS ")
        + (m.crs_text() or "none")
    ]
    extent = f"AOI {m.aoi.path}" if m.aoi else ("全幅" if zh else "whole raster")
    for d in filter(None, (m.before, m.current)):
        label = {
            "image": "影像" if zh else "image",
            "before": "前时相" if zh else "before",
            "after": "后时相" if zh else "after",
        }[d.label]
        head = (
            f"{label}（{extent}）有效面积 {_ctx_area(d.valid_m2, lang)}，{d.valid_pixels} 像元，无数据 {d.nodata_pixels} 像元"
            if zh
            else f"{label} ({extent}): valid {_ctx_area(d.valid_m2, lang)}, {d.valid_pixels} px, nodata {d.nodata_pixels} px"
        )
        items = [f"{name(c.code)} {_ctx_area(c.m2, lang)} {fmt(c.share, 'share')}" for c in _class_rows(d)]
        lines += [head, (f"{label}各类：" if zh else f"{label} classes: ") + sep.join(items)]
        zero = [name(c.code) for c in d.classes if not c.pixels and c.code in m.table.classes]
        if zero:
            lines.append(
                f"{label}面积为0的类别：" + "、".join(zero)
                if zh
                else f"{label} classes with zero area: " + ", ".join(zero)
            )
    c = m.change
    if c is not None:
        lines.append(
            ("变化（前→后）：变化总面积 " if zh else "change before→after: changed ") + _ctx_area(c.changed_m2, lang)
        )
        items = []
        for r in per_class_change(m):
            if r["gain_pixels"] or r["loss_pixels"]:
                g, lo, n = (_ctx_area(r[k]["m2"], lang, k == "net") for k in ("gain", "loss", "net"))
                items.append(
                    f"{name(r['code'])} 新增 {g}，减少 {lo}，净变化 {n}"
                    if zh
                    else f"{name(r['code'])}: gain {g}, loss {lo}, net {n}"
                )
        lines.append(("各类变化：" if zh else "per class: ") + (sep.join(items) or ("无" if zh else "none")))
        tr = [f"{name(a)}→{name(b)} {_ctx_area(m2, lang)}" for a, b, _, m2 in c.transitions()[:8]]
        lines.append(("主要转移：" if zh else "transitions: ") + (sep.join(tr) or ("无" if zh else "none")))
        ps = []
        for p in c.patches[:5]:
            at = (
                f"{p.lonlat[0]:.4f}E {p.lonlat[1]:.4f}N" if p.lonlat else f"x={p.centroid[0]:.0f} y={p.centroid[1]:.0f}"
            )
            ps.append(f"{name(p.from_code)}→{name(p.to_code)} {_ctx_area(p.m2, lang)} {'位于' if zh else 'at'} {at}")
        if ps:
            lines.append(("最大变化图斑：" if zh else "largest patches: ") + sep.join(ps))
    unc = uncertainty(m)
    lines.append(("精度说明：" if zh else "uncertainty: ") + unc["zh" if zh else "en"])
    return "\n".join(lines)
