"""Open any supported cube with :func:`open_cube`; write GeoTIFF outputs safely.

Formats:

- **ENVI** (``.hdr`` + binary; give either file): see :mod:`geovl.spectral.envi`.
- **GeoTIFF** (``.tif``/``.tiff``, rasterio, windowed reads; CRS and transform kept). Wavelengths
  come from band tags ``wavelength`` (+ dataset or band tag ``wavelength_units``, default nm) or
  GDAL's ``IMAGERY`` domain ``CENTRAL_WAVELENGTH_UM``; ``fwhm`` likewise; dataset tags ``bbl``
  (comma-separated 0/1) and ``reflectance_scale_factor``. :func:`write_cube_geotiff` writes all of these.
- **.npy** (memory-mapped): ``layout="bands-first"`` (default; array ``(bands, rows, cols)``) or
  ``"bands-last"`` (``(rows, cols, bands)``). Metadata from an optional sidecar ``<stem>.json``
  with keys ``layout``, ``wavelength``, ``wavelength_units``, ``fwhm``, ``bbl``, ``nodata``,
  ``scale``, ``crs``, ``transform``; keyword arguments of :func:`open_cube` override it.

Every writer here writes ``<out>.partial`` and renames it into place when complete, so an
interrupted run never leaves a file that looks finished.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np

from . import SpectralError
from .cube import Cube, Window, to_nm
from .envi import open_envi

LAYOUTS = ("bands-first", "bands-last")


def open_cube(
    path: str | os.PathLike, layout: str | None = None, wavelengths=None, wavelength_units: str = "nm"
) -> Cube:
    """A :class:`~geovl.spectral.cube.Cube` for an ENVI, GeoTIFF or .npy file (chosen by extension)."""
    p = Path(path)
    if not p.exists():
        raise SpectralError(f"{p}: no such file")
    suffix = p.suffix.lower()
    if suffix in (".tif", ".tiff"):
        cube = open_geotiff(p)
    elif suffix == ".npy":
        cube = open_npy(p, layout=layout)
    elif suffix == ".hdr" or p.with_suffix(".hdr").is_file() or p.with_name(p.name + ".hdr").is_file():
        cube = open_envi(p)
    else:
        raise SpectralError(f"{p}: unknown cube format (ENVI .hdr + data, GeoTIFF .tif, or .npy)")
    if wavelengths is not None:
        wl = to_nm(wavelengths, wavelength_units, f"{p}: ")
        cube.wavelengths = None
        cube.fwhm = None if cube.fwhm is None or len(cube.fwhm) != len(wl) else cube.fwhm
        cube.wavelengths = wl
        cube.__post_init__()  # re-validate count and order
    return cube


# ---------------------------------------------------------------------------------------------
# GeoTIFF


class GeoTiffCube(Cube):
    def _read(self, bands: np.ndarray, window: Window) -> np.ndarray:
        return self._ds.read([int(b) + 1 for b in bands], window=window)

    def close(self) -> None:
        ds = getattr(self, "_ds", None)
        if ds is not None and not ds.closed:
            ds.close()


def _tag_float(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def open_geotiff(path: Path) -> GeoTiffCube:
    import rasterio

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            ds = rasterio.open(path)
    except rasterio.errors.RasterioIOError as e:
        raise SpectralError(f"{path}: not a readable GeoTIFF ({e})") from e
    tags = ds.tags()
    units = tags.get("wavelength_units") or tags.get("WAVELENGTH_UNITS")
    wl, fw = [], []
    for i in range(1, ds.count + 1):
        bt = ds.tags(i)
        im = ds.tags(i, ns="IMAGERY")
        w = _tag_float(bt.get("wavelength"))
        f = _tag_float(bt.get("fwhm"))
        u = bt.get("wavelength_units") or units
        if w is not None:
            u = u or ("um" if w < 30 else "nm")
            w = float(to_nm(w, u, f"{path}: "))
            f = float(to_nm(f, u, f"{path}: ")) if f is not None else None
        elif _tag_float(im.get("CENTRAL_WAVELENGTH_UM")) is not None:
            w = _tag_float(im["CENTRAL_WAVELENGTH_UM"]) * 1000.0
            f = _tag_float(im.get("FWHM_UM"))
            f = f * 1000.0 if f is not None else None
        wl.append(w)
        fw.append(f)
    if all(w is None for w in wl):
        wavelengths = fwhm = None
    elif any(w is None for w in wl):
        ds.close()
        raise SpectralError(
            f"{path}: only some bands have a wavelength tag ({sum(w is not None for w in wl)} of {len(wl)})"
        )
    else:
        wavelengths = np.array(wl)
        fwhm = np.array(fw) if all(f is not None for f in fw) else None
    good = None
    if "bbl" in tags:
        good = np.array([int(float(v)) != 0 for v in tags["bbl"].split(",") if v.strip()])
    t = ds.transform
    has_geo = ds.crs is not None or not t.is_identity
    names = [d or "" for d in ds.descriptions]
    try:
        cube = GeoTiffCube(
            path=path,
            bands=ds.count,
            rows=ds.height,
            cols=ds.width,
            dtype=np.dtype(ds.dtypes[0]),
            wavelengths=wavelengths,
            fwhm=fwhm,
            good_bands=good,
            nodata=ds.nodata,
            scale=_tag_float(tags.get("reflectance_scale_factor")),
            crs=ds.crs.to_string() if ds.crs else None,
            transform=(t.a, t.b, t.c, t.d, t.e, t.f) if has_geo else None,
            band_names=names if any(names) else [],
            fmt="geotiff",
        )
    except SpectralError:
        ds.close()
        raise
    cube._ds = ds
    return cube


class GeoTiffWriter:
    """Window-by-window GeoTIFF writer (deflate, band-interleaved) into ``<path>.partial``, renamed on close."""

    def __init__(
        self,
        path,
        bands: int,
        rows: int,
        cols: int,
        dtype,
        crs=None,
        transform=None,
        nodata=None,
        band_names=None,
        tags: dict | None = None,
        band_tags: list[dict] | None = None,
        imagery_tags: list[dict] | None = None,
    ):
        import rasterio
        from rasterio.transform import Affine

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(self.path.name + ".partial")
        kw = dict(
            driver="GTiff",
            width=cols,
            height=rows,
            count=bands,
            dtype=np.dtype(dtype).name,
            compress="deflate",
            interleave="band",
        )
        if rows >= 256 and cols >= 256:
            kw.update(tiled=True, blockxsize=256, blockysize=256)
        if crs:
            kw["crs"] = crs
        if transform is not None:
            kw["transform"] = Affine(*transform[:6])
        if nodata is not None:
            kw["nodata"] = nodata
        with warnings.catch_warnings():  # a plain (not georeferenced) raster is fine here
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            self._ds = rasterio.open(self._tmp, "w", **kw)
        for i, name in enumerate(band_names or [], 1):
            self._ds.set_band_description(i, str(name))
        if tags:
            self._ds.update_tags(**{k: str(v) for k, v in tags.items()})
        for i, bt in enumerate(band_tags or [], 1):
            self._ds.update_tags(i, **{k: str(v) for k, v in bt.items()})
        for i, bt in enumerate(imagery_tags or [], 1):
            self._ds.update_tags(i, ns="IMAGERY", **{k: str(v) for k, v in bt.items()})

    def write(self, block: np.ndarray, window: Window | None = None) -> None:
        if window is None:
            self._ds.write(block)
        else:
            self._ds.write(block, window=window)

    def close(self, ok: bool = True) -> None:
        if self._ds is None:
            return
        self._ds.close()
        self._ds = None
        if ok:
            os.replace(self._tmp, self.path)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        self.close(ok=exc_type is None)


def cube_tags(wavelengths=None, fwhm=None, good_bands=None, scale=None) -> dict:
    """``tags``/``band_tags``/``imagery_tags`` keyword arguments for :class:`GeoTiffWriter` describing bands."""
    kw: dict = {"tags": {}, "band_tags": None, "imagery_tags": None}
    if wavelengths is not None:
        kw["tags"]["wavelength_units"] = "Nanometers"
        kw["band_tags"] = [
            {"wavelength": repr(float(w))} | ({"fwhm": repr(float(fwhm[i]))} if fwhm is not None else {})
            for i, w in enumerate(wavelengths)
        ]
        kw["imagery_tags"] = [
            {"CENTRAL_WAVELENGTH_UM": f"{float(w) / 1000:.6f}"}
            | ({"FWHM_UM": f"{float(fwhm[i]) / 1000:.6f}"} if fwhm is not None else {})
            for i, w in enumerate(wavelengths)
        ]
    if good_bands is not None:
        kw["tags"]["bbl"] = ",".join(str(int(bool(g))) for g in good_bands)
    if scale:
        kw["tags"]["reflectance_scale_factor"] = f"{scale:g}"
    return kw


def write_geotiff(path, data: np.ndarray, crs=None, transform=None, nodata=None, band_names=None, **kw) -> Path:
    """Write a whole ``(bands, rows, cols)`` array (``kw``: tags, band_tags, imagery_tags)."""
    if data.ndim == 2:
        data = data[None]
    b, r, c = data.shape
    with GeoTiffWriter(path, b, r, c, data.dtype, crs, transform, nodata, band_names, **kw) as w:
        w.write(data)
    return Path(path)


def write_cube_geotiff(
    path,
    data: np.ndarray,
    wavelengths=None,
    fwhm=None,
    good_bands=None,
    nodata=None,
    scale=None,
    crs=None,
    transform=None,
    band_names=None,
) -> Path:
    return write_geotiff(
        path, data, crs, transform, nodata, band_names, **cube_tags(wavelengths, fwhm, good_bands, scale)
    )


# ---------------------------------------------------------------------------------------------
# .npy


class NpyCube(Cube):
    layout: str = "bands-first"

    def _read(self, bands: np.ndarray, window: Window) -> np.ndarray:
        arr = np.load(self.path, mmap_mode="r")
        try:
            rs, cs = window.toslices()
            if self.layout == "bands-first":
                block = arr[bands, rs, cs]
            else:
                block = arr[rs, cs, bands].transpose(2, 0, 1)
            return np.ascontiguousarray(block, dtype=self.dtype)
        finally:
            del arr


def open_npy(path: Path, layout: str | None = None) -> NpyCube:
    side = path.with_suffix(".json")
    meta = {}
    if side.is_file():
        try:
            meta = json.loads(side.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise SpectralError(f"{side}: sidecar is not valid JSON ({e.msg})") from None
    layout = layout or meta.get("layout") or "bands-first"
    if layout not in LAYOUTS:
        raise SpectralError(f"{path}: layout must be one of {LAYOUTS}, got {layout!r}")
    try:
        arr = np.load(path, mmap_mode="r")
    except (ValueError, OSError) as e:
        raise SpectralError(f"{path}: not a readable .npy array ({e})") from None
    if arr.ndim != 3:
        raise SpectralError(f"{path}: a cube must be 3-D, this array has shape {arr.shape}")
    if arr.dtype.kind not in "iuf":
        raise SpectralError(f"{path}: unsupported dtype {arr.dtype}")
    b, r, c = arr.shape if layout == "bands-first" else (arr.shape[2], arr.shape[0], arr.shape[1])
    dtype = arr.dtype.newbyteorder("=")
    del arr
    units = meta.get("wavelength_units", "nm")
    wl = to_nm(meta["wavelength"], units, f"{side}: ") if meta.get("wavelength") is not None else None
    fw = to_nm(meta["fwhm"], units, f"{side}: ") if meta.get("fwhm") is not None else None
    cube = NpyCube(
        path=path,
        bands=b,
        rows=r,
        cols=c,
        dtype=dtype,
        wavelengths=wl,
        fwhm=fw,
        good_bands=None if meta.get("bbl") is None else np.asarray(meta["bbl"]) != 0,
        nodata=meta.get("nodata"),
        scale=meta.get("scale"),
        crs=meta.get("crs"),
        transform=tuple(meta["transform"]) if meta.get("transform") else None,
        fmt="npy",
    )
    cube.layout = layout
    return cube


def write_npy(path, data: np.ndarray, layout: str = "bands-first", **meta) -> Path:
    """Save ``(bands, rows, cols)`` data as .npy in ``layout`` plus the sidecar JSON (``meta`` keys above)."""
    path = Path(path)
    arr = data if layout == "bands-first" else np.moveaxis(data, 0, -1)
    from ..fileio import atomic_write, write_text

    side = {"layout": layout} | {
        k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in meta.items() if v is not None
    }
    with atomic_write(path, "wb") as f:
        np.save(f, arr)
    write_text(path.with_suffix(".json"), json.dumps(side, indent=1))
    return path
