"""Tiled inference over rasters larger than memory (``geovl map``): one yes/no question per tile.

How it works:

1. The raster is cut into overlapping windows (:class:`~geovl.geo.tiles.TileGrid`: ``tile`` px,
   step ``tile − overlap``) and each window is read on its own (rasterio windowed reads; the raster
   is never read whole; :mod:`geovl.imagery.tiles`, clip edge rule) and rendered to RGB exactly as
   :mod:`geovl.geo.tiles` documents (the model's preprocessing config; true colour for 4+ band
   rasters), padded to ``tile × tile``.
2. Windows whose pixels are all nodata (dataset mask) are skipped and recorded as ``nodata``.
3. The others go through the engine in batches of ``batch_size`` (``engine.generate`` with one
   :class:`~geovl.inference.engine.ChatRequest` per tile: the image, then the question). The answer is
   read as yes / no / unknown (:func:`geovl.evaluate.normalize.parse_yes_no`). ``P(yes)`` comes
   from ``engine.choice_logprobs`` over the candidates 是/否 (Chinese question) or yes/no when the
   engine is local, else from the answer (1 / 0, none when unknown). With
   ``answer_from="choice"`` (local engines) the answer IS the more probable candidate and no text
   is generated.
4. Every finished tile is appended to the sidecar ``<out stem>.tiles.jsonl`` (first line: a header
   with the raster size, transform, CRS, tile, overlap, question, rendering and engine). ``resume``
   skips the tiles already there (a header that does not match is refused; the one resume rule of
   :class:`geovl.imagery.tiles.TileJournal`).
5. Outputs, rebuilt from the sidecar:

   - ``out`` GeoTIFF, float32, 2 bands, one pixel per tile: band 1 answer code (1 yes, 0 no,
     255 unknown), band 2 P(yes); NaN (nodata) for skipped tiles. CRS = the raster's; transform =
     the raster's transform × ``Affine.scale(stride)``, so pixel (r, c) has its top-left corner at
     the top-left corner of tile (r, c) and is one stride wide (the tile itself extends
     ``overlap`` pixels further into its right/bottom neighbours).
   - ``geojson`` (optional): RFC 7946 FeatureCollection of the flagged tiles (answer == ``flag_if``),
     each the outline of the tile's window reprojected to WGS 84 longitude/latitude (8 points per
     edge, exterior ring counter-clockwise), with properties row, col, x_off, y_off, width_px,
     height_px, answer, code, p_yes, probability (of the flagged answer), question, label; the
     raster CRS is named in the ``geovl`` member.
   - ``geoparquet`` (optional): the same features as GeoParquet 1.1 in the raster CRS (the exact
     window corners; CRS as PROJJSON).
   - ``png`` (optional): the raster downsampled (longest side ``png_size``), flagged tiles tinted
     and outlined in red.
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..fileio import atomic_path, write_text
from ..imagery.tiles import TileJournal, TilingError, window_list
from ..inference.capabilities import can_score_choices, input_spec
from .errors import MeasureError

CODES = {"yes": 1, "no": 0, "unknown": 255}
CANDIDATES = {"zh": ["是", "否"], "en": ["yes", "no"]}
SIDECAR_SUFFIX = ".tiles.jsonl"
SCHEMA = "geovl.map/1"
FLAG_COLUMNS = (
    "row",
    "col",
    "x_off",
    "y_off",
    "width_px",
    "height_px",
    "answer",
    "code",
    "p_yes",
    "probability",
    "question",
    "label",
)
COMPAT_KEYS = (
    "width",
    "height",
    "count",
    "crs",
    "transform",
    "tile",
    "overlap",
    "question",
    "render",
    "answer_from",
    "engine",
)


class MapError(MeasureError):
    """Bad input or an output that cannot be written; the message names the file."""


@dataclass
class MapOptions:
    tile: int = 224
    overlap: int = 32
    batch_size: int = 8
    bands: object = None  # band order "blue,green,red,nir" for rendering
    flag_if: str = "yes"
    answer_from: str = "text"  # "text" (generate) or "choice" (local engines: forced choice)
    label: str | None = None
    geojson: object = None
    geoparquet: object = None
    png: object = None
    png_size: int = 1024
    resume: bool = False
    overwrite: bool = False
    progress: bool = True
    params: object = None  # GenerationParams


def sidecar_path(out) -> Path:
    out = Path(out)
    return out.with_name(out.stem + SIDECAR_SUFFIX)


def answer_code(text: str) -> int:
    from ..evaluate.normalize import parse_yes_no

    v = parse_yes_no(text)
    return CODES["unknown"] if v is None else CODES["yes"] if v else CODES["no"]


def _p_yes(lps: list[float]) -> float:
    a, b = lps
    m = max(a, b)
    ea, eb = math.exp(a - m), math.exp(b - m)
    return ea / (ea + eb)


# ------------------------------------------------------------------------------------------- sidecar
def _journal(side: Path, header: dict):
    return TileJournal(side, header, COMPAT_KEYS)


# --------------------------------------------------------------------------------------------- main
def map_raster(engine, raster, question: str, out, **options) -> dict:
    """Ask ``question`` about every tile of ``raster`` with ``engine``; write ``out`` (GeoTIFF) and
    optionally ``geojson``/``png`` (see the module docstring). Returns a summary dict with exact
    counts: tiles, done_before (resumed), run (this call), nodata, answers, flagged, engine requests."""
    import rasterio
    from rasterio.errors import RasterioIOError
    from tqdm import tqdm

    from ..inference.engine import GenerationParams
    from .ask import detect_lang
    from .tiles import TileGrid, png_bytes, read_rgb, render_spec

    o = MapOptions(**options)
    question = (question or "").strip()
    if not question:
        raise MapError("the question is empty")
    if o.flag_if not in ("yes", "no"):
        raise MapError(f"--flag-if must be yes or no, got {o.flag_if!r}")
    if o.answer_from not in ("text", "choice"):
        raise MapError(f"answer_from must be text or choice, got {o.answer_from!r}")
    has_lp = can_score_choices(engine)
    if o.answer_from == "choice" and not has_lp:
        raise MapError("--answer-from choice needs a local model (--model): a remote server gives no log-probabilities")
    if o.batch_size < 1 or o.png_size < 16:
        raise MapError("--batch-size must be >= 1 and --png-size >= 16")
    out = Path(out)
    if out.suffix.lower() not in (".tif", ".tiff"):
        raise MapError(f"{out}: the flags map is a GeoTIFF — name it .tif")
    params = o.params or GenerationParams(max_new_tokens=8)
    lang = detect_lang(question)
    cands = CANDIDATES[lang]
    side = sidecar_path(out)
    outputs = [p for p in (out, side, o.geojson, o.geoparquet, o.png) if p is not None]
    if not o.resume and not o.overwrite and (clash := [str(p) for p in outputs if Path(p).exists()]):
        raise MapError(
            f"{', '.join(clash)} already exist: pass --resume to continue that run or --overwrite to start again"
        )
    remote = str(raster).startswith(("/vsi", "http://", "https://", "s3://"))  # e.g. a cloud-optimised GeoTIFF
    if not remote and not os.path.isfile(raster):
        raise MapError(f"{raster}: file not found")
    try:
        ds = rasterio.open(raster)
    except (RasterioIOError, OSError) as e:
        raise MapError(f"{raster}: not a readable raster ({e})") from None
    with ds:
        if ds.crs is None:
            raise MapError(
                f"{raster}: has no CRS (not georeferenced) — a flags map must be placed on the ground; "
                "assign one, e.g. gdal_edit.py -a_srs EPSG:32650 FILE"
            )
        grid = TileGrid(ds.width, ds.height, o.tile, o.overlap)
        spec = render_spec(ds.count, ds.descriptions, input_spec(engine).preprocess, o.bands, ds.colorinterp)
        t = ds.transform
        header = {
            "schema": SCHEMA,
            "raster": str(Path(raster).resolve()),
            "width": ds.width,
            "height": ds.height,
            "count": ds.count,
            "crs": ds.crs.to_wkt(),
            "transform": [t.a, t.b, t.c, t.d, t.e, t.f],
            "tile": o.tile,
            "overlap": o.overlap,
            "question": question,
            "render": spec.to_json(),
            "answer_from": o.answer_from,
            "engine": getattr(engine, "name", type(engine).__name__),
            "candidates": cands,
        }
        try:
            done, journal = _journal(side, header).open(o.resume)
        except TilingError as e:
            raise MapError(str(e)) from None
        done_before = len(done)
        counts = {"generate": 0, "choice_logprobs": 0}
        run_now = 0
        with (
            journal as f,
            tqdm(
                total=grid.count,
                initial=done_before,
                desc="map tiles",
                unit="tile",
                file=sys.stderr,
                disable=not o.progress,
            ) as bar,
        ):

            def emit(rec):
                done[(rec["row"], rec["col"])] = rec
                f.write(rec)

            batch: list = []

            def flush_batch():
                nonlocal run_now
                if not batch:
                    return
                for rec in _answer_batch(engine, batch, question, cands, o.answer_from, has_lp, params, counts):
                    emit(rec)
                f.flush()
                run_now += len(batch)
                bar.update(len(batch))
                batch.clear()

            for r, c in grid:
                if (r, c) in done:
                    continue
                win = grid.window(r, c)
                rgb, valid = read_rgb(ds, spec, win)
                if not valid.any():
                    emit({"row": r, "col": c, "window": window_list(win), "status": "nodata"})
                    f.flush()
                    bar.update(1)
                    continue
                batch.append((r, c, win, png_bytes(rgb, pad_to=o.tile), float(valid.mean())))
                if len(batch) >= o.batch_size:
                    flush_batch()
            flush_batch()
        summary = _write_outputs(ds, grid, spec, done, out, o, question, header)
    nodata = sum(1 for rec in done.values() if rec["status"] == "nodata")
    return summary | {
        "raster": str(raster),
        "sidecar": str(side),
        "tiles": grid.count,
        "done_before": done_before,
        "run": run_now,
        "nodata": nodata,
        "engine": header["engine"],
        "engine_requests": counts,
    }


def _answer_batch(engine, batch, question, cands, answer_from, has_lp, params, counts) -> list[dict]:
    from ..data.schema import user_turn
    from ..inference.engine import ChatRequest

    reqs = [ChatRequest([user_turn(question, 1)], [png]) for _, _, _, png, _ in batch]
    lps = None
    if answer_from == "choice":
        lps = engine.choice_logprobs(reqs, [list(cands)] * len(reqs))
        counts["choice_logprobs"] += len(reqs)
        answers = [cands[0] if lp[0] >= lp[1] else cands[1] for lp in lps]
    else:
        answers = engine.generate(reqs, params)
        counts["generate"] += len(reqs)
        if has_lp:
            lps = engine.choice_logprobs(reqs, [list(cands)] * len(reqs))
            counts["choice_logprobs"] += len(reqs)
    out = []
    for i, (r, c, win, _, frac) in enumerate(batch):
        text = (answers[i] or "").strip()
        code = answer_code(text)
        if lps is not None:
            p, src = _p_yes(lps[i]), "choice_logprobs"
        else:
            p, src = {1: 1.0, 0: 0.0}.get(code), "answer"
        out.append(
            {
                "row": r,
                "col": c,
                "window": window_list(win),
                "status": "answered",
                "answer": text,
                "code": code,
                "p_yes": p,
                "p_source": src,
                "valid_fraction": round(frac, 6),
            }
        )
    return out


# -------------------------------------------------------------------------------------------- outputs
COG_BLOCK = 256


def write_cog(path, data: np.ndarray, crs, transform, descriptions=(), tags=None) -> None:
    """A float32 (bands, H, W) array as a Cloud-Optimized GeoTIFF (GDAL's COG driver: internal 256 × 256
    tiles, deflate, nearest-neighbour overviews down to one tile, NaN nodata)."""
    import rasterio

    profile = dict(
        driver="COG",
        width=data.shape[2],
        height=data.shape[1],
        count=data.shape[0],
        dtype="float32",
        crs=crs,
        transform=transform,
        nodata=float("nan"),
        compress="deflate",
        blocksize=COG_BLOCK,
        overview_resampling="nearest",
    )
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data.astype(np.float32))
        for i, d in enumerate(descriptions, 1):
            dst.set_band_description(i, d)
        if tags:
            dst.update_tags(**tags)


def _write_outputs(ds, grid, spec, done: dict, out: Path, o: MapOptions, question: str, header: dict) -> dict:

    from .tiles import window_polygon

    code = np.full((grid.n_rows, grid.n_cols), np.nan, np.float32)
    prob = np.full((grid.n_rows, grid.n_cols), np.nan, np.float32)
    answers = {"yes": 0, "no": 0, "unknown": 0}
    names = {v: k for k, v in CODES.items()}
    flag_code = CODES[o.flag_if]
    flagged = []
    for (r, c), rec in sorted(done.items()):
        if rec["status"] != "answered":
            continue
        code[r, c] = rec["code"]
        if rec.get("p_yes") is not None:
            prob[r, c] = rec["p_yes"]
        answers[names[rec["code"]]] += 1
        if rec["code"] == flag_code:
            flagged.append(rec)
    tr = grid.out_transform(ds.transform)
    with atomic_path(out) as tmp:
        write_cog(
            tmp,
            np.stack([code, prob]),
            ds.crs,
            tr,
            ["answer code: 1 yes, 0 no, 255 unknown (nodata: tile skipped)", "P(yes)"],
            dict(
                geovl_question=question,
                geovl_tile=str(grid.tile),
                geovl_overlap=str(grid.overlap),
                geovl_stride=str(grid.stride),
                geovl_source=header["raster"],
                geovl_engine=header["engine"],
            ),
        )
    written = [str(out)]

    label = o.label or question
    if o.geojson is not None or o.geoparquet is not None:
        from .detect import DENSIFY, ccw_closed, pixel_ring, to_wgs84, write_geoparquet

        feats, rings, props = [], [], []
        for rec in flagged:
            p = rec.get("p_yes")
            prob_flag = None if p is None else (p if o.flag_if == "yes" else 1.0 - p)
            x, y, w, h = rec["window"]
            props.append(
                {
                    "row": rec["row"],
                    "col": rec["col"],
                    "x_off": x,
                    "y_off": y,
                    "width_px": w,
                    "height_px": h,
                    "answer": rec["answer"],
                    "code": rec["code"],
                    "p_yes": p,
                    "probability": prob_flag,
                    "question": question,
                    "label": label,
                }
            )
            rings.append(window_polygon(ds.transform, rec["window"])["coordinates"][0])
            lonlat = ccw_closed(to_wgs84(ds.crs, pixel_ring(ds.transform, (x, y, x + w, y + h), DENSIFY)))
            feats.append(
                {
                    "type": "Feature",
                    "id": rec["row"] * grid.n_cols + rec["col"],
                    "properties": props[-1],
                    "geometry": {"type": "Polygon", "coordinates": [lonlat]},
                }
            )
        if o.geojson is not None:
            fc = {
                "type": "FeatureCollection",
                "name": "geovl_flags",
                "geovl": {
                    "coordinates": "WGS 84 longitude/latitude (RFC 7946)",
                    "crs": ds.crs.to_string(),
                    "question": question,
                    "label": label,
                    "flag_if": o.flag_if,
                    "grid": grid.to_json(),
                    "flagged": len(flagged),
                    "answers": answers,
                },
                "features": feats,
            }
            gj = Path(o.geojson)
            write_text(gj, json.dumps(fc, ensure_ascii=False) + "\n")
            written.append(str(gj))
        if o.geoparquet is not None:
            gp = Path(o.geoparquet)
            gp.parent.mkdir(parents=True, exist_ok=True)
            write_geoparquet(gp, rings, props, ds.crs, columns=FLAG_COLUMNS)
            written.append(str(gp))
    if o.png is not None:
        _overview(ds, grid, spec, flagged, Path(o.png), o.png_size)
        written.append(str(o.png))
    return {
        "out": str(out),
        "written": written,
        "grid": grid.to_json(),
        "render": spec.to_json(),
        "answers": answers,
        "flagged": len(flagged),
        "flag_if": o.flag_if,
        "crs": ds.crs.to_string(),
        "out_transform": [tr.a, tr.b, tr.c, tr.d, tr.e, tr.f],
    }


def _overview(ds, grid, spec, flagged: list, path: Path, size: int) -> None:
    from PIL import Image, ImageDraw

    from .tiles import read_rgb

    scale = min(1.0, size / max(ds.width, ds.height))
    h, w = max(1, round(ds.height * scale)), max(1, round(ds.width * scale))
    rgb, _ = read_rgb(ds, spec, out_shape=(h, w) if (h, w) != (ds.height, ds.width) else None)
    img = Image.fromarray(rgb, mode="RGB").convert("RGBA")
    overlay = Image.new("RGBA", img.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    sx, sy = w / ds.width, h / ds.height
    boxes = [(x * sx, y * sy, (x + ww) * sx - 1, (y + hh) * sy - 1) for x, y, ww, hh in (r["window"] for r in flagged)]
    for b in boxes:  # a light red tint over flagged ground, then the tile outlines
        draw.rectangle(b, fill=(255, 0, 0, 56))
    for b in boxes:
        draw.rectangle(b, outline=(255, 0, 0, 255), width=2)
    img = Image.alpha_composite(img, overlay).convert("RGB")
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
