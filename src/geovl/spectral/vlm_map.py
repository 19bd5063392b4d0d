"""``geovl spectral vlm-map``: a mineralisation-probability map from a spectral VLM, window by window.

How it works:

1. **Window grid** (:func:`window_grid`, :class:`geovl.imagery.tiles.TileGrid` with its ``shift`` edge
   rule): ``tile × tile`` windows whose top-left corners step by ``tile − overlap``; along each axis
   the last window is moved back so that it ends exactly at the cube's edge (so every window but
   those of a cube smaller than a tile is a full tile, and every pixel is covered). A cube smaller
   than a tile along an axis gets one window of the cube's size. Windows are rasterio ``Window`` objects.
2. Each window is read on its own (:meth:`~geovl.spectral.cube.Cube.read_float`: float32
   reflectance, no-data → NaN; the cube is never read whole). A window without one valid pixel is
   skipped (``skipped_nodata``). Partly no-data windows go to the model (the engine fills no-data
   with the projector's band means) but their no-data pixels stay NaN in the map.
3. The other windows are asked the synthetic-scene probability question
   (:data:`geovl.spectral.synth_write.QUESTIONS` ``["probability"][lang]``) with the window's
   ``(bands, h, w)`` array as the image, in batches of the engine's batch size, greedy, few new
   tokens. The answer's number (:func:`parse_probability`: "0.35", "概率为0.35", "35%") counts when it
   lies in [0, 1]; anything else is ``unparsed`` and not used.
4. **Blending** (:class:`ProbabilityMap`): each answered window adds its value to its valid pixels
   with a weight — 1 everywhere (``blend="mean"``: the plain average of the windows covering a
   pixel) or a taper (``blend="taper"``, default) that ramps linearly from ``1/(overlap+1)`` at the
   window's border to 1 at ``overlap`` pixels inside it, so seams between windows are smooth. A
   pixel's value is Σ w·v / Σ w; NaN where no answered window covers a valid pixel.
5. **Resume** (:class:`geovl.imagery.tiles.TileJournal`, the resume rule of ``geovl map`` too): every
   finished window (its answer, or ``nodata``) is appended to ``<out stem>.windows.jsonl`` after a
   header naming the cube, tiling, question and model. ``resume=True`` (``--resume``) blends the
   windows already there from their recorded answers and asks only the others (a journal of another
   run is refused naming what differs; a torn last line is cut off). The journal is removed once every
   output is written.
6. Outputs (each written whole to a temporary file and renamed, after every window is done; a refused
   run leaves nothing, a failed one only its journal): ``out`` float32 GeoTIFF (the cube's CRS and transform, nodata NaN),
   a PNG preview (yellow → dark red colour ramp over 0–1, no-data grey, longest side at most
   :data:`PREVIEW_MAX` px) and a JSON summary (``out`` with suffix ``.json``).

A model without a spectral projector and a cube whose bands (count, wavelengths within 1 nm) differ
from the projector's are refused before anything is generated or written (the CLI checks the saved
projector, :func:`saved_projector`, before it loads the model).
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np

from ..imagery.tiles import TileGrid, TileJournal, TilingError, axis_starts, check_options, window_list
from . import SpectralError
from .cube import Cube, Window

DEFAULT_TILE = 64
DEFAULT_OVERLAP = 16
MIN_TILE = 8
EDGE = "shift"  # the last window ends flush with the cube's edge (geovl.imagery.tiles)
JOURNAL_SUFFIX = ".windows.jsonl"
SCHEMA = "geovl.vlm-map/1"
COMPAT_KEYS = ("cube", "rows", "cols", "bands", "tile", "overlap", "lang", "question", "max_new_tokens", "engine")
MAX_NEW_TOKENS = 8
BLENDS = ("taper", "mean")
PREVIEW_MAX = 4096  # longest side of the PNG preview (nearest-neighbour decimation beyond)
NODATA_RGB = (128, 128, 128)
# yellow → orange → dark red (ColorBrewer YlOrRd stops) at 0, .25, .5, .75, 1
RAMP = np.array([[255, 255, 204], [254, 217, 118], [253, 141, 60], [227, 26, 28], [128, 0, 38]], np.float64)
UNPARSED_EXAMPLES = 5


# -- window grid -------------------------------------------------------------------------------


def check_grid_options(tile: int, overlap: int) -> None:
    try:
        check_options(tile, overlap, MIN_TILE, EDGE)
    except TilingError as e:
        raise SpectralError(str(e)) from None


def window_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Offsets of the windows along an axis of ``size`` pixels: ``0, stride, 2·stride, …`` with the last
    one at ``size − tile`` (flush with the edge); ``[0]`` when ``size <= tile``."""
    check_grid_options(tile, overlap)
    try:
        return axis_starts(size, tile, overlap, EDGE)
    except TilingError as e:
        raise SpectralError(str(e)) from None


