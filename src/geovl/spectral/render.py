"""Renderings of a cube, each described by a small JSON-serialisable dict (a *rendering spec*).

A spec can be saved (e.g. as ``rendering`` in ``geovl_preprocess.json`` or ``rendering.json``)
and re-applied to any cube with wavelengths. Kinds:

``{"kind": "bands", "wavelengths": [R, G, B], "stretch": ...}``
    nearest *good* band to each wavelength (nm). Presets (:data:`COMPOSITES`): ``true_colour``
    640/550/470, ``vnir_cir`` 860/650/550 (colour infrared: vegetation red), ``swir``
    2200/1650/650, ``alteration`` 1650/2200/2330 (ASTER 4-6-8-like: Al-OH absorbers such as
    kaolinite/alunite/muscovite darken green → magenta; Mg-OH/carbonate absorbers such as
    chlorite/calcite darken blue → yellow).
``{"kind": "depth", "features": [f, ...], "stretch": ...}``
    continuum-removed band depth (1 or 3 features → grey or RGB). ``depth_rgb`` = Al-OH, Mg-OH /
    carbonate, Fe-OH.
``{"kind": "index", "index": {"op": "nd"|"ratio", "a": nm, "b": nm}, "stretch": ...}``
    normalised difference (a−b)/(a+b) or ratio a/b (:data:`INDICES`: ndvi, clay, iron_oxide).

Stretch: ``{"mode": "percentile", "lo": 2, "hi": 98}`` (per channel, over the rendered image,
no-data excluded) or ``{"mode": "fixed", "min": x, "max": y}`` (same colours for every scene).
No-data (NaN, the file's nodata value) renders black.

**Band depth** at a feature ``{left, centre, right}`` (nm): the continuum is the straight line
between the reflectances of the two shoulder bands, evaluated at the centre band's wavelength;
depth = 1 − R(centre) / continuum (Clark & Roush 1984). A flat spectrum gives 0, an absorption
a positive value, a reflectance peak a negative one. ``mode="max"`` takes the largest depth over
all good bands between the shoulders instead of the centre band.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np

from . import SpectralError
from .cube import Cube, Window, iter_windows, rows_for_budget

FEATURES = {
    "AlOH": {"name": "AlOH", "left": 2120.0, "centre": 2200.0, "right": 2250.0},
    "MgOH": {"name": "MgOH", "left": 2270.0, "centre": 2330.0, "right": 2390.0},  # also carbonate CO3
    "FeOH": {"name": "FeOH", "left": 2235.0, "centre": 2265.0, "right": 2295.0},  # jarosite ~2265
    "Fe3": {"name": "Fe3", "left": 750.0, "centre": 900.0, "right": 1250.0},  # ferric iron crystal field
}
FEATURE_ALIASES = {
    "aloh": "AlOH",
    "al-oh": "AlOH",
    "mgoh": "MgOH",
    "mg-oh": "MgOH",
    "carbonate": "MgOH",
    "feoh": "FeOH",
    "fe-oh": "FeOH",
    "fe3": "Fe3",
    "ferric": "Fe3",
    "fe3+": "Fe3",
}
INDICES = {
    "ndvi": {"name": "ndvi", "op": "nd", "a": 860.0, "b": 650.0},
    "clay": {"name": "clay", "op": "ratio", "a": 1650.0, "b": 2200.0},  # Al-OH clays: high
    "iron_oxide": {"name": "iron_oxide", "op": "ratio", "a": 650.0, "b": 480.0},
}
COMPOSITES = {
    "true_colour": [640.0, 550.0, 470.0],
    "vnir_cir": [860.0, 650.0, 550.0],
    "swir": [2200.0, 1650.0, 650.0],
    "alteration": [1650.0, 2200.0, 2330.0],
}
PERCENTILE = {"mode": "percentile", "lo": 2.0, "hi": 98.0}


def feature(spec) -> dict:
    """A feature dict from a name (``AlOH``), a centre wavelength (2200 → nearest known feature
    within 40 nm) or a dict with left/centre/right."""
    if isinstance(spec, dict):
        f = {"name": spec.get("name", "custom")} | {k: float(spec[k]) for k in ("left", "centre", "right")}
    elif isinstance(spec, str) and not spec.replace(".", "", 1).isdigit():
        key = FEATURE_ALIASES.get(spec.lower(), spec)
        if key not in FEATURES:
            raise SpectralError(f"unknown absorption feature {spec!r}: choose from {', '.join(FEATURES)} or give nm")
        f = dict(FEATURES[key])
    else:
        from .cube import parse_wavelength

        c = parse_wavelength(spec)
        best = min(FEATURES.values(), key=lambda x: abs(x["centre"] - c))
        if abs(best["centre"] - c) > 40:
            raise SpectralError(
                f"no known feature near {c:g} nm (known: "
                + ", ".join(f"{k} {v['centre']:g}" for k, v in FEATURES.items())
                + "); give shoulders with --shoulders LEFT,RIGHT"
            )
        f = dict(best)
    if not f["left"] < f["centre"] < f["right"]:
        raise SpectralError(f"feature {f}: need left < centre < right")
    return f


def preset(name: str, stretch: dict | None = None) -> dict:
    """A rendering spec by name: a composite, ``depth_rgb``, or an index."""
    if name in COMPOSITES:
        spec = {"kind": "bands", "name": name, "wavelengths": list(COMPOSITES[name])}
    elif name == "depth_rgb":
        spec = {
            "kind": "depth",
            "name": name,
            "features": [dict(FEATURES[k]) for k in ("AlOH", "MgOH", "FeOH")],
            "mode": "centre",
        }
        stretch = stretch or {"mode": "fixed", "min": 0.0, "max": 0.3}
    elif name in INDICES:
        spec = {"kind": "index", "name": name, "index": dict(INDICES[name])}
    else:
        raise SpectralError(
            f"unknown rendering {name!r}: choose from " + ", ".join([*COMPOSITES, "depth_rgb", *INDICES])
        )
    spec["stretch"] = dict(stretch or PERCENTILE)
    return validate(spec)


def validate(spec: dict) -> dict:
    """Check a spec (as loaded from JSON) and return a normalised copy."""
    if not isinstance(spec, dict) or spec.get("kind") not in ("bands", "depth", "index"):
        raise SpectralError(f"rendering spec needs kind bands, depth or index: {spec!r}")
    s = copy.deepcopy(spec)
    if s["kind"] == "bands":
        wl = [float(w) for w in s.get("wavelengths", [])]
        if len(wl) != 3:
            raise SpectralError(f"a band rendering needs 3 wavelengths, got {wl}")
        s["wavelengths"] = wl
    elif s["kind"] == "depth":
        s["features"] = [feature(f) for f in s.get("features", [])]
        if len(s["features"]) not in (1, 3):
            raise SpectralError("a depth rendering needs 1 or 3 features")
        s["mode"] = s.get("mode", "centre")
        if s["mode"] not in ("centre", "max"):
            raise SpectralError("depth mode must be centre or max")
    else:
        ix = s.get("index") or {}
        if ix.get("op") not in ("nd", "ratio") or "a" not in ix or "b" not in ix:
            raise SpectralError(f"an index needs op nd|ratio and wavelengths a, b: {ix!r}")
        s["index"] = {"name": ix.get("name", "custom"), "op": ix["op"], "a": float(ix["a"]), "b": float(ix["b"])}
    st = s.get("stretch") or dict(PERCENTILE)
    if st.get("mode") == "percentile":
        st = {"mode": "percentile", "lo": float(st.get("lo", 2.0)), "hi": float(st.get("hi", 98.0))}
    elif st.get("mode") == "fixed":
        st = {"mode": "fixed", "min": st["min"], "max": st["max"]}
    else:
        raise SpectralError(f"stretch mode must be percentile or fixed: {st!r}")
    s["stretch"] = st
    return s


# ---------------------------------------------------------------------------------------------
# computing channels


def band_depth(cube: Cube, feat, window: Window | None = None, mode: str = "centre") -> np.ndarray:
    """Continuum-removed band depth ``(h, w)`` float32 (NaN where no data); see module doc."""
    f = feature(feat)
    wl = cube.require_wavelengths()
    li, ci, ri = (cube.band_index(f[k], good_only=True) for k in ("left", "centre", "right"))
    if not li < ci < ri:
        raise SpectralError(
            f"{cube.path}: bands too coarse for feature {f['name']} (shoulders/centre map to bands {li}, {ci}, {ri})"
        )
    if mode == "centre":
        idx = [ci]
    else:
        idx = [i for i in range(li + 1, ri) if cube.good_bands[i]]
    data = cube.read_float([li, *idx, ri], window)
    left, mid, right = data[0], data[1:-1], data[-1]
    t = ((wl[idx] - wl[li]) / (wl[ri] - wl[li])).astype(np.float32)[:, None, None]
    cont = left[None] + (right - left)[None] * t
    with np.errstate(divide="ignore", invalid="ignore"):
        depth = np.where(cont > 0, 1.0 - mid / cont, np.nan).astype(np.float32)
    if mode == "centre":
        return depth[0]
    best = np.where(np.isnan(depth), -np.inf, depth).max(axis=0)
    best[np.isneginf(best)] = np.nan
    return best.astype(np.float32)


def band_index_map(cube: Cube, index, window: Window | None = None) -> np.ndarray:
    ix = INDICES[index] if isinstance(index, str) else index
    a, b = cube.read_float(cube.band_indices([ix["a"], ix["b"]], good_only=True), window)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = (a - b) / (a + b) if ix["op"] == "nd" else a / b
    out[~np.isfinite(out)] = np.nan
    return out.astype(np.float32)


def channels(cube: Cube, spec: dict, window: Window | None = None) -> np.ndarray:
    """Unstretched channel values ``(C, h, w)`` float32 of a spec (C = 3, or 1 for grey)."""
    s = validate(spec)
    if s["kind"] == "bands":
        return cube.read_float(cube.band_indices(s["wavelengths"], good_only=True), window)
    if s["kind"] == "depth":
        return np.stack([band_depth(cube, f, window, s["mode"]) for f in s["features"]])
    return band_index_map(cube, s["index"], window)[None]


def resolve(cube: Cube, spec: dict) -> dict:
    """The spec plus the bands it uses on this cube (indices and actual centre wavelengths)."""
    s = validate(spec)
    if s["kind"] == "bands":
        idx = cube.band_indices(s["wavelengths"], good_only=True)
        s["bands"] = idx
        s["band_wavelengths"] = [float(cube.wavelengths[i]) for i in idx]
    return s


def stretch_to_uint8(ch: np.ndarray, stretch: dict) -> np.ndarray:
    """``(C, h, w)`` float → ``(h, w, 3)`` uint8 (grey repeated); NaN → 0."""
    out = np.zeros(ch.shape, np.uint8)
    for i, c in enumerate(ch):
        valid = np.isfinite(c)
        if not valid.any():
            continue
        if stretch["mode"] == "percentile":
            v = c[valid]
            if v.size > 4_000_000:  # bounded work on huge images: a regular subsample
                v = v[:: v.size // 4_000_000 + 1]
            lo, hi = np.percentile(v, [stretch["lo"], stretch["hi"]])
        else:
            lo = stretch["min"][i] if isinstance(stretch["min"], list) else stretch["min"]
            hi = stretch["max"][i] if isinstance(stretch["max"], list) else stretch["max"]
        hi = hi if hi > lo else lo + 1e-6
        x = np.clip((np.where(valid, c, lo) - lo) / (hi - lo), 0.0, 1.0)
        out[i] = np.where(valid, np.round(x * 255.0), 0).astype(np.uint8)
    if out.shape[0] == 1:
        out = np.repeat(out, 3, axis=0)
    return np.ascontiguousarray(out.transpose(1, 2, 0))


def render(cube: Cube, spec: dict, window: Window | None = None) -> np.ndarray:
    """``(h, w, 3)`` uint8 image of a spec."""
    s = validate(spec)
    return stretch_to_uint8(channels(cube, s, window), s["stretch"])


# ---------------------------------------------------------------------------------------------
# outputs


def png_bytes(rgb: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buf, format="PNG")
    return buf.getvalue()


def write_png(path, rgb: np.ndarray) -> Path:
    from ..fileio import write_bytes

    path = Path(path)
    write_bytes(path, png_bytes(rgb))
    return path


def write_map(
    cube: Cube,
    fn,
    out,
    band_names: list[str],
    rows: int | None = None,
    progress: bool = False,
    tags: dict | None = None,
) -> Path:
    """Compute ``fn(cube, window) -> (C, h, w)`` float32 window by window into a GeoTIFF (CRS kept, nodata NaN)."""
    from tqdm import tqdm

    from .readers import GeoTiffWriter

    rows = rows or rows_for_budget(cube, 64 * 2**20, bands=8)
    wins = list(iter_windows(cube, rows=rows))
    with GeoTiffWriter(
        out,
        len(band_names),
        cube.rows,
        cube.cols,
        "float32",
        cube.crs,
        cube.transform,
        float("nan"),
        band_names,
        tags=tags,
    ) as w:
        for win in tqdm(wins, desc="windows", unit="win", disable=not progress, file=None):
            block = fn(cube, win)
            w.write(block.reshape(len(band_names), win.height, win.width).astype(np.float32), win)
    return Path(out)