def window_grid(rows: int, cols: int, tile: int, overlap: int) -> list[Window]:
    """Windows covering a ``rows × cols`` cube, row by row (see the module docstring)."""
    check_grid_options(tile, overlap)
    try:
        return TileGrid(cols, rows, tile, overlap, edge=EDGE, min_tile=MIN_TILE).windows()
    except TilingError as e:
        raise SpectralError(str(e)) from None


# -- answers -----------------------------------------------------------------------------------


def parse_probability(text) -> float | None:
    """The probability in a model's answer, or None: the first number (a percentage is divided by 100);
    numbers outside [0, 1] and lengths/areas do not count."""
    from geovl.evaluate.quantities import find_quantity

    q = find_quantity(text)
    if q is None or q.kind in ("area", "length"):
        return None
    value = q.si if q.kind == "ratio" else q.value
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        return None
    return float(value)


def probability_question(lang: str) -> str:
    from .synth_write import QUESTIONS

    if lang not in QUESTIONS["probability"]:
        raise SpectralError(f"--lang must be one of {', '.join(QUESTIONS['probability'])}, got {lang!r}")
    return QUESTIONS["probability"][lang]


def probability_request(block: np.ndarray, question: str):
    """One chat request: the window's ``(bands, h, w)`` array as the image, then the question."""
    from geovl.data.schema import user_turn
    from geovl.inference.engine import ChatRequest

    return ChatRequest([user_turn(question, 1)], [block])


# -- blending ----------------------------------------------------------------------------------


def taper_1d(n: int, overlap: int) -> np.ndarray:
    """Weights along a window side: ``min(1, (d + 1) / (overlap + 1))``, ``d`` = distance to the nearest end."""
    d = np.minimum(np.arange(n), np.arange(n)[::-1])
    return np.minimum(1.0, (d + 1) / (overlap + 1)).astype(np.float32)


def window_weights(height: int, width: int, overlap: int, blend: str) -> np.ndarray:
    if blend == "mean" or overlap == 0:
        return np.ones((height, width), np.float32)
    return np.outer(taper_1d(height, overlap), taper_1d(width, overlap))


class ProbabilityMap:
    """Weighted average of per-window values over a ``rows × cols`` grid (two float32 accumulators)."""

    def __init__(self, rows: int, cols: int, overlap: int = 0, blend: str = "taper"):
        if blend not in BLENDS:
            raise SpectralError(f"--blend must be one of {', '.join(BLENDS)}, got {blend!r}")
        self.overlap, self.blend = overlap, blend
        self._sum = np.zeros((rows, cols), np.float32)
        self._weight = np.zeros((rows, cols), np.float32)

    def add(self, window: Window, value: float, valid: np.ndarray) -> None:
        """Add ``value`` on the ``valid`` (h, w) pixels of ``window``."""
        w = window_weights(window.height, window.width, self.overlap, self.blend) * valid
        rs, cs = window.toslices()
        self._sum[rs, cs] += np.float32(value) * w
        self._weight[rs, cs] += w

    def result(self) -> np.ndarray:
        """float32 ``(rows, cols)``: Σ w·v / Σ w, NaN where nothing was added."""
        out = np.full(self._sum.shape, np.nan, np.float32)
        has = self._weight > 0
        out[has] = np.clip(self._sum[has] / self._weight[has], 0.0, 1.0)  # float rounding only
        return out


def valid_pixels(block: np.ndarray) -> np.ndarray:
    """(h, w) bool: pixels with at least one finite band value."""
    return np.isfinite(block).any(axis=0)


# -- preview -----------------------------------------------------------------------------------


def colour_ramp(prob: np.ndarray) -> np.ndarray:
    """(H, W) probabilities (NaN = no data) → (H, W, 3) uint8: :data:`RAMP` over 0–1, NaN grey."""
    x = np.clip(np.nan_to_num(prob, nan=0.0), 0.0, 1.0) * (len(RAMP) - 1)
    stops = np.arange(len(RAMP))
    rgb = np.stack([np.interp(x, stops, RAMP[:, k]) for k in range(3)], axis=-1)
    rgb = np.round(rgb).astype(np.uint8)
    rgb[~np.isfinite(prob)] = NODATA_RGB
    return rgb


def preview(prob: np.ndarray, max_side: int = PREVIEW_MAX) -> np.ndarray:
    step = max(1, math.ceil(max(prob.shape) / max_side))
    return colour_ramp(prob[::step, ::step])


# -- checks ------------------------------------------------------------------------------------


def no_projector(model) -> SpectralError:
    return SpectralError(
        f"{model}: this model has no spectral projector (no spectral_projector.json beside its weights or adapter); "
        "vlm-map needs a model trained on cubes with spectral=true / 该模型没有光谱投影器，不能直接读取高光谱数据立方体"
    )


def require_projector(engine, model) -> None:
    from geovl.inference.capabilities import cube_reader

    if cube_reader(engine) is None:
        raise no_projector(model)


def saved_projector(model, adapter=None):
    """The :class:`~geovl.spectral.projector.SpectralProjector` saved beside a model (adapter folder first), read
    without loading the model — so a wrong model or cube is refused before a long model load. Refuses none."""
    from geovl.inference.adapter import resolve_folders

    from .projector import SpectralProjector
    from .vision_input import has_projector

    model_dir, adapter_dir = resolve_folders(model, adapter)
    for folder in (model_dir, adapter_dir):
        if folder is not None and not folder.is_dir():
            raise SpectralError(f"{folder}: no such model folder / 模型目录不存在")
    for folder in (adapter_dir, model_dir):
        if has_projector(folder):
            return SpectralProjector.load(folder)
    raise no_projector(adapter or model)


def require_matching_bands(projector, cube: Cube) -> None:
    """The cube's band count and wavelengths must be the projector's (clear error naming the cube)."""
    from .cube import array_cube
    from .vision_input import cube_tensor

    probe = array_cube(np.zeros((cube.bands, 1, 1), np.float32), cube.wavelengths, path=str(cube.path))
    cube_tensor(probe, projector, where=str(cube.path))


# -- the run -----------------------------------------------------------------------------------


def output_paths(out, png=None) -> dict[str, Path]:
    out = Path(out)
    if out.suffix.lower() not in (".tif", ".tiff"):
        raise SpectralError(f"{out}: --out must be a GeoTIFF (.tif) / 输出文件须为 GeoTIFF")
    return {
        "tif": out,
        "png": Path(png) if png else out.with_suffix(".png"),
        "json": out.with_suffix(".json"),
        "journal": out.with_name(out.stem + JOURNAL_SUFFIX),
    }


class _Run:
    """Counters and the blended map of one vlm-map run."""

    def __init__(self, cube: Cube, overlap: int, blend: str):
        self.map = ProbabilityMap(cube.rows, cube.cols, overlap, blend)
        self.answered = self.unparsed = self.skipped = self.resumed = self.resumed_asked = 0
        self.unparsed_examples: list[str] = []

    def record(self, window: Window, valid: np.ndarray, answer: str) -> None:
        value = parse_probability(answer)
        if value is None:
            self.unparsed += 1
            if len(self.unparsed_examples) < UNPARSED_EXAMPLES:
                self.unparsed_examples.append(answer)
            return
        self.answered += 1
        self.map.add(window, value, valid)


def _ask(engine, batch: list, question: str, params, run: _Run, journal) -> None:
    answers = engine.generate([probability_request(block, question) for _, _, block, _ in batch], params)
    for (rc, win, _, valid), answer in zip(batch, answers):
        run.record(win, valid, answer)
        journal.write({"row": rc[0], "col": rc[1], "window": window_list(win), "status": "answered", "answer": answer})
    journal.flush()


def _answer_windows(
    cube: Cube, engine, grid: TileGrid, question: str, params, run: _Run, progress: bool, journal, done: dict
) -> None:
    """Read the windows one by one, skip all-no-data ones, ask the rest in batches of the engine's batch size;
    windows already in the journal (``done``) are blended from their recorded answers, not asked again."""
    from tqdm import tqdm

    batch: list = []
    with tqdm(total=grid.count, desc="vlm-map", unit="win", disable=not progress, file=sys.stderr) as bar:
        for rc, win in zip(grid, grid.windows()):
            rec = done.get(rc)
            if rec is not None and rec.get("status") == "nodata":
                run.skipped += 1
                run.resumed += 1
                bar.update(1)
                continue
            block = cube.read_float(window=win)
            valid = valid_pixels(block)
            if rec is not None:
                run.record(win, valid, str(rec.get("answer") or ""))
                run.resumed += 1
                run.resumed_asked += 1
                bar.update(1)
                continue
            if not valid.any():
                run.skipped += 1
                journal.write({"row": rc[0], "col": rc[1], "window": window_list(win), "status": "nodata"})
                bar.update(1)
                continue
            batch.append((rc, win, block, valid))
            if len(batch) >= engine.batch_size:
                _ask(engine, batch, question, params, run, journal)
                bar.update(len(batch))
                batch = []
        if batch:
            _ask(engine, batch, question, params, run, journal)
            bar.update(len(batch))


def vlm_map(
    cube: Cube,
    engine,
    out,
    png=None,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    lang: str = "en",
    blend: str = "taper",
    max_new_tokens: int = MAX_NEW_TOKENS,
    progress: bool = False,
    meta: dict | None = None,
    resume: bool = False,
) -> dict:
    """Map ``cube`` with ``engine`` (a spectral :class:`~geovl.inference.engine.LocalEngine`) into ``out``
    (+ PNG + JSON, see the module docstring). ``resume`` continues an interrupted run of the same cube,
    tiling, question and model from its journal. Returns the summary."""
    from geovl.inference.engine import GenerationParams

    from .readers import write_geotiff
    from .render import write_png

    check_grid_options(tile, overlap)
    paths = output_paths(out, png)
    question = probability_question(lang)
    meta = meta or {}
    require_projector(engine, meta.get("adapter") or meta.get("model") or "the model")
    require_matching_bands(engine.spectral.projector, cube)
    params = GenerationParams(max_new_tokens=max_new_tokens, temperature=0.0)
    windows = window_grid(cube.rows, cube.cols, tile, overlap)
    grid = TileGrid(cube.cols, cube.rows, tile, overlap, edge=EDGE, min_tile=MIN_TILE)
    run = _Run(cube, overlap, blend)
    header = {
        "schema": SCHEMA,
        "cube": str(Path(cube.path).resolve()),
        "rows": cube.rows,
        "cols": cube.cols,
        "bands": cube.bands,
        "tile": tile,
        "overlap": overlap,
        "lang": lang,
        "question": question,
        "max_new_tokens": max_new_tokens,
        "engine": meta.get("adapter") or meta.get("model") or getattr(engine, "name", type(engine).__name__),
    }
    try:
        done, journal = TileJournal(paths["journal"], header, COMPAT_KEYS).open(resume)
    except TilingError as e:
        raise SpectralError(str(e)) from None
    calls0 = engine.stats.forward_calls
    t0 = time.monotonic()
    with journal:
        _answer_windows(cube, engine, grid, question, params, run, progress, journal, done)
    prob = run.map.result()
    seconds = time.monotonic() - t0
    summary = _summary(
        cube,
        paths,
        prob,
        run,
        windows,
        tile,
        overlap,
        blend,
        lang,
        question,
        max_new_tokens,
        engine.stats.forward_calls - calls0,
        seconds,
        meta,
    )
    write_geotiff(
        paths["tif"],
        prob[None],
        cube.crs,
        cube.transform,
        float("nan"),
        ["mineralisation probability (VLM)"],
        tags={
            "question": question,
            "tile": tile,
            "overlap": overlap,
            "blend": blend,
            "generator": "geovl spectral vlm-map",
        }
        | {k: v for k, v in meta.items() if v},
    )
    write_png(paths["png"], preview(prob))
    _write_json(paths["json"], summary)
    paths["journal"].unlink(missing_ok=True)  # every output is written: nothing left to resume
    return summary


def _summary(
    cube,
    paths,
    prob,
    run: _Run,
    windows,
    tile,
    overlap,
    blend,
    lang,
    question,
    max_new_tokens,
    forward_calls,
    seconds,
    meta,
) -> dict:
    asked = run.answered + run.unparsed
    finite = prob[np.isfinite(prob)]
    return {
        "cube": str(cube.path),
        "out": str(paths["tif"]),
        "png": str(paths["png"]),
        "summary": str(paths["json"]),
        **meta,
        "rows": cube.rows,
        "cols": cube.cols,
        "bands": cube.bands,
        **cube.georef(),
        "tile": tile,
        "overlap": overlap,
        "blend": blend,
        "lang": lang,
        "question": question,
        "max_new_tokens": max_new_tokens,
        "windows": len(windows),
        "answered": run.answered,
        "unparsed": run.unparsed,
        "skipped_nodata": run.skipped,
        "unparsed_examples": run.unparsed_examples,
        "resumed": run.resumed,
        "forward_calls": forward_calls,
        "forward_calls_per_window": (forward_calls / (asked - run.resumed_asked)) if asked > run.resumed_asked else 0.0,
        "mapped_pixels": int(finite.size),
        "probability": (
            {"min": float(finite.min()), "mean": float(finite.mean()), "max": float(finite.max())}
            if finite.size
            else None
        ),
        "seconds": round(seconds, 3),
    }


def _write_json(path: Path, obj) -> None:
    from ..fileio import write_json

    write_json(path, obj, indent=1)
